"""The unit registry: every piece of hardware the tools build, in one table.

Each entry of :data:`REGISTRY` is a :class:`Unit`: its Verilog module name, its kind, a builder
``Params -> Component`` (``hw/`` classes, imported when called), the tools that apply to it and the
bench that checks it. Everything that lists units reads this table:

* ``python -m gen`` and ``manifest.json`` (``gen.units.all_units()``): the ``"gen"`` units;
* ``python -m gen area`` (``gen.area.all_area_units``): the ``"area"`` units, parts only on request;
* ``python -m gen bitstream``: the board attachments (``hw.board_top.ATTACHMENTS``) named by
  :attr:`Unit.attachments`;
* the cocotb benches (``sim.verify.fault_inject``, ``sim.verify.formal``, ``tests/``):
  :attr:`Unit.bench` and :attr:`Unit.short`;
* ``tests/test_lint.py``: the ``"lint"`` units.

Adding a unit is one entry here (and its bench). ``python -m gen --list-units`` prints the table.
``hw/`` imports nothing from ``gen/``, so the table lives here and not beside the hardware.
"""

from dataclasses import dataclass
from typing import Callable, Optional


__all__ = ["Unit", "REGISTRY", "KINDS", "TARGETS", "units", "unit", "names", "hosted_by", "describe"]

#: ``lightnorm``: a generator output (a LightNorm unit); ``baseline``: a conventional float BN for
#: the area comparison; ``part``: a submodule or reusable core, measured or linted on its own.
KINDS = ("lightnorm", "baseline", "part")

#: ``gen``: emitted by ``python -m gen`` and described in ``manifest.json``; ``area``: measured by
#: ``python -m gen area`` (parts only when named with ``--units``); ``lint``: linted by
#: ``tests/test_lint.py``.
TARGETS = ("gen", "area", "lint")


@dataclass(frozen=True)
class Unit:
    """One unit of the registry."""
    name: str                               #: Verilog module name
    kind: str                               #: one of :data:`KINDS`
    build: Callable                         #: ``Params -> wiring.Component``
    doc: str                                #: one line for listings (the manifest uses the class docstring)
    targets: frozenset = frozenset()        #: subset of :data:`TARGETS`
    bench: Optional[str] = None             #: cocotb test module checking it (toplevel = ``name``)
    short: Optional[str] = None             #: short name in bench configurations (``"unit": ...``)
    attachments: tuple = ()                 #: ``hw.board_top.ATTACHMENTS`` keys of the board tops hosting it

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unit {self.name}: kind must be one of {KINDS}, not {self.kind!r}")
        bad = set(self.targets) - set(TARGETS)
        if bad:
            raise ValueError(f"unit {self.name}: unknown targets {sorted(bad)}")


# -- builders (hw/ is imported when a unit is built, so listing the table stays cheap) ---------------

def _bfp_shifter(p):
    from hw.bfp_shifter import BFPShifter
    return BFPShifter(p.float_format, p.bfp)


def _forward_core(p):
    from hw.forward_core import ForwardCore
    return ForwardCore.from_params(p)


def _backward_core(p):
    from hw.backward_core import unit
    return unit(p)


def _bn_core(p):
    from hw.bn_core import BNCore
    return BNCore.from_params(p)


def _baseline(kind, suffix):
    compute, io = BASELINE_FORMATS[suffix]

    def build(p):
        from hw.float_bn import FloatBNBackward, FloatBNForward
        from hw.formats import float_format
        cls = FloatBNForward if kind == "fwd" else FloatBNBackward
        return cls(float_format(compute), block=p.block, channels=p.channels, max_count=p.max_count,
                   io_fmt=float_format(io))
    build.__name__ = f"float_bn_{kind}_{suffix}"
    return build


def _core_part(core, attr):
    """Builder of the submodule ``attr`` of a Range-BN core: the very instance the core builds."""
    def build(p):
        return getattr(_forward_core(p) if core == "forward" else _backward_core(p), attr)
    build.__name__ = f"{core}{attr}"
    return build


def _block_quantizer_wide(p):
    """The quantizer as the Range-BN units use it: wide magnitudes, signed exponents."""
    from hw.bfp_shifter import BlockQuantizer
    return BlockQuantizer(p.bfp, p.width + 10, 7, exp_signed=True, exp_offset=-(p.width + 3))


def _block_quantizer_normalized(p):
    from hw.bfp_shifter import BlockQuantizer
    from hw.formats import BFPFormat
    return BlockQuantizer(BFPFormat(p.width, 4, p.block), p.width + 2, 6, exp_signed=False,
                          exp_offset=-40, normalized=True)


#: Float BN baselines (``gen.baselines``): name suffix -> (compute format, per-element I/O format).
#: Append only.
BASELINE_FORMATS = {
    "fp32": ("fp32", "fp32"),
    "bf16": ("bf16", "bf16"),
    "bf16_fp32": ("fp32", "bf16"),
}

#: Suffix -> how the reports name it.
BASELINE_LABELS = {"fp32": "fp32", "bf16": "bf16", "bf16_fp32": "bf16 I/O + fp32 compute"}

_LN = frozenset({"gen", "area", "lint"})
_AREA = frozenset({"area"})
_LINT = frozenset({"lint"})

#: Every unit, in emission order within each kind. Append as units land.
REGISTRY = (
    Unit("ln_bfp_shifter", "lightnorm", _bfp_shifter,
         "float blocks -> block floating point (shared exponent, round to nearest even)",
         _LN, bench="sim.bench.bfp_shifter", short="shifter", attachments=("shifter",)),
    Unit("ln_forward_core", "lightnorm", _forward_core,
         "Range-BN forward: statistics pass, finalize, normalize + affine pass",
         _LN, bench="sim.bench.forward_core", short="forward", attachments=("forward",)),
    Unit("ln_backward_core", "lightnorm", _backward_core,
         "Range-BN backward: reduction pass, finalize, dx pass",
         _LN, bench="sim.bench.backward_core", short="backward"),
    Unit("ln_bn_core", "lightnorm", _bn_core,
         "Range-BN forward + backward cores sharing one a x + b datapath (training unit)",
         _LN, bench="sim.bench.bn_core", short="bn", attachments=("bn",)),
) + tuple(
    Unit(f"float_bn_{kind}_{suffix}", "baseline", _baseline(kind, suffix),
         f"float BN {'forward' if kind == 'fwd' else 'backward'}, {BASELINE_LABELS[suffix]} "
         "(area baseline)", _AREA)
    for suffix in BASELINE_FORMATS for kind in ("fwd", "bwd")
) + (
    Unit("ln_part_forward_stats", "part", _core_part("forward", "_stats_unit"),
         "forward core's statistics unit (StatsUnit)", _AREA),
    Unit("ln_part_forward_finalize", "part", _core_part("forward", "_finalize"),
         "forward core's finalize (ForwardFinalize)", _AREA),
    Unit("ln_part_forward_affine", "part", _core_part("forward", "_affine"),
         "forward core's normalize + affine datapath (BFPAffine)", _AREA),
    Unit("ln_part_backward_reduce", "part", _core_part("backward", "_reduce"),
         "backward core's gradient reduction (GradReduce)", _AREA),
    Unit("ln_part_backward_finalize", "part", _core_part("backward", "_finalize"),
         "backward core's finalize (BackwardFinalize)", _AREA),
    Unit("ln_part_backward_affine", "part", _core_part("backward", "_affine"),
         "backward core's dx datapath (BFPAffine)", _AREA),
    Unit("ln_block_quantizer_wide", "part", _block_quantizer_wide,
         "BlockQuantizer as the Range-BN cores use it (wide magnitudes, signed exponents)", _LINT),
    Unit("ln_block_quantizer_norm", "part", _block_quantizer_normalized,
         "BlockQuantizer on normalized inputs", _LINT),
)

_BY_NAME = {u.name: u for u in REGISTRY}
assert len(_BY_NAME) == len(REGISTRY), "duplicate unit name in gen.registry.REGISTRY"


def units(kind=None, target=None):
    """The registry's units (in table order), optionally only those of ``kind`` (a name or a
    tuple of names) and only those to which ``target`` applies."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return [u for u in REGISTRY
            if (kinds is None or u.kind in kinds) and (target is None or target in u.targets)]


def names(kind=None, target=None):
    return [u.name for u in units(kind, target)]


def unit(name):
    """The :class:`Unit` called ``name``; ``KeyError`` naming the known units otherwise."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown unit {name!r}; known: {', '.join(_BY_NAME)}") from None


def hosted_by(attachment):
    """Names of the units a board attachment (``hw.board_top.ATTACHMENTS`` key) hosts."""
    return [u.name for u in REGISTRY if attachment in u.attachments]


def describe():
    """The table as text lines (``python -m gen --list-units``)."""
    rows = [(u.name, u.kind, ",".join(t for t in TARGETS if t in u.targets),
             u.bench or "-", ",".join(u.attachments) or "-", u.doc) for u in REGISTRY]
    head = ("unit", "kind", "targets", "bench", "board", "what")
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in [head] + rows]
