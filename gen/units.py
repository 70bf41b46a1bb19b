"""Generator parameters, the list of units, and ``generate()``: the CLI is a thin layer over this.

A unit is a ``wiring.Component`` in ``hw/``; the table of units is ``gen.registry.REGISTRY``, and
``UNITS`` here lists the ones ``python -m gen`` emits (Verilog module name, factory from
:class:`Params`). A component carries ``latency`` (cycles, int or None) and optionally
``manifest_info()`` returning a dict of formats, parameters and port roles.
"""

import json
from dataclasses import dataclass, asdict, fields

from gen import registry as _registry
from gen.atomic import atomic_dir
from gen.errors import ParamError
from hw.formats import (STATS_GUARD, STATS_GUARD_DEFAULT, STATS_MODES, BFPFormat, BN_MAX_CHANNELS, BN_MAX_CHUNKS, BN_MAX_COUNT, BN_MAX_EXP_BITS,
                        INTERNAL_FRAC_BITS, MIN_WIDTH, MAX_WIDTH, MAX_BLOCK, check_bn_format,
                        float_format, internal_format)

__all__ = ["Params", "UNITS", "all_units", "build_unit", "generate", "ParamError"]


#: Limits of the generator parameters (also used by --help and the manifest).
LIMITS = {
    "width": (MIN_WIDTH, MAX_WIDTH),
    "block": (1, MAX_BLOCK),
    "chunks": (1, BN_MAX_CHUNKS),
    "channels": (1, BN_MAX_CHANNELS),
    "max_count": (2, BN_MAX_COUNT),
    "internal_frac_bits": INTERNAL_FRAC_BITS,
    "stats_guard": STATS_GUARD,
}


@dataclass(frozen=True)
class Params:
    """Every parameter a user can pass to the generator. Validated on construction."""
    width: int = 8
    block: int = 16
    in_format: str = "fp10"
    #: Largest K. 1 (Range BN's own form, C(n) = 1/sqrt(2 ln n)) is the default: it is the smallest
    #: configuration, and the training study (docs/training.md) meets its accuracy goal with it;
    #: K = 8 (LightNorm's simulator) costs more area and showed no accuracy gain there (docs/area.md).
    chunks: int = 1
    channels: int = 16
    max_count: int = 4096
    internal_frac_bits: int = None      # None: min(23, width + 4)
    #: Statistics precision (hw.formats.STATS_MODES): ``exact`` integer channel sums, or ``low``
    #: windowed accumulators with ``stats_guard`` guard bits (docs/numerics.md).
    stats: str = "exact"
    stats_guard: int = STATS_GUARD_DEFAULT

    def __post_init__(self):
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if name == "internal_frac_bits" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ParamError(f"{name.replace('_', '-')} must be an integer in {lo}..{hi}, not {value!r}")
        if self.stats not in STATS_MODES:
            raise ParamError(f"stats must be one of {', '.join(STATS_MODES)}, not {self.stats!r}")
        if self.chunks & (self.chunks - 1):
            raise ParamError(f"chunks must be a power of two in 1..64, not {self.chunks!r}")
        if self.max_count < 2 * self.chunks:
            raise ParamError(f"max-count must be at least 2 * chunks = {2 * self.chunks}, not {self.max_count!r}")
        import re
        custom = re.fullmatch(r"e(\d+)m(\d+)", str(self.in_format).lower())
        if custom and not 2 <= int(custom[1]) <= BN_MAX_EXP_BITS:
            raise ParamError(f"in-format {self.in_format!r} has {int(custom[1])} exponent bits; "
                             f"the Range-BN units accept 2..{BN_MAX_EXP_BITS} (fp10, fp16, fp15, e4m3, e5m2, e<E>m<M>)")
        try:
            check_bn_format(self.in_format, label=repr(self.in_format))
        except ValueError as exc:
            msg = str(exc)      # an e<E>m<M> with an impossible field: name the format too
            raise ParamError(msg if msg.startswith(("unknown", "in-format")) else
                             f"in-format {self.in_format!r}: {msg}") from None

    @property
    def float_format(self):
        return float_format(self.in_format)

    @property
    def bfp(self):
        return BFPFormat.for_float(self.float_format, self.width, self.block)

    @property
    def frac_bits(self):
        """Fraction bits of the internal per-channel float."""
        return self.internal_frac_bits if self.internal_frac_bits is not None else min(23, self.width + 4)

    @property
    def internal(self):
        return internal_format(self.frac_bits)

    def as_dict(self):
        d = asdict(self)
        d["internal_frac_bits"] = self.frac_bits
        return d


#: ``[(Verilog module name, factory(Params) -> Component)]`` that ``python -m gen`` emits, in
#: emission order: the ``"gen"`` units of ``gen.registry.REGISTRY`` (add units there).
UNITS = [(u.name, u.build) for u in _registry.units(target="gen")]


def all_units():
    """``[(name, factory)]`` for every unit ``python -m gen`` emits (``gen.registry``)."""
    return list(UNITS)


def build_unit(factory, params):
    return factory(params)


def _port_role(name, info_roles):
    if name in info_roles:
        return info_roles[name]
    if name == "clk":
        return "clock (rising edge)"
    if name == "rst":
        return "synchronous reset, active high"
    parts = name.split("__")
    if parts[-1] in ("valid", "ready", "payload"):
        return f"stream {parts[0]}: {parts[-1]}"
    return "control"


def manifest_entry(name, component):
    from gen.verilog import ports
    info = component.manifest_info() if hasattr(component, "manifest_info") else {}
    roles = info.pop("port_roles", {})
    entry = {
        "verilog": f"{name}.v",
        "top": name,
        "latency": getattr(component, "latency", None),
        "doc": (type(component).__doc__ or "").strip().split("\n\n")[0],
        "ports": [dict(p, role=_port_role(p["name"], roles)) for p in ports(component)],
    }
    entry.update(info)
    return entry


def generate(params, out_dir, units=None, progress=None):
    """Write ``<name>.v`` for every unit and ``manifest.json`` into ``out_dir`` atomically
    (``gen.atomic.atomic_dir``: a temporary directory beside ``out_dir`` is moved into place at the
    end, so a failure leaves nothing half-written). Returns the manifest (a dict)."""
    from gen.verilog import emit
    if not isinstance(params, Params):
        raise TypeError(f"generate() takes a gen.units.Params, not {params!r}")
    with atomic_dir(out_dir) as tmp:
        manifest = {
            "generator": "lightnorm-gen",
            "parameters": params.as_dict(),
            "formats": {
                "input_float": _fmt_dict(params.float_format),
                "bfp": {"width": params.width, "exp_bits": params.bfp.exp_bits, "bias": params.bfp.bias,
                        "block": params.block, "value": "code * 2**(exponent - bias - (width - 2))"},
                "internal_float": _fmt_dict(params.internal),
            },
            "modules": {},
        }
        for name, cls in (units if units is not None else all_units()):
            if progress:
                progress(name)
            component = build_unit(cls, params)
            (tmp / f"{name}.v").write_text(emit(component, name))
            manifest["modules"][name] = manifest_entry(name, component)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _fmt_dict(fmt):
    return {"name": fmt.name, "exp_bits": fmt.exp_bits, "frac_bits": fmt.frac_bits, "bias": fmt.bias,
            "packing": "sign | exponent | fraction (MSB to LSB)",
            "exponent_zero": "zero (subnormals flush, flag 'flush')",
            "exponent_all_ones": "ordinary binade (flag 'special')"}
