"""Time-sharing one in-order stream unit between several clients.

:class:`StreamShare` sits between ``n`` clients and one *in-order* unit (a pipeline whose outputs
leave in the order its inputs came, one output per input; ``hw.bfp_affine.BFPAffine`` is one).
Each client sees a port pair shaped like the unit itself (``clients[k].i``, ``clients[k].o``), so a
core written against the unit works unchanged against its client port.

Rule: the unit belongs to its *owner* (a register) while the owner offers inputs or has items
in the unit. When the unit is empty (``outstanding`` = 0) and the owner offers nothing, the unit
is *free*: the first other client (lowest index) that offers an input transfers it, and from that
edge on owns the unit. So the owner changes only while nothing is in the unit, and every output
belongs to the owner: outputs are routed by the owner register alone. Waiting is bounded: while
another client offers, the owner may transfer ``burst`` more items; then it *yields* (its
``ready`` is held low), the unit drains and passes to the waiting client. ``burst`` trades the
drain at each hand-over against the wait: a pipeline that streams (``BFPAffine``) takes a long
burst, a sequential engine that takes one record at a time (``hw.finalize``) a burst of 1, so
that two clients alternate record by record.

Timing: no cycle is added. A client alone sees exactly the unit's own ``i.ready`` (it is the owner,
or the unit is free), so a core's documented latency and throughput hold whenever the other
clients are idle. A client that is not the owner waits until the owner pauses or yields and the
unit has drained; it is never refused while the unit is free.

Back-pressure: ``clients[k].i.ready`` = unit ``i.ready`` and (owner = k and not yielding, or free
and no lower-index non-owner offers); it does not depend on ``clients[k].i.valid`` itself, so a
client may advance its own pipeline on ``ready`` alone (``hw.backward_core`` does; such a client
is seen as waiting only once its pipeline offers). ``clients[k].o`` carries the unit's ``o``
while k owns it (``valid`` low otherwise); the unit's ``o.ready`` is the owner's. Stream rules
hold on every port: an output's payload holds until taken because the owner cannot change while
an output waits.

Cost: one input-payload multiplexer (``n - 1`` LUTs per payload bit), an output-valid gate per
client, a counter of ``bits(max_outstanding)`` bits and one of ``bits(burst)``. ``max_outstanding``: the most inputs the
unit holds untaken (``BFPAffine.QUEUE_DEPTH``; its credit register enforces it).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
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
        outstanding = Signal(range(self.max_outstanding + 1))
        took = Signal()
        gave = Signal()
        m.d.comb += [took.eq(self.unit_i.valid & self.unit_i.ready),
                     gave.eq(self.unit_o.valid & self.unit_o.ready)]
        with m.If(took & ~gave):
            m.d.sync += outstanding.eq(outstanding + 1)
        with m.Elif(gave & ~took):
            m.d.sync += outstanding.eq(outstanding - 1)

        owner = self.owner
        owner_valid = Signal()
        m.d.comb += owner_valid.eq(Mux(owner == 0, cl[0].i.valid, 0))
        for k in range(1, n):
            with m.If(owner == k):
                m.d.comb += owner_valid.eq(cl[k].i.valid)
        # A non-owner waits (offers an input): after ``burst`` more owner transfers the owner yields
        # (``yielding``: its ready is held low until the unit has drained and changed hands).
        sel = Signal(range(n))
        waiting = Signal()
        m.d.comb += waiting.eq(Cat(*[cl[k].i.valid & (owner != k) for k in range(n)]).any())
        run = Signal(range(self.burst))
        yielding = Signal()
        owner_took = Signal()
        with m.If(took & (sel != owner)):
            m.d.sync += [run.eq(0), yielding.eq(0)]
        with m.Elif(~waiting):
            m.d.sync += run.eq(0)
        with m.Elif(owner_took):
            with m.If(run == self.burst - 1):
                m.d.sync += yielding.eq(1)
            with m.Else():
                m.d.sync += run.eq(run + 1)
        free = Signal()
        m.d.comb += free.eq((outstanding == 0) & (~owner_valid | yielding))

        # sel: the client whose input reaches the unit this cycle.
        m.d.comb += sel.eq(owner)
        earlier = Signal(name="earlier_0", init=0)      # a lower-index non-owner offers
        offers = []                                     # granted offers: at most one is high
        for k in range(n):
            is_owner = owner == k
            grant = Signal(name=f"grant_{k}")
            m.d.comb += grant.eq(Mux(is_owner, ~yielding, free & ~earlier))
            m.d.comb += cl[k].i.ready.eq(self.unit_i.ready & grant)
            offers.append(cl[k].i.valid & grant)
            with m.If(free & ~is_owner & cl[k].i.valid & ~earlier):
                m.d.comb += sel.eq(k)
            nxt = Signal(name=f"earlier_{k + 1}")
            m.d.comb += nxt.eq(earlier | (~is_owner & cl[k].i.valid))
            earlier = nxt
            m.d.comb += [cl[k].o.payload.eq(self.unit_o.payload),
                         cl[k].o.valid.eq(self.unit_o.valid & is_owner)]
            with m.If(is_owner):
                m.d.comb += self.unit_o.ready.eq(cl[k].o.ready)

        m.d.comb += [self.unit_i.valid.eq(Cat(*offers).any()), self.unit_i.payload.eq(cl[0].i.payload)]
        for k in range(1, n):
            with m.If(sel == k):
                m.d.comb += self.unit_i.payload.eq(cl[k].i.payload)
        m.d.comb += owner_took.eq(took & (sel == owner))
        with m.If(took):
            m.d.sync += owner.eq(sel)
        return m
