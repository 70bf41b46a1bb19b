"""The Range-BN unit for training: forward and backward cores sharing one ``a x + b`` datapath
and one finalize engine.

Forward normalize (``y = a x + b``) and backward dx (``dx = a g + b_sel``) are the same
operation on the same formats, one ``hw.bfp_affine.BFPAffine`` each in the separate cores, and
the largest part of both (docs/area.md); the two finalize engines are one micro-coded datapath
running two programs. In training a layer's backward pass starts after its forward pass, so
:class:`BNCore` builds one ``BFPAffine`` and one ``hw.finalize.SharedFinalize`` (both programs,
chosen per record) and lets both cores drive each through a ``hw.stream_share.StreamShare``: the
cores are the unchanged ``ForwardCore`` and ``BackwardCore``, each given client ports instead of
its own units.

Ports: every port of ``ForwardCore`` prefixed ``fwd_`` and every port of ``BackwardCore`` prefixed
``bwd_`` (``fwd_cmd``, ``fwd_x``, ``fwd_params``, ``fwd_stats``, ``fwd_y``, ``fwd_busy``,
``fwd_count_error``; ``bwd_cmd``, ``bwd_stats``, ``bwd_xg``, ``bwd_g``, ``bwd_grads``, ``bwd_dx``,
``bwd_busy``, ``bwd_count_error``), with the same records and meaning.

Timing: each core's own (its docstring, docs/forward.md, docs/backward.md) whenever the other
core is not using a shared unit, plus one cycle each time a shared unit changes hands (the
share's owner is a register, so no core's handshake runs through the other's). The two cores
may run at the same time; the statistics and the reductions overlap freely; a core whose normalize / dx pass finds
the affine in use waits (``x.ready`` / ``g.ready`` low) until the other's pass has ended and its
last output block has been taken, and a core whose finalize finds the engine in use waits for
it between channels (the engine is handed over whenever it is idle and empty, so both cores'
finalize phases interleave channel by channel). Outputs are bit for bit those
of the separate cores (``sim.bench.bn_core`` runs both benches' plans at once).
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.backward_core import BackwardCore
from hw.bfp_affine import BFPAffine
from hw.finalize import SharedFinalize
from hw.formats import STATS_GUARD_DEFAULT
from hw.forward_core import ForwardCore
from hw.stream_share import StreamShare

__all__ = ["BNCore"]


class _Client:
    """A client port of a share standing in for the shared unit: its ``i``, ``o`` and the unit's
    timing attributes for this client (``latency``, ``cycles_per_channel``)."""

    def __init__(self, port, **timing):
        self.i, self.o = port.i, port.o
        for name, value in timing.items():
            setattr(self, name, value)


class BNCore(wiring.Component):
    """Forward + backward Range-BN cores with one shared ``BFPAffine`` (module docstring).
    Arguments as ``ForwardCore`` / ``BackwardCore``."""

    #: Blocks a core sends through the affine at most while the other waits (``StreamShare``'s
    #: ``burst``): each hand-over drains the pipeline (about ``latency`` cycles), so 64 blocks keep
    #: both cores at about 80 % of full rate when both stream; the finalize engine alternates
    #: channel by channel (burst 1).
    AFFINE_BURST = 64

    def __init__(self, bfp, internal, channels, max_count, max_chunks, *, stats="exact",
                 stats_guard=STATS_GUARD_DEFAULT):
        self._affine = BFPAffine(bfp, internal)
        self._affine_share = StreamShare(self._affine.input_layout, bfp.flagged_block_layout(), n=2,
                                         max_outstanding=BFPAffine.QUEUE_DEPTH, burst=self.AFFINE_BURST)
        self._finalize = SharedFinalize(bfp, internal, max_count, max_chunks, stats=stats,
                                        stats_guard=stats_guard)
        # The engine takes a record only while idle and holds one result: at most two untaken.
        self._finalize_share = StreamShare(self._finalize.input_layout, self._finalize.output_layout,
                                           n=2, max_outstanding=2, burst=1)
        aff_lat = self._affine.latency
        fin_lat = self._finalize.mode_latency
        self.forward = ForwardCore(
            bfp, internal, channels, max_count, max_chunks, stats=stats, stats_guard=stats_guard,
            affine=_Client(self._affine_share.clients[0], latency=aff_lat),
            finalize=_Client(self._finalize_share.clients[0], latency=fin_lat["forward"],
                             cycles_per_channel=fin_lat["forward"] + SharedFinalize.TURNAROUND))
        self.backward = BackwardCore(
            bfp, internal, channels, max_count, max_chunks, stats=stats, stats_guard=stats_guard,
            affine=_Client(self._affine_share.clients[1], latency=aff_lat),
            finalize=_Client(self._finalize_share.clients[1], latency=fin_lat["backward"],
                             cycles_per_channel=fin_lat["backward"] + SharedFinalize.TURNAROUND))
        members = {}
        for prefix, core in (("fwd_", self.forward), ("bwd_", self.backward)):
            for name, member in core.signature.members.items():
                members[prefix + name] = member
        super().__init__(members)

    @classmethod
    def from_params(cls, p):
        """Build from ``gen.units.Params``."""
        return cls(p.bfp, p.internal, p.channels, p.max_count, p.chunks, stats=p.stats,
                   stats_guard=p.stats_guard)

    def manifest_info(self):
        """Each core's manifest information under ``forward`` / ``backward`` (its timing holds
        while the other core does not use a shared unit), the port roles prefixed, and what is
        shared."""
        info, roles = {}, {}
        for prefix, key, core in (("fwd_", "forward", self.forward), ("bwd_", "backward", self.backward)):
            core_info = core.manifest_info()
            for port, role in core_info.pop("port_roles", {}).items():
                roles[prefix + port] = f"{key}: {role}"
            info[key] = core_info
        info["shared"] = {
            "affine": {"unit": "hw.bfp_affine.BFPAffine", "latency": self._affine.latency,
                       "burst": self.AFFINE_BURST},
            "finalize": {"unit": "hw.finalize.SharedFinalize", "latency": self._finalize.mode_latency,
                         "burst": 1},
            "arbitration": "hw.stream_share.StreamShare: a unit changes hands only when empty; while "
                           "the other core waits, the owner sends at most 'burst' items, then yields; a hand-over "
                           "costs one cycle",
        }
        info["port_roles"] = roles
        return info

    def elaborate(self, platform):
        m = Module()
        m.submodules.affine = aff = self._affine
        m.submodules.affine_share = a_share = self._affine_share
        m.submodules.finalize = fin = self._finalize
        m.submodules.finalize_share = f_share = self._finalize_share
        m.submodules.forward = self.forward
        m.submodules.backward = self.backward
        for unit, share in ((aff, a_share), (fin, f_share)):
            wiring.connect(m, share.unit_i, unit.i)
            wiring.connect(m, unit.o, share.unit_o)
        m.d.comb += f_share.clients[1].i.payload.backward.eq(1)    # the backward core's records
        for prefix, core in (("fwd_", self.forward), ("bwd_", self.backward)):
            for name, member in core.signature.members.items():
                outer, inner = getattr(self, prefix + name), getattr(core, name)
                if member.is_port:
                    if member.flow == Out:
                        m.d.comb += outer.eq(inner)
                    else:
                        m.d.comb += inner.eq(outer)
                elif member.flow == In:
                    wiring.connect(m, wiring.flipped(outer), inner)
                else:
                    wiring.connect(m, inner, wiring.flipped(outer))
        return m
