"""Conventional float batch-norm baselines for the area comparison (issue 5).

``BASELINES`` has the same shape as ``gen.units.UNITS``: ``[(verilog name, factory(Params))]``.
It is kept apart from ``UNITS`` so ``python -m gen`` emits LightNorm units only. A baseline takes
the LightNorm parameters that set its size and throughput (``block`` lanes per cycle,
``channels`` held on chip, ``max_count``); the element width and the input format of LightNorm do
not apply (its format is in the name).

``BASELINE_FORMATS``: name suffix -> (compute format, per-element I/O format). ``fp32`` and
``bf16`` compute and store in one format; ``bf16_fp32`` is the usual mixed-precision BN: bf16
activations and gradients in and out, fp32 statistics, accumulation, parameters and per-channel
records (``hw.float_bn``, ``io_fmt``).
"""

from hw.formats import float_format

__all__ = ["BASELINES", "BASELINE_FORMATS", "BASELINE_LABELS", "baseline_names"]

#: Suffix -> (compute format, I/O format). Append only.
BASELINE_FORMATS = {
    "fp32": ("fp32", "fp32"),
    "bf16": ("bf16", "bf16"),
    "bf16_fp32": ("fp32", "bf16"),
}

#: Suffix -> how the reports name it.
BASELINE_LABELS = {"fp32": "fp32", "bf16": "bf16", "bf16_fp32": "bf16 I/O + fp32 compute"}


def _factory(kind, suffix):
    compute, io = BASELINE_FORMATS[suffix]

    def build(p):
        from hw.float_bn import FloatBNBackward, FloatBNForward
        cls = FloatBNForward if kind == "fwd" else FloatBNBackward
        return cls(float_format(compute), block=p.block, channels=p.channels, max_count=p.max_count,
                   io_fmt=float_format(io))
    build.__name__ = f"float_bn_{kind}_{suffix}"
    return build


#: (Verilog module name, factory(Params) -> Component). Append only.
BASELINES = [
    (f"float_bn_{kind}_{suffix}", _factory(kind, suffix))
    for suffix in BASELINE_FORMATS for kind in ("fwd", "bwd")
]


def baseline_names():
    return [name for name, _ in BASELINES]
