"""Time-sharing one in-order stream unit between several clients.

:class:`StreamShare` sits between ``n`` clients and one *in-order* unit (a pipeline whose outputs
leave in the order its inputs came, one output per input; ``hw.bfp_affine.BFPAffine`` is one).
Each client sees a port pair shaped like the unit itself (``clients[k].i``, ``clients[k].o``), so a
core written against the unit works unchanged against its client port.

Rule: the unit belongs to its *owner* (a register), and only the owner's input reaches it: the
input multiplexer, the unit's ``i.valid`` and every client's ``i.ready`` are functions of
registers and of the owner's own ``valid``, so no client's handshake passes through another's.
(Granting a free unit to a waiting client in the same cycle saves the hand-over cycle but puts
one core's ``valid`` through the grant and the input multiplexer into the unit's first stage:
``ln_bn_core`` at W8 B4 made 68.6 MHz that way, against 108 and 112 for the separate cores.) When the
unit is empty (``outstanding`` = 0) and the owner offers nothing, the unit is *free*: at that
edge it passes to the first other client (lowest index) that offers, which transfers from the
next cycle on. So the owner changes only while nothing is in the unit, and every output belongs
to the owner: outputs are routed by the owner register alone. Waiting is bounded: while another
client offers, the owner transfers at most ``burst`` items; then it *yields* (its ``ready`` is
held low), the unit drains and passes to the waiting client. ``burst`` trades the drain at each
hand-over against the wait: a pipeline that streams (``BFPAffine``) takes a long burst, a
sequential engine that takes one record at a time (``hw.finalize``) a burst of 1, so that two
clients alternate record by record.

Timing: a hand-over costs one cycle (the edge that moves the owner, with the unit empty); the
owner sees exactly the unit's own ``i.ready``. So a client alone keeps a core's documented latency
and throughput once it owns the unit, and its first transfer after another client's pass waits
one cycle. A client that is not the owner waits until the owner pauses or yields and the unit
has drained, plus that cycle.

Back-pressure: ``clients[k].i.ready`` = unit ``i.ready`` and owner = k and not yielding: it
depends on no client's ``valid``, so a client may advance its own pipeline on ``ready`` alone
(``hw.backward_core`` does; such a client is seen as waiting only once its pipeline offers).
``clients[k].o`` carries the unit's ``o`` while k owns it (``valid`` low otherwise); the unit's
``o.ready`` is the owner's. Stream rules hold on every port: an output's payload holds until
taken because the owner cannot change while an output waits.

Cost: one input-payload multiplexer (``n - 1`` LUTs per payload bit, selected by the owner
register), an output-valid gate per client, a counter of ``bits(max_outstanding)`` bits and one
of ``bits(burst)``. ``max_outstanding``: the most inputs the
unit holds untaken (``BFPAffine.QUEUE_DEPTH``; its credit register enforces it).
"""

from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.checks import check_int

__all__ = ["StreamShare", "client_signature"]


def client_signature(i_shape, o_shape):
    """The port pair of a unit as its driver sees it: ``i`` (into the unit), ``o`` (out of it)."""
    return wiring.Signature({"i": In(stream.Signature(i_shape)), "o": Out(stream.Signature(o_shape))})


class StreamShare(wiring.Component):
    """``n`` clients time-sharing one in-order unit (module docstring). Ports: ``clients[k]``
    (:func:`client_signature`: ``i`` in, ``o`` out, as the unit's own ports), ``unit_i`` (out:
    drive the unit's ``i``), ``unit_o`` (in: from the unit's ``o``), ``owner`` (out, the register)."""

    def __init__(self, i_shape, o_shape, *, n=2, max_outstanding, burst):
        check_int("n", n, 2, 16)
        check_int("max_outstanding", max_outstanding, 1)
        check_int("burst", burst, 1, 1 << 16)
        self.n = n
        self.burst = burst
        self.max_outstanding = max_outstanding
        super().__init__({
            "clients": Out(client_signature(i_shape, o_shape)).array(n),
            "unit_i": Out(stream.Signature(i_shape)),
            "unit_o": In(stream.Signature(o_shape)),
            "owner": Out(range(n)),
        })

    def elaborate(self, platform):
        m = Module()
        n, cl = self.n, self.clients
        owner = self.owner
        is_owner = [owner == k for k in range(n)]

        yielding = Signal()
        owner_valid = Signal()
        for k in range(n):
            with m.If(is_owner[k]):
                m.d.comb += [owner_valid.eq(cl[k].i.valid),
                             self.unit_i.payload.eq(cl[k].i.payload),
                             self.unit_o.ready.eq(cl[k].o.ready)]
            m.d.comb += [cl[k].i.ready.eq(self.unit_i.ready & is_owner[k] & ~yielding),
                         cl[k].o.payload.eq(self.unit_o.payload),
                         cl[k].o.valid.eq(self.unit_o.valid & is_owner[k])]
        m.d.comb += self.unit_i.valid.eq(owner_valid & ~yielding)

        outstanding = Signal(range(self.max_outstanding + 1))
        took = Signal()
        gave = Signal()
        m.d.comb += [took.eq(self.unit_i.valid & self.unit_i.ready),
                     gave.eq(self.unit_o.valid & self.unit_o.ready)]
        with m.If(took & ~gave):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(gave & ~took):
            m.d.sync += outstanding.eq(outstanding - 1)

        # The first non-owner that offers (lowest index) is the one waiting; it gets the unit at
        # the edge where the unit is free. While it waits the owner may transfer ``burst`` items,
        # then yields (its ready held low until the unit has drained and changed hands).
        waiting = Signal()
        nxt = Signal(range(n))
        for k in reversed(range(n)):
            with m.If(cl[k].i.valid & ~is_owner[k]):
                m.d.comb += [waiting.eq(1), nxt.eq(k)]
        free = Signal()
        m.d.comb += free.eq((outstanding == 0) & (~owner_valid | yielding))
        run = Signal(range(self.burst))
        with m.If(free & waiting):
            m.d.sync += [owner.eq(nxt), run.eq(0), yielding.eq(0)]
        with m.Elif(~waiting):
            m.d.sync += [run.eq(0), yielding.eq(0)]
        with m.Elif(took):
            with m.If(run == self.burst - 1):
                m.d.sync += yielding.eq(1)
            with m.Else():
                m.d.sync += run.eq(run + 1)
        return m
