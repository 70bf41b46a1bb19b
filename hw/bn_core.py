"""The Range-BN unit for training: forward and backward cores sharing one ``a x + b`` datapath.

Forward normalize (``y = a x + b``) and backward dx (``dx = a g + b_sel``) are the same
operation on the same formats, one ``hw.bfp_affine.BFPAffine`` each in the separate cores, and
the largest part of both (docs/area.md). In training a layer's backward pass starts after its
forward pass, so :class:`BNCore` builds one ``BFPAffine`` and lets both cores drive it through a
``hw.stream_share.StreamShare``: the cores are the unchanged ``ForwardCore`` and
``BackwardCore``, each given a client port instead of its own affine.

Ports: every port of ``ForwardCore`` prefixed ``fwd_`` and every port of ``BackwardCore`` prefixed
``bwd_`` (``fwd_cmd``, ``fwd_x``, ``fwd_params``, ``fwd_stats``, ``fwd_y``, ``fwd_busy``,
``fwd_count_error``; ``bwd_cmd``, ``bwd_stats``, ``bwd_xg``, ``bwd_g``, ``bwd_grads``, ``bwd_dx``,
``bwd_busy``, ``bwd_count_error``), with the same records and meaning.

Timing: each core's own (its docstring, docs/forward.md, docs/backward.md) whenever the other
core's affine pass is not running: the share adds no cycle. The two cores may run at the same
time; everything outside the affine (statistics, reductions, finalize) overlaps freely, and a
core whose normalize / dx pass finds the affine in use waits (``x.ready`` / ``g.ready`` low) until
the other's pass has ended and its last output block has been taken. Outputs are bit for bit those
of the separate cores (``sim.bench.bn_core`` runs both benches' plans at once).
"""

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.backward_core import BackwardCore
from hw.bfp_affine import BFPAffine
from hw.formats import STATS_GUARD_DEFAULT
from hw.forward_core import ForwardCore
from hw.stream_share import StreamShare

__all__ = ["BNCore"]


class _AffineClient:
    """A client port of the share standing in for the affine: its ``i``, ``o`` and ``latency``."""

    def __init__(self, port, latency):
        self.i, self.o, self.latency = port.i, port.o, latency


class BNCore(wiring.Component):
    """Forward + backward Range-BN cores with one shared ``BFPAffine`` (module docstring).
    Arguments as ``ForwardCore`` / ``BackwardCore``."""

    PREFIXES = {"fwd_": "forward", "bwd_": "backward"}

    def __init__(self, bfp, internal, channels, max_count, max_chunks, *, stats="exact",
                 stats_guard=STATS_GUARD_DEFAULT):
        self._affine = BFPAffine(bfp, internal)
        self._share = StreamShare(self._affine.input_layout, bfp.flagged_block_layout(), n=2,
                                  max_outstanding=BFPAffine.QUEUE_DEPTH)
        lat = self._affine.latency
        self.forward = ForwardCore(bfp, internal, channels, max_count, max_chunks, stats=stats,
                                   stats_guard=stats_guard,
                                   affine=_AffineClient(self._share.clients[0], lat))
        self.backward = BackwardCore(bfp, internal, channels, max_count, max_chunks, stats=stats,
                                     stats_guard=stats_guard,
                                     affine=_AffineClient(self._share.clients[1], lat))
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

    def elaborate(self, platform):
        m = Module()
        m.submodules.affine = aff = self._affine
        m.submodules.share = share = self._share
        m.submodules.forward = self.forward
        m.submodules.backward = self.backward
        wiring.connect(m, share.unit_i, aff.i)
        wiring.connect(m, aff.o, share.unit_o)
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
