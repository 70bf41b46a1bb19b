"""Conventional float batch-norm baselines for the area comparison (issue 5).

``BASELINES`` has the same shape as ``gen.units.UNITS``: ``[(verilog name, factory(Params))]``.
It is kept apart from ``UNITS`` so ``python -m gen`` emits LightNorm units only. A baseline takes
the LightNorm parameters that set its size and throughput (``block`` lanes per cycle,
``channels`` held on chip, ``max_count``); the element width and the input format of LightNorm do
not apply (its format is in the name).
"""

from hw.formats import float_format

__all__ = ["BASELINES", "baseline_names"]


def _factory(kind, fmt):
    def build(p):
        from hw.float_bn import FloatBNBackward, FloatBNForward
        cls = FloatBNForward if kind == "fwd" else FloatBNBackward
        return cls(float_format(fmt), block=p.block, channels=p.channels, max_count=p.max_count)
    build.__name__ = f"float_bn_{kind}_{fmt}"
    return build


#: (Verilog module name, factory(Params) -> Component). Append only.
BASELINES = [
    (f"float_bn_{kind}_{fmt}", _factory(kind, fmt))
    for fmt in ("fp32", "bf16") for kind in ("fwd", "bwd")
]


def baseline_names():
    return [name for name, _ in BASELINES]
