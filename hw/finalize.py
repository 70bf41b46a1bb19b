"""Per-channel finalize engines of the Range-BN cores: a tiny micro-coded sequencer over one
"load, multiply, add, divide, round" datapath.

:class:`ForwardFinalize` implements ``sim.model.golden_bn.finalize`` + ``update_running`` and
:class:`BackwardFinalize` implements ``sim.model.golden_bn.backward_finalize``, bit for bit, flags
included (``overflow`` = 1 exactly when the golden ``flags`` set is non-empty). Both are the same
engine (:class:`_FinalizeEngine`) running a different micro-program.

The datapath
------------
Every golden value is "exact value, then one round-to-nearest-even into ``internal_format(M)``".
The engine computes each exact value as at most two exact terms, each a product of at most three
integers (wide channel sums, float significands, ``c_scale``, ``2**s - 1``) times a power of two,
or as a quotient with a sticky bit, and rounds once. Registers (``NW`` = window width, see
:meth:`_FinalizeEngine.sizes`):

``ACC`` (``NW`` bits, sign, exponent), ``HOLD`` (the same), ``OPR`` (``NO`` bits: multiplicand /
divisor), ``MQ`` (``k`` bits: multiplier / quotient), ``STK`` (sticky of a division), the internal
float result registers, and ``overflow``.

Micro-operations (each micro-instruction may do several of them in parallel; all read the old
register values):

``ld``   ACC <- a source (a channel sum from the input record, a float's significand, the constant
         1, the quotient in MQ, or ACC itself), optionally negated, times ``2**exp`` (a constant, a
         float's exponent, minus ``chunks_log2``), then *normalized* (leading-zero count, left
         shift: the leading one at bit ``NW-1``) in the same cycle.
``opr``  OPR <- the top ``NO`` bits of a normalized ACC (exact: every value moved there has at most
         ``NO`` significant bits), shifted right by the step's :attr:`opr_shift` when it is the
         multiplicand of a product that ``NO`` plus the multiplier's bits would not fit into
         ``NW`` (the ``c_scale`` products; the bits shifted out are zero).
``mq``   MQ <- a float's significand, ``c_scale`` or a constant, left-aligned.
``mul``  ACC <- OPR * MQ, exactly, one multiplier bit per cycle (MSB first, shift-and-add), plus
         one cycle: the add is two carry chains of about ``NW / 2`` bits, the high one a cycle
         behind the low one.
``hold`` HOLD <- ACC (optionally negated).
``add``  ACC <- ACC + HOLD, both normalized with at least two zero low bits (every term has at
         most ``NW - 2`` significant bits). The operand with the larger exponent ("high") stays;
         the other is shifted right by the exponent difference with every bit shifted out ORed
         into bit 0 ("jamming"). Bit 0 of the high operand is 0, so ``high +- low_jammed`` is odd
         whenever bits were lost and lies within one unit of the exact sum: it is the exact sum
         rounded to odd on the window grid. The ``NW + 1``-bit magnitude is halved with the
         dropped bit ORed into bit 0 (still rounded to odd, on a grid twice as coarse). Bits are
         lost only when the exponents differ by at least 2, so at most one leading bit cancels
         and at least ``NW - 3 >= M + 3`` significant bits remain: rounding the odd-rounded sum to
         ``M + 1`` bits (RNE) gives the same result as rounding the exact sum (round-to-odd
         theorem). Close operands never lose bits, so exact cancellation is exact.
``div``  Restoring division of the normalized ACC by the normalized OPR: ``M + 3`` quotient bits
         (at least ``M + 2`` significant) into MQ, the remainder stays in ACC; ``ld q`` then loads the
         quotient and sets STK = (remainder != 0). Quotient plus sticky round exactly like the
         exact ratio. Two cycles per quotient bit.
``rnd``  Round the normalized ACC (+ STK) to the internal float exactly as ``FloatFormat.encode``:
         RNE on ``M + 1`` bits; a biased exponent above ``exp_max`` saturates to the largest
         magnitude (and raises ``overflow`` if the step's flag predicate holds, exactly when the
         golden ``_round`` records a flag); below the smallest normal the value becomes the
         smallest normal if it is above ``2**(-bias)``, else a zero with the value's sign; an exact
         zero is ``+0``.
``set``  Write a float register from a fixed source (a run-time predicated copy: inference,
         flat channel, sigma not positive).

Micro-instructions have predicates instead of branches, so the number of cycles per channel is a
constant: :attr:`latency`. The sequencer is a one-hot token over the steps plus a cycle counter for
the multi-cycle ones (``mul``: one cycle per multiplier bit; ``div``: ``2 (M + 3) + 1``).

Exponents are kept raw, as the cheapest hardware has them: ``ld`` of a float takes its biased
exponent field, ``mq`` likewise (0 for ``c_scale`` and constants), ``opr`` copies ACC's exponent,
``mul`` adds OPR's and MQ's, ``add`` keeps the high operand's, ``div`` leaves ``acc_e - opr_e``.
Every constant these shortcuts omit (float biases, the ``NW - NO`` alignment of OPR, the ``2**-16``
of ``c_scale``, the halving in ``add``, the weight of the quotient's first bit) is folded into a
per-step constant that the next ``ld`` adds (:attr:`ld_const`, computed by ``_lower``), together
with the leading-zero count of the normalization.

Sizes (:meth:`_FinalizeEngine.sizes`): ``NO`` = the widest value moved into OPR (the range, or
``sum g x`` and ``sum g * mu``); ``k`` = max(``M + 3``, ``C_WIDTH``); ``NW`` = max(every product:
the multiplicand's significant bits plus the multiplier's, ``NO + 1``, every ``add`` term + 2,
every dividend + 1, ``M + 3``), with the channel sums as wide as the accumulators that produce
them (``hw.arith.stats_widths``, ``grad_widths``, ``windowed_width``). ``NW`` is not ``NO + k``: the
widest multiplicands (the backward sums) meet significands of ``M + 1`` bits, the 18-bit
``c_scale`` meets the range or a significand. For the default generator configuration (fp10, W =
8, M = 12, n <= 4096, K = 1) ``NW`` is 59 forward and 104 backward with exact statistics, 59 and 53
with the low statistics (``G`` = 4); the widest supported (fp15, W = 16, n <= 2**24, M = 23, K =
64) 105 forward and 207 backward (exact); the iCEBreaker's training unit (W4 B1, M = 4, n <= 16,
low statistics) 27, where ``NO + k`` is 33.

Forward program (training; inference and flat channels differ only in predicated ``set``\\s)::

    mu     = rnd(S u / n)                  div
    sigma  = rnd(c_scale R u / (K 2**16) + 2**eps_log2)      mul + add
    inv    = rnd(1 / sigma)                div     (sigma <= 0: largest value, overflow)
    a      = rnd(gamma inv)                mul     (flat: 0)
    b      = rnd(beta - mu a)              mul + add (flat: beta)
    new_rm = rnd((rm (2**s - 1) + mu) / 2**s)     mul + add  (inference: rm)
    new_rs = rnd((rs (2**s - 1) + sigma) / 2**s)  mul + add  (inference: rs)

Backward program::

    gbar   = rnd(sum_g u / n)              div
    dbeta  = rnd(sum_g u)
    dgamma = rnd(inv sum_gx u**2 - inv mu sum_g u)           3 mul + add
    b_mid  = rnd(-a gbar)                  mul
    t      = rnd(c_scale dgamma / 2**16)   mul
    corr   = rnd(a t / K)                  mul
    b_max  = rnd(b_mid - corr)             add
    b_min  = rnd(b_mid + corr)             add

Timing
------
The engine has no record register: it reads ``i.payload`` where the producer holds it (the stream
rule: the payload holds until taken). A program starts at the first edge ``t`` that sees
``i.valid`` with the engine idle and ``o`` empty (``busy`` and ``o.valid``, registers); it reads the
record throughout and takes it at edge ``t + latency``, the edge that puts the result on ``o``
(``i.ready`` is high in that one cycle only: ``busy`` and the last step's control, registers). The
result holds on ``o`` until taken: ``o``'s floats *are* the float result registers (no output
copy), which change only while the engine is busy. With ``o.ready`` high the result is taken at
the next edge and the next program starts at the one after, so a channel takes
``cycles_per_channel = latency +`` :attr:`TURNAROUND` (2) cycles back to back. ``latency`` is a
constant per configuration (predicated micro-code, no data-dependent branches): with
``C_WIDTH`` = 18 and ``momentum_shift`` = 3 it is ``189 + 6 M`` forward and ``156 + 7 M``
backward (M = 8: 237 / 212; M = 12: 261 / 240; M = 23: 327 / 317).

Pipelined steps: the ``ld``, ``add`` and ``rnd`` datapaths are cut by free-running register
stages:

* ``ld``: source select and its exponent | leading-zero count and the exponent's constant terms |
  shift by the count's high bits | by its three low bits into ACC (:data:`LD_CYCLES` = 4);
* ``add``: operand order and saturated exponent distance | jamming shift by the distance's high
  bits | by its four low bits | add | magnitude | into ACC (:data:`ADD_CYCLES` = 6);
* ``rnd``: sticky bits, biased exponent and both outcomes of the rounding carry | increment and
  select | pack into the destination (:data:`RND_CYCLES` = 3).

A step lasts as many cycles as its slowest micro-operation (register copies take 1) and writes
every architectural register on its last cycle only. A step's inputs do not change during it, so
the free-running stages hold the right values by then, and "every micro-operation reads the old
register values" still holds. ``mul`` takes one bit per cycle plus one (the ``NW``-bit add is
split in two chains, the high half one cycle behind), ``div`` two (the trial subtraction is
registered before the remainder is updated from its sign); both must be alone in their step. The step controls are registers decoded from the next token. No path spans
more than one wide carry chain or one logarithmic shifter stage group, which lets the engines
reach about 100 MHz on ECP5 (``docs/area.md``). The price is cycles: at M = 12 a channel takes
261 cycles forward (124 with single-cycle steps) and 240 backward (133), for about 3.5 times the
clock.

Reset: the control (``busy``, the step token and its counter, the decoded controls, the
predicates and flags) is reset; ACC, HOLD, OPR, MQ, the float registers and the free-running
``ld`` / ``add`` stages have no reset (``reset_less``). A program writes every one of them before
it reads it.

:func:`run_model` executes the same micro-program on Python integers (the register-transfer
model the tests use to sweep thousands of channels quickly); the Amaranth engine is checked
against the golden model directly.
"""

from dataclasses import dataclass

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.arith import (add_const, as_sig, cond_neg, count_leading_zeros, fold_s, fold_u, s_add, select,
                      grad_widths, shift_left, shift_right_jam, stats_widths, widen, window_lsb_width,
                      windowed_width, zext as zext_to)
from hw.bn_layouts import C_WIDTH, chunks_log2_width, count_width
from hw.checks import check_instance, check_int
from hw.formats import C_FRAC_BITS, STATS_GUARD_DEFAULT, BFPFormat, FloatFormat, check_stats

__all__ = ["ForwardFinalize", "BackwardFinalize", "SharedFinalize", "run_model"]


# --- micro-code ----------------------------------------------------------------------------------

PREDICATES = ("always", "never", "training", "inference", "flat", "!flat", "snp", "!snp")


@dataclass(frozen=True)
class Ld:
    """ACC <- source * 2**exp, normalized. ``src``: ``"int:<field>"`` (an integer input field,
    exponent = ``exp``), ``"flt:<name>"`` (a float register or input field, exponent = the float's
    LSB exponent + ``exp``), ``"one"`` (1 * 2**exp), ``"q"`` (the quotient in MQ, sets STK),
    ``"acc"`` (ACC itself, keeps STK). ``kl``: subtract ``chunks_log2`` from the exponent. ``xe``:
    add the unsigned input field of that name (a windowed sum's LSB exponent, ``low`` statistics)."""
    src: str
    exp: int = 0
    kl: bool = False
    neg: bool = False
    xe: str = None


@dataclass(frozen=True)
class Mq:
    """MQ <- ``"flt:<name>"`` significand, ``"int:c_scale"`` (times 2**-C_FRAC_BITS) or
    ``"const"`` (``value``, ``width`` bits, exponent 0), left-aligned in MQ."""
    src: str
    value: int = 0
    width: int = 0


@dataclass(frozen=True)
class Step:
    """One micro-instruction. ``acc``: an :class:`Ld`, ``("mul", bits)``, ``"add"``, ``"div"`` or
    None. ``rnd``: ``(dst, flag_predicate)``; ``sets``: ``((dst, predicate, flag_predicate), ...)``
    (the source of each destination is fixed by the engine's ``set_sources``)."""
    acc: object = None
    opr: bool = False
    mq: Mq = None
    hold: str = None            # None, "pos", "neg"
    rnd: tuple = None
    sets: tuple = ()
    out: bool = False


#: Cycles of a step that loads ACC (source select | leading-zero count | coarse | fine shift).
LD_CYCLES = 4
#: Cycles of an ``add`` step (order and align distance | jamming shift by the distance's high
#: bits | by its low bits | add | magnitude | into ACC).
ADD_CYCLES = 6
#: Cycles of a step that rounds (sticky and biased exponent | increment | pack).
RND_CYCLES = 3


def _steps_cycles(step, k_div):
    """Cycles of one micro-instruction: ``mul`` one per multiplier bit plus one, ``div`` two per quotient
    bit plus one; any other step as many as its slowest micro-operation's pipeline
    (:data:`LD_CYCLES`, :data:`ADD_CYCLES`, :data:`RND_CYCLES`; register copies take 1)."""
    if isinstance(step.acc, tuple) and step.acc[0] == "mul":
        return step.acc[1] + 1
    if step.acc == "div":
        return 1 + 2 * k_div
    cycles = 1
    if isinstance(step.acc, Ld):
        cycles = max(cycles, LD_CYCLES)
    if step.acc == "add":
        cycles = max(cycles, ADD_CYCLES)
    if step.rnd is not None:
        cycles = max(cycles, RND_CYCLES)
    return cycles


# --- the engine ----------------------------------------------------------------------------------

class _FinalizeEngine(wiring.Component):
    """Shared sequencer + datapath. Subclasses define the records, the float sources, the program
    and the sizes; see the module docstring."""

    #: ``{name: (width, signed)}`` integer input fields usable by ``Ld("int:...")``.
    INT_FIELDS = {}
    #: Float fields of the input record.
    FLOAT_INPUTS = ()
    #: Float result registers, in output order.
    FLOAT_REGS = ()
    #: ``{dst: source}`` of ``set``: a float input/register name, ``"zero"`` or ``"maxpos"``.
    SET_SOURCES = {}
    #: Cycles from ``o.valid`` to the next program's start with ``o.ready`` high (the result is
    #: taken at the first edge, the next program starts at the second):
    #: ``cycles_per_channel = latency + TURNAROUND``.
    TURNAROUND = 2

    def __init__(self, bfp, internal, max_count, max_chunks):
        self._check_args(bfp, internal, max_count, max_chunks)
        self.bfp = bfp
        self.internal = internal
        self.max_count = max_count
        self.max_chunks = max_chunks
        self.unit_exp = bfp.lsb_exponent(0)
        self.count_width = count_width(max_count)
        self.kl_width = chunks_log2_width(max_chunks)
        self.kq = internal.frac_bits + 3            # quotient bits
        self.program = self._program()
        for i, st in enumerate(self.program):
            if isinstance(st.acc, tuple) or st.acc == "div":
                # They write ACC/MQ every cycle, so nothing else may share their step.
                assert st == Step(acc=st.acc), f"step {i}: mul/div must be alone in its step"
        self.nw, self.no, self.k = self.sizes()
        self.opr_shift = self._opr_shifts()
        self.ew = self._exp_width()
        self.ld_const = self._lower()
        self.cycles = [_steps_cycles(s, self.kq) for s in self.program]
        self.latency = sum(self.cycles)
        self.cycles_per_channel = self.latency + self.TURNAROUND
        self.input_layout = data.StructLayout(self._input_fields())
        self.output_layout = data.StructLayout(self._output_fields())
        super().__init__({
            "i": In(stream.Signature(self.input_layout)),
            "o": Out(stream.Signature(self.output_layout)),
        })

    @staticmethod
    def _check_args(bfp, internal, max_count, max_chunks):
        check_instance("bfp", bfp, BFPFormat)
        check_instance("internal", internal, FloatFormat)
        check_int("max_count", max_count, 2)
        check_int("max_chunks", max_chunks, 1, 64, power_of_two=True)

    # -- sizing -----------------------------------------------------------------------------------
    def _term_widths(self):
        """``(no_needs, add_terms, dividends, products)``: significant widths of values moved into
        OPR, of ADD operands, of dividends and of the products of the ``mul`` steps."""
        raise NotImplementedError

    def sizes(self):
        """``(NW, NO, k)``: ACC/HOLD width, OPR width, MQ width. ``NW`` holds every product
        exactly, not ``NO + k``: a value moved into OPR for a product is right-aligned there by
        :attr:`opr_shift` when ``NO`` plus the multiplier's bits would not fit (the ``c_scale``
        products: an 18-bit multiplier times the range or a significand, while the widest OPR
        values, the backward sums, meet significands of ``M + 1`` bits)."""
        M = self.internal.frac_bits
        no_needs, add_terms, dividends, products = self._term_widths()
        no = max(no_needs + [M + 1, self.count_width])
        k = max(self.kq, C_WIDTH, M + 1, max((s.mq.width for s in self.program
                                               if s.mq is not None and s.mq.src == "const"), default=0))
        nw = max([M + 3, no + 1] + products + [w + 2 for w in add_terms] + [w + 1 for w in dividends])
        return nw, no, k

    def _opr_shifts(self):
        """Per step: the right shift of the value an ``opr`` step moves into OPR (0 for other
        steps). A value for a ``mul`` of ``bits`` multiplier bits is shifted by ``NO + bits - NW``
        when that is positive, so that the product stays below ``2**NW``; the bits shifted out are
        zero because every product fits ``NW`` (:meth:`sizes`; :func:`run_model` asserts both). A
        divisor stays normalized."""
        shifts = [0] * len(self.program)
        for i, st in enumerate(self.program):
            if not st.opr:
                continue
            for user in self.program[i + 1:]:      # the next mul or div of the same program
                if isinstance(user.acc, tuple):
                    shifts[i] = max(0, self.no + user.acc[1] - self.nw)
                if isinstance(user.acc, tuple) or user.acc == "div" or user.out:
                    break
        return shifts

    def _exp_width(self):
        f = self.internal
        bound = (2 * (f.bias + f.frac_bits + f.exp_max) + 4 * abs(self.unit_exp) + 4 * self.nw
                 + C_FRAC_BITS + 2 * 64 + abs(getattr(self, "eps_log2", 0)) + 64 + 4 * self.bfp.exp_max)
        return bound.bit_length() + 1

    def _input_fields(self):
        raise NotImplementedError

    def _output_fields(self):
        f = self.internal
        fields = {name: f.width for name in self.OUTPUT_FLOATS}
        fields.update({name: 1 for name in self.OUTPUT_BITS})
        return fields

    def _program(self):
        raise NotImplementedError

    def _lower(self):
        """Per-step constant added to the exponent by ``ld`` steps. The hardware keeps raw
        exponents: a float source contributes its biased exponent field, MQ's exponent is the
        float field (or 0), OPR takes ACC's exponent unchanged, ``mul`` adds OPR's and MQ's, ``add``
        keeps the larger operand's and ``div`` leaves ``acc_e - opr_e`` in MQ. Every constant those
        shortcuts omit (float biases, ``NW - NO`` of OPR's alignment, ``2**-16`` of ``c_scale``, the
        1-bit shift of ``add``, the quotient's weight) is added back by the next ``ld``, which must
        come before anything else reads ACC."""
        f = self.internal
        flt_bias = f.bias + f.frac_bits
        consts = [None] * len(self.program)
        pending, mq_const, opr_shift = 0, 0, 0
        for i, step in enumerate(self.program):
            reads_acc = step.opr or step.hold is not None or step.rnd is not None or step.acc in ("add", "div")
            if reads_acc:
                assert pending == 0, f"step {i} reads ACC before an ld completed its exponent"
            acc = step.acc
            if isinstance(acc, Ld):
                c = acc.exp
                if acc.src.startswith("flt:"):
                    c -= flt_bias
                elif acc.src == "q":
                    c += 1 - self.kq
                elif acc.src == "acc":
                    c += pending
                consts[i] = c
                pending = 0
            elif isinstance(acc, tuple):
                pending = (self.nw - self.no) + mq_const + opr_shift
            elif acc == "add":
                pending = 1
            elif acc == "div":
                pending = None          # ACC holds the remainder: only ``ld q`` may follow
            if step.opr:
                opr_shift = self.opr_shift[i]
            if step.mq is not None:
                src = step.mq.src
                mq_const = -flt_bias if src.startswith("flt:") else (-C_FRAC_BITS if src == "int:c_scale" else 0)
        return consts

    # -- hardware ---------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        f = self.internal
        M = f.frac_bits
        NW, NO, K, EW, KQ = self.nw, self.no, self.k, self.ew, self.kq
        prog = self.program
        P = len(prog)
        es = signed(EW)
        b_sh = NW.bit_length()                  # shift amounts: 2**b_sh - 1 >= NW
        assert EW > b_sh + 1

        # --- sequencer: one-hot step token, per-step cycle counter ------------------------------
        # The control signals are registers holding the OR of their steps' token bits, each
        # updated by its own next-state mux, so no decoder sits between the token and the wide
        # datapath enables.
        busy = Signal()
        step = Signal(P, name="step")
        step_next = Signal(P, name="step_next")
        cnt_w = max(1, (max(self.cycles) - 1).bit_length())
        cnt = Signal(cnt_w, name="cnt")
        cnt_next = Signal(cnt_w, name="cnt_next")
        last = Signal(name="last", init=1)     # the current step's last cycle (cnt == 0)
        m.d.comb += [step_next.eq(step), cnt_next.eq(cnt)]
        m.d.sync += [step.eq(step_next), cnt.eq(cnt_next), last.eq(~cnt_next.any())]
        first = Signal()                        # first cycle of the current step
        # The record is read where the producer holds it: a program starts on ``i.valid`` (idle,
        # ``o`` empty) and the record transfers at the edge that publishes the result.
        inp = self.i.payload
        start = Signal()                        # a program starts at this edge (no transfer)
        m.d.comb += start.eq(self.i.valid & ~busy & ~self.o.valid)
        # The record's program starts at step ``entries[start_sel]`` (one program: step 0).
        start_sel = self._entry_select(self.i.payload)
        decoded = {}
        advancing = Signal()                    # the token moves to the next step at this edge

        def on(indices):
            """The token is in one of ``indices`` (a register, equal to the OR of those token
            bits). Written as its own next-state mux so that ``start`` (from ``i.valid``)
            passes one LUT, not the OR tree."""
            key = tuple(sorted(set(indices)))
            if not key:
                return Const(0, 1)
            if key not in decoded:
                ctl = Signal(name=f"ctl{len(decoded)}")
                prev = [step[i - 1] for i in key if i > 0]
                with m.If(start):
                    m.d.sync += ctl.eq(Cat(*[start_sel == j for j, e in enumerate(self.entries)
                                             if e in key]).any())
                with m.Elif(advancing):
                    m.d.sync += ctl.eq(Cat(*prev).any() if prev else 0)
                decoded[key] = ctl
            return decoded[key]

        def steps_where(pred):
            return [i for i, st in enumerate(prog) if pred(st)]

        # Registers of the datapath (``UNRESET_REGISTERS``: no reset, see the module docstring).
        def payload(shape, name):
            return Signal(shape, name=name, reset_less=True)

        acc, acc_s, acc_e = payload(NW, "acc"), payload(1, "acc_s"), payload(es, "acc_e")
        hold, hold_s, hold_e = payload(NW, "hold"), payload(1, "hold_s"), payload(es, "hold_e")
        opr, opr_s, opr_e = payload(NO, "opr"), payload(1, "opr_s"), payload(es, "opr_e")
        mq, mq_s, mq_e = payload(K, "mq"), payload(1, "mq_s"), payload(es, "mq_e")
        stk = Signal(name="stk")
        ovf = Signal(name="ovf")
        regs = {name: payload(f.width, f"r_{name}") for name in self.FLOAT_REGS}

        # Predicates.
        training = Signal()
        flat = Signal()
        snp = Signal()
        m.d.comb += [training.eq(self._training(inp)), flat.eq(self._flat(inp))]
        if "sigma" in regs:
            sig = regs["sigma"]
            m.d.comb += snp.eq(sig[-1] | ~sig[M:M + f.exp_bits].any())
        preds = {
            "always": Const(1, 1), "never": Const(0, 1), "training": training, "inference": ~training,
            "flat": flat, "!flat": ~flat, "snp": snp, "!snp": ~snp,
        }

        def float_value(name):
            """A float register, else the input field; ``in.<field>`` is always the input field."""
            if name.startswith("in."):
                return getattr(inp, name[3:])
            return regs[name] if name in regs else getattr(inp, name)

        # Control signals (OR of the token bits of the steps that use them).
        c_ld = on(steps_where(lambda st: isinstance(st.acc, Ld)))
        c_mul = on(steps_where(lambda st: isinstance(st.acc, tuple)))
        c_add = on(steps_where(lambda st: st.acc == "add"))
        c_div = on(steps_where(lambda st: st.acc == "div"))
        c_opr = on(steps_where(lambda st: st.opr))
        c_mq = on(steps_where(lambda st: st.mq is not None))
        c_hold = on(steps_where(lambda st: st.hold is not None))
        c_hold_neg = on(steps_where(lambda st: st.hold == "neg"))
        c_out = on(steps_where(lambda st: st.out))
        c_ld_kl = on(steps_where(lambda st: isinstance(st.acc, Ld) and st.acc.kl))
        c_ld_neg = on(steps_where(lambda st: isinstance(st.acc, Ld) and st.acc.neg))
        c_ld_exp = Signal(es)
        m.d.comb += c_ld_exp.eq(select([(step[i], Const(c % (1 << EW), EW))
                                        for i, c in enumerate(self.ld_const) if c], EW))
        ld_srcs = sorted({st.acc.src for st in prog if isinstance(st.acc, Ld)})
        sel_ld = {src: on(steps_where(lambda st, src=src: isinstance(st.acc, Ld) and st.acc.src == src))
                  for src in ld_srcs}
        mq_keys = sorted({(st.mq.src, st.mq.value, st.mq.width) for st in prog if st.mq is not None})
        sel_mq = {key: on(steps_where(lambda st, key=key: st.mq is not None
                                      and (st.mq.src, st.mq.value, st.mq.width) == key))
                  for key in mq_keys}
        rnd_steps = steps_where(lambda st: st.rnd is not None)
        c_rnd_dst = {name: on([i for i in rnd_steps if prog[i].rnd[0] == name]) for name in regs}
        rnd_flag_terms = [step[i] & preds[prog[i].rnd[1]] for i in rnd_steps if prog[i].rnd[1] != "never"]
        c_rnd_flag = Cat(*rnd_flag_terms).any() if rnd_flag_terms else Const(0, 1)
        set_terms = {name: [] for name in regs}
        set_flag_terms = []
        for i, st in enumerate(prog):
            for dst, pred, flag in st.sets:
                set_terms[dst].append(step[i] & preds[pred])
                if flag != "never":
                    set_flag_terms.append(step[i] & preds[flag])
        c_set = {name: (Cat(*t).any() if t else Const(0, 1)) for name, t in set_terms.items()}
        c_set_flag = Cat(*set_flag_terms).any() if set_flag_terms else Const(0, 1)

        # --- LD: source select, exponent, normalize ----------------------------------------------
        ld_float_names = [src[4:] for src in ld_srcs if src.startswith("flt:")]
        ld_word = as_sig(m, select([(sel_ld["flt:" + n], float_value(n)) for n in ld_float_names], f.width),
                         "ld_word")
        ld_fe = ld_word[M:M + f.exp_bits]
        sel_ld_flt = Cat(*[sel_ld["flt:" + n] for n in ld_float_names]).any() if ld_float_names else Const(0, 1)
        mag_terms, sign_terms = [], []
        for src in ld_srcs:
            sel = sel_ld[src]
            if src.startswith("int:"):
                fld = getattr(inp, src[4:])
                width, is_signed = self.INT_FIELDS[src[4:]]
                if is_signed:
                    neg = fld[-1]
                    mag_terms.append((sel, fold_u(m, cond_neg(m, fld, neg, f"abs_{src[4:]}"), width,
                                                  f"absf_{src[4:]}")))
                    sign_terms.append((sel, neg))
                else:
                    mag_terms.append((sel, fld))
            elif src == "one":
                mag_terms.append((sel, Const(1, 1)))
            elif src == "q":
                mag_terms.append((sel, mq[:KQ]))
                sign_terms.append((sel, mq_s))
            elif src == "acc":
                mag_terms.append((sel, acc))
                sign_terms.append((sel, acc_s))
        if ld_float_names:
            mag_terms.append((sel_ld_flt, Mux(ld_fe.any(), Cat(ld_word[:M], Const(1, 1)), Const(0, M + 1))))
            sign_terms.append((sel_ld_flt, ld_word[-1]))
        src_mag = as_sig(m, select(mag_terms, NW), "src_mag")
        src_sign = select(sign_terms, 1)
        exp_terms = []
        if ld_float_names:
            exp_terms.append((sel_ld_flt, ld_fe))
        if "q" in sel_ld:
            exp_terms.append((sel_ld["q"], mq_e))
        if "acc" in sel_ld:
            exp_terms.append((sel_ld["acc"], acc_e))
        src_exp = as_sig(m, select(exp_terms, EW).as_signed(), "src_exp")
        # The selected exponent is registered before its constant terms are added (stage 2, beside
        # the leading-zero count): the select and the adders in one stage limited the clock.
        ld1_src_exp = Signal.like(src_exp, name="ld1_src_exp")
        m.d.sync += ld1_src_exp.eq(src_exp)
        kl = self._chunks_log2(inp)
        e1 = as_sig(m, s_add(ld1_src_exp, c_ld_exp), "ld_e1")
        kl_term = Mux(c_ld_kl, kl, Const(0, len(kl)))
        e2 = as_sig(m, s_add(e1, widen(kl_term, EW + 1).as_signed(), sub=True), "ld_e2")
        xe_names = sorted({st.acc.xe for st in prog if isinstance(st.acc, Ld) and st.acc.xe})
        if xe_names:
            xw = max(len(getattr(inp, n)) for n in xe_names)
            xe_term = select([(on(steps_where(lambda st, n=n: isinstance(st.acc, Ld) and st.acc.xe == n)),
                               getattr(inp, n)) for n in xe_names], xw)
            e2 = as_sig(m, s_add(e2, widen(xe_term, xw + 1).as_signed()), "ld_e2x")
        # LD pipeline (LD_CYCLES = 4; free-running registers, the step's inputs hold still):
        # 1 source and its exponent, 2 leading-zero count and the exponent's constant terms, 3 shift
        # by the count's high bits, 4 by its three low bits into ACC.
        ld1_mag, ld1_sign, ld2_e2 = payload(NW, "ld1_mag"), payload(1, "ld1_sign"), payload(e2.shape(), "ld2_e2")
        m.d.sync += [ld1_mag.eq(src_mag), ld1_sign.eq(src_sign ^ c_ld_neg), ld2_e2.eq(e2)]
        lz = count_leading_zeros(m, ld1_mag, "ld_lz")
        ld2_lz, ld2_nz = payload(b_sh, "ld2_lz"), payload(1, "ld2_nz")
        m.d.sync += [ld2_lz.eq(lz), ld2_nz.eq(ld1_mag.any())]
        e3 = as_sig(m, s_add(ld2_e2, widen(ld2_lz, EW + 2).as_signed(), sub=True), "ld_e3")
        ld3_mag, ld3_exp = payload(NW, "ld3_mag"), payload(es, "ld3_exp")
        m.d.sync += [
            ld3_mag.eq(shift_left(m, ld1_mag, Cat(Const(0, 3), ld2_lz[3:]), "ld_norm_hi")),
            ld3_exp.eq(fold_s(m, Mux(ld2_nz, e3, ld2_e2), EW, "ld_ef")),
        ]
        ld_mag = shift_left(m, ld3_mag, ld2_lz[:3], "ld_norm_lo")
        ld_exp = ld3_exp

        # --- MUL: one shift-and-add step per multiplier bit (MSB first) ---------------------------
        # ACC <- 2 ACC + b OPR as two carry chains: the low ML bits are updated on cycles 1..k of
        # the step, the high NW - ML bits one cycle behind (cycles 2..k + 1), from the low half's
        # registered carry, top bit and multiplier bit. With ``Lo = ACC mod 2**ML`` the low sum
        # ``2 (Lo mod 2**(ML-1)) + b OPR_lo`` is below ``2**(ML+1)`` (a carry of one bit) and the
        # high half takes ``2 H + top(Lo) + b OPR_hi + carry``. Bit NW-1 of ACC is 0 during a
        # product, so the high half's shift drops nothing.
        ML = NW // 2
        opr_lo = zext_to(opr[:min(NO, ML)], ML)
        mul_lo = Signal(ML + 1, name="mul_lo")
        m.d.comb += mul_lo.eq(Cat(Const(0, 1), Mux(first, Const(0, ML - 1), acc[:ML - 1]))
                              + Mux(mq[-1], opr_lo, Const(0, ML)))
        mul_c, mul_t, mul_b, first_d = (Signal(name=n) for n in ("mul_c", "mul_t", "mul_b", "first_d"))
        m.d.sync += [mul_c.eq(mul_lo[ML]), mul_t.eq(~first & acc[ML - 1]), mul_b.eq(mq[-1]),
                     first_d.eq(first)]
        HW = NW - ML
        opr_hi = zext_to(opr[ML:], HW) if NO > ML else Const(0, HW)
        # Cat(c, x) + Cat(c, y) = 2 (x + y + c): the carry enters the chain's first bit (bit 0 of
        # the sum is 0); the sum is below 2**NW, so its bits above the high half are 0.
        mul_hi2 = as_sig(m, Cat(mul_c, mul_t, Mux(first_d, Const(0, HW - 1), acc[ML:NW - 1]))
                         + Cat(mul_c, Mux(mul_b, opr_hi, Const(0, HW))), "mul_hi2")
        mul_hi = fold_u(m, Cat(mul_hi2[1] | mul_hi2[0], mul_hi2[2:]), HW, "mul_hi")
        mul_e = Signal(es)
        m.d.comb += mul_e.eq(fold_s(m, s_add(opr_e, mq_e), EW, "mul_ef"))

        # --- ADD: align with jamming, add, magnitude --------------------------------------------
        # ADD pipeline (ADD_CYCLES = 6; free-running registers, ACC and HOLD hold still):
        # 1 order the operands and saturate their exponent distance, 2-3 jamming shift, 4 add,
        # 5 magnitude, 6 into ACC.
        d_ah = as_sig(m, s_add(acc_e, hold_e, sub=True), "add_dah")    # acc_e - hold_e
        d_ha = as_sig(m, s_add(hold_e, acc_e, sub=True), "add_dha")    # hold_e - acc_e
        a_high = Signal()
        m.d.comb += a_high.eq(acc[-1] & (~hold[-1] | ~d_ah[-1]))
        d = as_sig(m, Mux(a_high, d_ah, d_ha), "add_d")        # >= 0 when both are non-zero
        add1_hi, add1_lo = payload(NW, "add1_hi"), payload(NW, "add1_lo")
        add1_ehi, add1_sh = payload(es, "add1_ehi"), payload(b_sh, "add1_sh")
        add1_shi, add1_sub = payload(1, "add1_shi"), payload(1, "add1_sub")
        m.d.sync += [
            add1_hi.eq(Mux(a_high, acc, hold)),
            add1_lo.eq(Mux(a_high, hold, acc)),
            add1_ehi.eq(Mux(a_high, acc_e, hold_e)),
            add1_sh.eq(Mux(d[b_sh:].any(), Const((1 << b_sh) - 1, b_sh), d[:b_sh])),
            add1_shi.eq(Mux(a_high, acc_s, hold_s)),
            add1_sub.eq(acc_s ^ hold_s),
        ]
        # hi (bit 0 is 0) +- lo shifted with jamming is the sum rounded to odd; halving it with
        # the dropped bit ORed into bit 0 keeps it rounded to odd and fits NW bits.
        # Jamming composes (jam(jam(v, H), L) = jam(v, H + L)), so the shift is split in two
        # stages: by the distance's high bits, then by its four low bits.
        sh_lo = min(4, b_sh)
        add2_loj = payload(NW, "add2_loj")
        m.d.sync += add2_loj.eq(shift_right_jam(m, add1_lo, Cat(Const(0, sh_lo), add1_sh[sh_lo:]), "add_loj_hi"))
        add2b_loj = payload(NW, "add2b_loj")
        m.d.sync += add2b_loj.eq(shift_right_jam(m, add2_loj, add1_sh[:sh_lo], "add_loj_lo"))
        add_sum = Mux(add1_sub, add1_hi - add2b_loj, add1_hi + add2b_loj)
        add3_total = payload(add_sum.shape(), "add3_total")     # signed, NW + 2 bits
        m.d.sync += add3_total.eq(add_sum)
        add_neg = add3_total[-1]
        add_abs = as_sig(m, fold_u(m, cond_neg(m, add3_total, add_neg, "add_abs"), NW + 1, "add_absf"), "add_abs1")
        add4_mag, add4_neg = payload(NW, "add4_mag"), payload(1, "add4_neg")
        m.d.sync += [add4_mag.eq(Cat(add_abs[0] | add_abs[1], add_abs[2:])), add4_neg.eq(add_neg)]
        add_mag = add4_mag
        e_hi, s_hi = add1_ehi, add1_shi

        # --- DIV: one restoring step (the remainder stays below 2**(NW-1)) ----------------------
        div_v = widen(Cat(Const(0, NW - NO - 1), opr), NW)     # the divisor's leading one at NW-2
        # Two cycles per quotient bit: the trial difference is registered (phase 0), then the
        # remainder and the quotient bit are updated from it (phase 1).
        div_t = as_sig(m, acc - div_v, "div_t")
        div1_t = Signal.like(div_t, name="div1_t")
        m.d.sync += div1_t.eq(div_t)
        div_phase = Signal(name="div_phase")
        div_ge = ~div1_t[-1]
        div_acc = Mux(div_ge, Cat(div1_t[NW - 1], div1_t[:NW - 1]), Cat(acc[NW - 1], acc[:NW - 1]))
        div_e = Signal(es)
        m.d.comb += div_e.eq(fold_s(m, s_add(acc_e, opr_e, sub=True), EW, "div_ef"))

        # --- OPR load: the top NO bits of ACC, right-aligned for the steps that need it ----------
        opr_load = acc[NW - NO:]
        for sh in sorted(set(self.opr_shift) - {0}):
            opr_load = Mux(on([i for i, r in enumerate(self.opr_shift) if r == sh]), acc[NW - NO + sh:], opr_load)

        # --- MQ load -------------------------------------------------------------------------------
        mq_float_keys = [key for key in mq_keys if key[0].startswith("flt:")]
        mq_word = as_sig(m, select([(sel_mq[key], float_value(key[0][4:])) for key in mq_float_keys], f.width),
                         "mq_word")
        mq_fe = mq_word[M:M + f.exp_bits]
        sel_mq_flt = Cat(*[sel_mq[key] for key in mq_float_keys]).any() if mq_float_keys else Const(0, 1)
        mq_terms = []
        if mq_float_keys:
            mant_q = Mux(mq_fe.any(), Cat(mq_word[:M], Const(1, 1)), Const(0, M + 1))
            mq_terms.append((sel_mq_flt, Cat(Const(0, K - M - 1), mant_q)))
        for key in mq_keys:
            if key[0] == "int:c_scale":
                mq_terms.append((sel_mq[key], Cat(Const(0, K - C_WIDTH), inp.c_scale)))
            elif key[0] == "const":
                mq_terms.append((sel_mq[key], Const(key[1] << (K - key[2]), K)))
        mq_load = select(mq_terms, K)
        mq_load_e = select([(sel_mq_flt, mq_fe)], EW).as_signed()
        mq_load_s = select([(sel_mq_flt, mq_word[-1])], 1)

        # --- RND -----------------------------------------------------------------------------------
        # RND pipeline (RND_CYCLES = 3; free-running registers, ACC holds still): 1 sticky bits
        # and biased exponent, 2 increment and classify, 3 pack into the destination.
        rnd_bits = Signal(f.width)
        rnd_ovf = Signal()
        mant = acc[NW - M - 1:]
        guard = acc[NW - M - 2]
        biased = add_const(m, acc_e, NW - 1 + f.bias, "rnd_biased")
        # Stage 1 also prepares both outcomes of the rounding carry (the significand is all
        # ones: the increment carries into the exponent), so stage 2 only selects.
        biased_p1 = as_sig(m, biased.as_unsigned() + 1, "rnd_biased_p1")   # valid when biased >= 1
        rnd1_sticky, rnd1_below = Signal(name="rnd1_sticky"), Signal(name="rnd1_below")
        rnd1_biased = Signal.like(biased, name="rnd1_biased")
        rnd1_biased_p1 = Signal(f.exp_bits, name="rnd1_biased_p1")
        rnd1_ones, rnd1_over0, rnd1_over1 = Signal(name="rnd1_ones"), Signal(name="rnd1_over0"), Signal(name="rnd1_over1")
        m.d.sync += [
            rnd1_sticky.eq(acc[:NW - M - 2].any() | stk),
            rnd1_below.eq(acc[:NW - 1].any() | stk),
            rnd1_biased.eq(biased),
            rnd1_biased_p1.eq(biased_p1[:f.exp_bits]),
            rnd1_ones.eq(mant.all()),
            rnd1_over0.eq(~biased[-1] & biased[f.exp_bits:].any()),
            rnd1_over1.eq(~biased[-1] & biased_p1[f.exp_bits:].any()),
        ]
        inc = guard & (rnd1_sticky | mant[0])
        mant2 = as_sig(m, mant + inc, "rnd_mant")                   # M + 2 bits
        carry = inc & rnd1_ones
        rnd2_mant, rnd2_biased = Signal(M, name="rnd2_mant"), Signal(f.exp_bits, name="rnd2_biased")
        tiny, over, up = Signal(name="rnd2_tiny"), Signal(name="rnd2_over"), Signal(name="rnd2_up")
        m.d.sync += [
            rnd2_mant.eq(mant2[:M]),
            rnd2_biased.eq(Mux(carry, rnd1_biased_p1, rnd1_biased[:f.exp_bits])),
            tiny.eq(rnd1_biased[-1] | ~rnd1_biased.any()),
            over.eq(Mux(carry, rnd1_over1, rnd1_over0)),
            up.eq(~rnd1_biased.any() & rnd1_below),
        ]
        nz = acc[-1]
        m.d.comb += [
            rnd_bits.eq(Mux(~nz, Const(0, f.width),
                        Mux(tiny, Cat(Const(0, M), up, Const(0, f.exp_bits - 1), acc_s),
                        Mux(over, Cat(Const((1 << M) - 1, M), Const(f.exp_max, f.exp_bits), acc_s),
                            Cat(rnd2_mant, rnd2_biased, acc_s))))),
            rnd_ovf.eq(nz & ~tiny & over),
        ]

        # --- register updates -------------------------------------------------------------------
        with m.If(busy):
            # The iterative steps (one multiplier or quotient bit per cycle) write every cycle.
            with m.If(c_mul):
                m.d.sync += [acc_s.eq(opr_s ^ mq_s), acc_e.eq(mul_e),
                             mq.eq(Cat(Const(0, 1), mq[:K - 1])), stk.eq(0)]
                with m.If(~last):
                    m.d.sync += acc[:ML].eq(mul_lo[:ML])
                with m.If(~first):
                    m.d.sync += acc[ML:].eq(mul_hi)
            with m.If(c_div):
                with m.If(first):
                    m.d.sync += [acc.eq(Cat(acc[1:], acc[0])), mq.eq(0), mq_s.eq(acc_s ^ opr_s),
                                 mq_e.eq(div_e), stk.eq(0), div_phase.eq(0)]
                with m.Else():
                    m.d.sync += div_phase.eq(~div_phase)
                    with m.If(div_phase):
                        m.d.sync += [acc.eq(div_acc), mq.eq(Cat(div_ge, mq[:K - 1]))]
            # Every other step writes on its last cycle only, from its pipeline's registers.
            with m.If(last):
                with m.If(c_ld):
                    m.d.sync += [acc.eq(ld_mag), acc_s.eq(ld1_sign), acc_e.eq(ld_exp)]
                    if "q" in sel_ld:
                        with m.If(sel_ld["q"]):
                            m.d.sync += stk.eq(acc.any())
                    keep = sel_ld["acc"] if "acc" in sel_ld else Const(0, 1)
                    with m.If(~keep & ~(sel_ld["q"] if "q" in sel_ld else Const(0, 1))):
                        m.d.sync += stk.eq(0)
                with m.If(c_add):
                    m.d.sync += [acc.eq(add_mag), acc_s.eq(s_hi ^ add4_neg), acc_e.eq(e_hi), stk.eq(0)]
                with m.If(c_opr):
                    m.d.sync += [opr.eq(opr_load), opr_s.eq(acc_s), opr_e.eq(acc_e)]
                with m.If(c_mq):
                    m.d.sync += [mq.eq(mq_load), mq_s.eq(mq_load_s), mq_e.eq(mq_load_e)]
                with m.If(c_hold):
                    m.d.sync += [hold.eq(acc), hold_s.eq(acc_s ^ c_hold_neg), hold_e.eq(acc_e)]
                # ``o`` shows these: they never change while ``o.valid``. (A busy engine has
                # ``o`` empty anyway; the gate makes "o holds while stalled" hold in every state,
                # so the cores' stream-protocol proofs by induction go through.)
                with m.If(~self.o.valid):
                    for name, reg in regs.items():
                        with m.If(c_rnd_dst[name]):
                            m.d.sync += reg.eq(rnd_bits)
                        if name in self.SET_SOURCES:
                            with m.If(c_set[name]):
                                m.d.sync += reg.eq(self._set_value(name, float_value))
                    with m.If((c_rnd_flag & rnd_ovf) | c_set_flag):
                        m.d.sync += ovf.eq(1)
            # sequencing
            next_cnt = select([(step[i], Const(self.cycles[i + 1] - 1, cnt_w))
                               for i in range(P - 1) if self.cycles[i + 1] > 1], cnt_w)
            with m.If(c_out):
                with m.If(~self.o.valid):
                    m.d.comb += self.i.ready.eq(1)      # the record transfers with the result
                    m.d.sync += [self.o.valid.eq(1), busy.eq(0)]
                    if "flat" in self.OUTPUT_BITS:      # ``flat``: from the record, as it transfers
                        m.d.sync += self.o.payload.flat.eq(flat)
            with m.Elif(last):
                m.d.comb += [step_next.eq(Cat(Const(0, 1), step[:P - 1])), cnt_next.eq(next_cnt),
                             advancing.eq(1)]
                m.d.sync += first.eq(1)
            with m.Else():
                dec = as_sig(m, cnt + Const((1 << cnt_w) - 1, cnt_w), "cnt_dec")   # cnt - 1, carry = 1
                m.d.comb += cnt_next.eq(Cat(dec[0] & dec[cnt_w], dec[1:cnt_w]))
                m.d.sync += first.eq(0)
        with m.If(start):
            for j, e in enumerate(self.entries):
                with m.If(start_sel == j):
                    m.d.comb += [step_next.eq(1 << e), cnt_next.eq(self.cycles[e] - 1)]
            m.d.sync += [busy.eq(1), first.eq(1), ovf.eq(0)]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        # ``ovf`` and the float registers change only while busy, and nothing starts while
        # ``o.valid``: they hold the result until it is taken.
        m.d.comb += [getattr(self.o.payload, name).eq(regs[name]) for name in self.OUTPUT_FLOATS]
        m.d.comb += self.o.payload.overflow.eq(ovf)
        return m

    def _set_value(self, name, float_value):
        f = self.internal
        src = self.SET_SOURCES[name]
        if src == "zero":
            return Const(0, f.width)
        if src == "maxpos":
            return Const(f.pack(0, f.exp_max, (1 << f.frac_bits) - 1), f.width)
        return float_value(src)

    #: Entry steps of the programs the engine holds (one program: step 0); see :meth:`_entry_select`.
    entries = (0,)

    def _entry_select(self, payload):
        """Index into :attr:`entries` of the program a record runs (a value of the input payload)."""
        return Const(0, 1)

    def program_span(self, record):
        """``(first, last)`` step indices of the program ``record`` runs (the model's view of
        :meth:`_entry_select`)."""
        return 0, len(self.program) - 1

    def _training(self, inp):
        return Const(1)

    def _flat(self, inp):
        return Const(0)

    def _chunks_log2(self, inp):
        return inp.chunks_log2


class ForwardFinalize(_FinalizeEngine):
    """Forward per-channel finalize: ``sim.model.golden_bn.finalize`` + ``update_running``.

    Parameters
    ----------
    bfp : BFPFormat
        Format of ``x`` (sets the unit ``u = 2**bfp.lsb_exponent(0)`` and the sum widths).
    internal : FloatFormat
        The per-channel internal float (``hw.formats.internal_format(M)``).
    max_count : int
        Largest count n (sizes ``count`` and the sums).
    max_chunks : int
        Largest K (a power of two, 1..64; sizes ``chunks_log2``).
    eps_log2 : int
        eps = ``2**eps_log2`` (default -16), a generator constant.
    momentum_shift : int
        Running statistics move by ``2**-momentum_shift`` of the difference (default 3; 0..16).

    Ports
    -----
    i : stream of ``input_layout`` (one record per channel)
        ``sum`` (signed, ``sum_width`` bits, the statistics unit's): the channel sum in units
        ``u``, exact, or with ``stats="low"`` the windowed accumulator, whose value is
        ``sum * 2**sum_lsb`` (``sum_lsb``, unsigned, only then); ``range`` (unsigned,
        ``range_width`` bits): ``R_int = sum_k max_k - sum_k min_k`` in units ``u``; ``count``
        (``count_width(max_count)`` bits): n;
        ``chunks_log2`` (``chunks_log2_width(max_chunks)`` bits): log2 K; ``c_scale``
        (``C_WIDTH`` = 18 bits, C = c_scale / 2**16); ``training`` (1 bit); ``gamma``, ``beta``,
        ``running_mean``, ``running_sigma`` (internal-float bits).
    o : stream of ``output_layout`` (one record per channel)
        ``mu``, ``sigma``, ``inv``, ``a``, ``b``, ``new_running_mean``, ``new_running_sigma``
        (internal-float bits), ``flat`` (training and R = 0), ``overflow`` (an internal-float
        result saturated, or sigma <= 0: exactly when the golden ``ChannelParams.flags`` is
        non-empty). Inference: ``mu``/``sigma`` are the running statistics, which also pass through
        unchanged as ``new_running_*``; ``flat`` is 0.

    Timing: see the module docstring; ``latency`` cycles from the program's start to ``o.valid``
    (and the record's transfer), ``cycles_per_channel = latency + 2`` back to back.
    """

    INT_FIELDS = {}
    FLOAT_INPUTS = ("gamma", "beta", "running_mean", "running_sigma")
    FLOAT_REGS = ("mu", "sigma", "inv", "a", "b", "new_running_mean", "new_running_sigma")
    OUTPUT_FLOATS = ("mu", "sigma", "inv", "a", "b", "new_running_mean", "new_running_sigma")
    OUTPUT_BITS = ("flat", "overflow")
    SET_SOURCES = {
        "mu": "running_mean", "sigma": "running_sigma", "inv": "maxpos", "a": "zero", "b": "beta",
        "new_running_mean": "running_mean", "new_running_sigma": "running_sigma",
    }

    def __init__(self, bfp, internal, max_count, max_chunks, *, eps_log2=-16, momentum_shift=3,
                 stats="exact", stats_guard=STATS_GUARD_DEFAULT):
        check_int("eps_log2", eps_log2, -200, 200)
        check_int("momentum_shift", momentum_shift, 0, 16)
        self._check_args(bfp, internal, max_count, max_chunks)
        check_stats(stats, stats_guard)
        self.eps_log2 = eps_log2
        self.momentum_shift = momentum_shift
        self.stats_mode, self.stats_guard = stats, stats_guard
        # The statistics unit's own widths (hw.stats_unit): the record takes its fields as they are.
        _, self.sum_width, self.range_width = stats_widths(bfp, max_count, max_chunks)
        self.lsb_width = 0
        if stats == "low":      # the windowed sum and its LSB exponent
            self.sum_width = windowed_width(1 << (bfp.width - 1), stats_guard, max_count)
            self.lsb_width = window_lsb_width(bfp.exp_max)
        self.INT_FIELDS = {
            "sum": (self.sum_width, True), "range": (self.range_width, False),
            "count": (count_width(max_count), False),
        }
        super().__init__(bfp, internal, max_count, max_chunks)

    def _input_fields(self):
        f = self.internal
        return {
            "sum": signed(self.sum_width),
            **({"sum_lsb": self.lsb_width} if self.lsb_width else {}),
            "range": unsigned(self.range_width),
            "count": self.count_width,
            "chunks_log2": self.kl_width,
            "c_scale": C_WIDTH,
            "training": 1,
            "gamma": f.width, "beta": f.width, "running_mean": f.width, "running_sigma": f.width,
        }

    def _term_widths(self):
        M, s = self.internal.frac_bits, self.momentum_shift
        no_needs = [self.range_width]
        add_terms = [self.range_width + C_WIDTH, 1, 2 * (M + 1), M + 1, M + 1 + s]
        dividends = [self.sum_width, 1]
        # range * c_scale, gamma * inv, mu * a, running * (2**s - 1)
        products = [self.range_width + C_WIDTH, 2 * (M + 1), 2 * (M + 1), M + 1 + s]
        return no_needs, add_terms, dividends, products

    def _program(self):
        ue, s = self.unit_exp, self.momentum_shift
        P = [
            # mu = rnd(S u / n)
            Step(acc=Ld("int:count")),
            Step(opr=True, acc=Ld("int:sum", exp=ue, xe="sum_lsb" if self.lsb_width else None)),
            Step(acc="div"),
            Step(acc=Ld("q")),
            # sigma = rnd(C R u / K + eps)
            Step(rnd=("mu", "training"), acc=Ld("int:range", exp=ue, kl=True),
                 mq=Mq("int:c_scale")),
            Step(opr=True),
            Step(acc=("mul", C_WIDTH)),
            Step(acc=Ld("acc")),
            Step(hold="pos", acc=Ld("one", exp=self.eps_log2)),
            Step(acc="add"),
            Step(acc=Ld("acc")),
            Step(rnd=("sigma", "training")),
            Step(sets=(("mu", "inference", "never"), ("sigma", "inference", "never"))),
            # inv = rnd(1 / sigma)
            Step(acc=Ld("flt:sigma")),
            Step(opr=True, acc=Ld("one")),
            Step(acc="div"),
            Step(acc=Ld("q")),
            Step(rnd=("inv", "!snp")),
            Step(sets=(("inv", "snp", "snp"),)),
            # a = rnd(gamma inv)
            Step(acc=Ld("flt:gamma"), mq=Mq("flt:inv")),
            Step(opr=True),
            Step(acc=("mul", self.internal.frac_bits + 1)),
            Step(acc=Ld("acc")),
            # b = rnd(beta - mu a)
            Step(rnd=("a", "!flat"), acc=Ld("flt:mu")),
            Step(opr=True, mq=Mq("flt:a")),
            Step(acc=("mul", self.internal.frac_bits + 1)),
            Step(acc=Ld("acc")),
            Step(hold="neg", acc=Ld("flt:beta")),
            Step(acc="add"),
            Step(acc=Ld("acc")),
            Step(rnd=("b", "!flat")),
        ]
        flat_sets = (("a", "flat", "never"), ("b", "flat", "never"))
        if s == 0:
            # running <- batch statistic, rounded once as the golden model does.
            P += [Step(acc=Ld("flt:mu"), sets=flat_sets)]
            P += [Step(rnd=("new_running_mean", "never"), acc=Ld("flt:sigma"))]
            P += [Step(rnd=("new_running_sigma", "never"))]
        else:
            for reg, src, batch in (("new_running_mean", "running_mean", "mu"),
                                    ("new_running_sigma", "running_sigma", "sigma")):
                P += [
                    Step(acc=Ld(f"flt:{src}", exp=-s), mq=Mq("const", (1 << s) - 1, s),
                         sets=flat_sets if reg == "new_running_mean" else ()),
                    Step(opr=True),
                    Step(acc=("mul", s)),
                    Step(acc=Ld("acc")),
                    Step(hold="pos", acc=Ld(f"flt:{batch}", exp=-s)),
                    Step(acc="add"),
                    Step(acc=Ld("acc")),
                    Step(rnd=(reg, "never")),
                ]
        P += [Step(sets=(("new_running_mean", "inference", "never"),
                         ("new_running_sigma", "inference", "never")))]
        P += [Step(out=True)]
        return P

    def _training(self, inp):
        return inp.training

    def _flat(self, inp):
        return inp.training & ~inp.range.any()


class BackwardFinalize(_FinalizeEngine):
    """Backward per-channel finalize: ``sim.model.golden_bn.backward_finalize``.

    Parameters: ``bfp``, ``internal``, ``max_count``, ``max_chunks`` as :class:`ForwardFinalize`.

    Ports
    -----
    i : stream of ``input_layout``
        ``sum_g`` (signed, ``sum_width`` bits, units ``u``), ``sum_gx`` (signed, ``sum_gx_width``
        bits, units ``u**2``): the gradient reduction's sums, exact, or with ``stats="low"`` windowed
        accumulators with LSB exponents ``sum_g_lsb``, ``sum_gx_lsb``; ``count`` n,
        ``chunks_log2``, ``c_scale`` (as the forward record), ``mu``, ``inv``, ``a``
        (internal-float bits, the forward pass's saved values).
    o : stream of ``output_layout``
        ``dgamma``, ``dbeta``, ``b_mid``, ``b_max``, ``b_min`` (internal-float bits) and
        ``overflow`` (exactly when the golden ``GradParams.flags`` is non-empty).

    Timing: see the module docstring and ``latency``.
    """

    FLOAT_INPUTS = ("mu", "inv", "a")
    FLOAT_REGS = ("dgamma", "dbeta", "gbar", "b_mid", "t", "corr", "b_max", "b_min")
    OUTPUT_FLOATS = ("dgamma", "dbeta", "b_mid", "b_max", "b_min")
    OUTPUT_BITS = ("overflow",)
    SET_SOURCES = {}

    def __init__(self, bfp, internal, max_count, max_chunks, *, stats="exact",
                 stats_guard=STATS_GUARD_DEFAULT):
        self._check_args(bfp, internal, max_count, max_chunks)
        check_stats(stats, stats_guard)
        self.stats_mode, self.stats_guard = stats, stats_guard
        # The gradient reduction's own widths (hw.grad_reduce): the record takes its sums as they are.
        self.sum_width, self.sum_gx_width = grad_widths(bfp, max_count)
        self.lsb_width = self.lsb_gx_width = 0
        if stats == "low":      # the windowed sums and their LSB exponents (hw.grad_reduce)
            W, e = bfp.width, bfp.exp_max
            self.sum_width = windowed_width(1 << (W - 1), stats_guard, max_count)
            self.sum_gx_width = windowed_width(1 << (2 * W - 2), stats_guard, max_count)
            self.lsb_width, self.lsb_gx_width = window_lsb_width(e), window_lsb_width(2 * e)
        self.INT_FIELDS = {
            "sum_g": (self.sum_width, True), "sum_gx": (self.sum_gx_width, True),
            "count": (count_width(max_count), False),
        }
        super().__init__(bfp, internal, max_count, max_chunks)

    def _input_fields(self):
        f = self.internal
        return {
            "sum_g": signed(self.sum_width),
            "sum_gx": signed(self.sum_gx_width),
            **({"sum_g_lsb": self.lsb_width, "sum_gx_lsb": self.lsb_gx_width} if self.lsb_width else {}),
            "count": self.count_width,
            "chunks_log2": self.kl_width,
            "c_scale": C_WIDTH,
            "mu": f.width, "inv": f.width, "a": f.width,
        }

    def _term_widths(self):
        M = self.internal.frac_bits
        no_needs = [self.sum_gx_width, self.sum_width + M + 1]
        add_terms = [self.sum_gx_width + M + 1, self.sum_width + 2 * (M + 1), M + 1]
        dividends = [self.sum_width]
        # sum_g * mu, (sum_g mu) * inv, sum_gx * inv, a * gbar, dgamma * c_scale, a * t
        products = [self.sum_width + M + 1, self.sum_width + 2 * (M + 1), self.sum_gx_width + M + 1,
                    2 * (M + 1), M + 1 + C_WIDTH, 2 * (M + 1)]
        return no_needs, add_terms, dividends, products

    def _program(self):
        ue, M = self.unit_exp, self.internal.frac_bits
        mb = M + 1
        xg, xgx = ("sum_g_lsb", "sum_gx_lsb") if self.lsb_width else (None, None)
        return [
            # gbar = rnd(sum_g u / n)
            Step(acc=Ld("int:count")),
            Step(opr=True, acc=Ld("int:sum_g", exp=ue, xe=xg)),
            Step(acc="div"),
            Step(acc=Ld("q")),
            # dbeta = rnd(sum_g u); Y = inv mu sum_g u
            Step(rnd=("gbar", "always"), acc=Ld("int:sum_g", exp=ue, xe=xg)),
            Step(rnd=("dbeta", "always"), opr=True, mq=Mq("flt:mu")),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc")),
            Step(opr=True, mq=Mq("flt:inv")),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc")),
            # X = inv sum_gx u**2; dgamma = rnd(X - Y)
            Step(hold="neg", acc=Ld("int:sum_gx", exp=2 * ue, xe=xgx)),
            Step(opr=True, mq=Mq("flt:inv")),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc")),
            Step(acc="add"),
            Step(acc=Ld("acc")),
            # b_mid = rnd(-a gbar)
            Step(rnd=("dgamma", "always"), acc=Ld("flt:gbar"), mq=Mq("flt:a")),
            Step(opr=True),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc", neg=True)),
            # t = rnd(C dgamma)
            Step(rnd=("b_mid", "always"), acc=Ld("flt:dgamma"), mq=Mq("int:c_scale")),
            Step(opr=True),
            Step(acc=("mul", C_WIDTH)),
            Step(acc=Ld("acc")),
            # corr = rnd(a t / K)
            Step(rnd=("t", "always")),
            Step(acc=Ld("flt:t", kl=True), mq=Mq("flt:a")),
            Step(opr=True),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc")),
            Step(rnd=("corr", "always")),
            # b_max = rnd(b_mid - corr), b_min = rnd(b_mid + corr)
            Step(acc=Ld("flt:corr", neg=True)),
            Step(hold="pos", acc=Ld("flt:b_mid")),
            Step(acc="add"),
            Step(acc=Ld("acc")),
            Step(rnd=("b_max", "always"), acc=Ld("flt:corr")),
            Step(hold="pos", acc=Ld("flt:b_mid")),
            Step(acc="add"),
            Step(acc=Ld("acc")),
            Step(rnd=("b_min", "always")),
            Step(out=True),
        ]


def _step_with_inputs(step, names):
    """``step`` with every float source in ``names`` read as an input field (``flt:in.<name>``)."""
    def fix(src):
        return f"flt:in.{src[4:]}" if src.startswith("flt:") and src[4:] in names else src
    acc = step.acc
    if isinstance(acc, Ld):
        acc = Ld(fix(acc.src), acc.exp, acc.kl, acc.neg, acc.xe)
    mq = Mq(fix(step.mq.src), step.mq.value, step.mq.width) if step.mq is not None else None
    return Step(acc=acc, opr=step.opr, mq=mq, hold=step.hold, rnd=step.rnd, sets=step.sets, out=step.out)


class SharedFinalize(_FinalizeEngine):
    """One engine for both cores (``hw.bn_core``): :class:`ForwardFinalize`'s program followed by
    :class:`BackwardFinalize`'s, on one datapath sized for both (``NW``, ``NO``, ``k`` the larger of
    the two engines'). A record runs one program, chosen by its ``backward`` bit, and gives exactly
    what that program's own engine gives, in the same number of cycles (``mode_latency``: the
    steps' cycle counts do not depend on the widths).

    Records: ``input_layout`` is every field of both engines' inputs plus ``backward`` (the fields
    with the same name -- ``count``, ``chunks_log2``, ``c_scale`` -- are one); a driver sets only
    its own fields (the others are 0). ``output_layout``: every output of both, ``overflow`` shared.
    The backward program's float inputs ``mu``, ``inv``, ``a`` (the forward pass's saved values)
    share their names with forward result registers, so its steps read them as ``in.<name>``.

    Arguments as :class:`ForwardFinalize`. Timing: as the two engines; one record at a time (the
    running program's, held by its producer until the result), at most one result untaken.
    """

    def __init__(self, bfp, internal, max_count, max_chunks, *, eps_log2=-16, momentum_shift=3,
                 stats="exact", stats_guard=STATS_GUARD_DEFAULT):
        fwd = ForwardFinalize(bfp, internal, max_count, max_chunks, eps_log2=eps_log2,
                              momentum_shift=momentum_shift, stats=stats, stats_guard=stats_guard)
        bwd = BackwardFinalize(bfp, internal, max_count, max_chunks, stats=stats, stats_guard=stats_guard)
        for template in (fwd, bwd):     # their programs and sizes are used, never their hardware
            template._MustUse__silence = True
        self._fwd, self._bwd = fwd, bwd
        self.eps_log2, self.momentum_shift = eps_log2, momentum_shift
        self.stats_mode, self.stats_guard = stats, stats_guard
        self.INT_FIELDS = {**fwd.INT_FIELDS, **bwd.INT_FIELDS}
        self.FLOAT_INPUTS = fwd.FLOAT_INPUTS + tuple(f"in.{n}" for n in bwd.FLOAT_INPUTS)
        self.FLOAT_REGS = fwd.FLOAT_REGS + bwd.FLOAT_REGS
        self.OUTPUT_FLOATS = fwd.OUTPUT_FLOATS + bwd.OUTPUT_FLOATS
        self.OUTPUT_BITS = ("flat", "overflow")
        self.SET_SOURCES = dict(fwd.SET_SOURCES)
        self.entries = (0, len(fwd.program))
        super().__init__(bfp, internal, max_count, max_chunks)
        n_f = len(fwd.program)
        self.mode_latency = {"forward": sum(self.cycles[:n_f]), "backward": sum(self.cycles[n_f:])}
        assert self.mode_latency == {"forward": fwd.latency, "backward": bwd.latency}

    def _input_fields(self):
        return {**self._fwd._input_fields(), **self._bwd._input_fields(), "backward": 1}

    def _term_widths(self):
        a, b = self._fwd._term_widths(), self._bwd._term_widths()
        return tuple(x + y for x, y in zip(a, b))

    def _program(self):
        return self._fwd.program + [_step_with_inputs(st, self._bwd.FLOAT_INPUTS) for st in self._bwd.program]

    def _entry_select(self, payload):
        return payload.backward

    def program_span(self, record):
        n_f = len(self._fwd.program)
        return (n_f, len(self.program) - 1) if record.get("backward", 0) else (0, n_f - 1)

    def _training(self, inp):
        return inp.training

    def _flat(self, inp):
        return inp.training & ~inp.range.any()


# --- register-transfer model (plain Python) ------------------------------------------------------

#: The datapath registers of :func:`run_model` (and of the engine) that have no reset.
UNRESET_REGISTERS = ("acc", "acc_s", "acc_e", "hold", "hold_s", "hold_e", "opr", "opr_s", "opr_e",
                     "mq", "mq_s", "mq_e")


def run_model(engine, record, trace=None, start=None):
    """Execute ``engine``'s micro-program on Python integers, register for register as the
    hardware does (raw exponents, the lowered per-step ``ld`` constants). ``record``: dict of input
    field values (signed fields as Python ints). Returns the output record as a dict. Asserts every
    width and exactness assumption of the hardware on the way.

    ``start``: values of :data:`UNRESET_REGISTERS` and of the float registers (``"r_<name>"``)
    before the program (default 0). The hardware does not reset them, so the result must not
    depend on them (``tests/test_finalize.py`` checks that with random values)."""
    f = engine.internal
    M, bias = f.frac_bits, f.bias
    NW, NO, K, KQ = engine.nw, engine.no, engine.k, engine.kq
    start = dict(start or {})
    st = dict({name: start.pop(name, 0) for name in UNRESET_REGISTERS}, stk=0, ovf=0)
    regs = {name: start.pop(f"r_{name}", 0) for name in engine.FLOAT_REGS}
    if start:
        raise ValueError(f"unknown start registers {sorted(start)}")
    training = record.get("training", 1)
    flat = int(bool(training) and record.get("range", 1) == 0)

    def fval(name):
        if name.startswith("in."):
            return record[name[3:]]
        return regs[name] if name in regs else record[name]

    def decode(word):
        """(sign, significand, raw exponent field)"""
        s, e, fr = f.unpack(word)
        return s, ((1 << M) | fr) if e else 0, e

    def pred(p):
        sig = regs.get("sigma", 0)
        snp = (sig >> (f.width - 1)) & 1 or ((sig >> M) & f.exp_max) == 0
        return {"always": True, "never": False, "training": bool(training), "inference": not training,
                "flat": bool(flat), "!flat": not flat, "snp": bool(snp), "!snp": not snp}[p]

    def rnd():
        acc, e, s = st["acc"], st["acc_e"], st["acc_s"]
        if acc == 0:
            return 0, False
        assert acc >> (NW - 1) == 1
        b = e + NW - 1 + bias
        if b < 1:
            up = b == 0 and ((acc & ((1 << (NW - 1)) - 1)) != 0 or st["stk"])
            return f.pack(s, 1 if up else 0, 0), False
        mant = acc >> (NW - M - 1)
        guard = (acc >> (NW - M - 2)) & 1
        sticky = int((acc & ((1 << (NW - M - 2)) - 1)) != 0) | st["stk"]
        mant += guard & (sticky | (mant & 1))
        if mant >> (M + 1):
            mant >>= 1
            b += 1
        if b > f.exp_max:
            return f.pack(s, f.exp_max, (1 << M) - 1), True
        return f.pack(s, b, mant & ((1 << M) - 1)), False

    first, last = engine.program_span(record)
    for index in range(first, last + 1):
        step = engine.program[index]
        new = dict(st)
        new_regs = dict(regs)
        if isinstance(step.acc, Ld):
            ld = step.acc
            stk = 0
            if ld.src.startswith("int:"):
                v = record[ld.src[4:]]
                sgn, mag, e = int(v < 0), abs(v), 0
            elif ld.src.startswith("flt:"):
                sgn, mag, e = decode(fval(ld.src[4:]))
            elif ld.src == "one":
                sgn, mag, e = 0, 1, 0
            elif ld.src == "q":
                sgn, mag, e = st["mq_s"], st["mq"] & ((1 << KQ) - 1), st["mq_e"]
                stk = int(st["acc"] != 0)
            else:
                sgn, mag, e = st["acc_s"], st["acc"], st["acc_e"]
                stk = st["stk"]
            assert mag < 1 << NW
            e += engine.ld_const[index] - (record["chunks_log2"] if ld.kl else 0) + (record[ld.xe] if ld.xe else 0)
            if mag:
                lz = NW - mag.bit_length()
                mag <<= lz
                e -= lz
            new.update(acc=mag, acc_s=sgn ^ ld.neg, acc_e=e, stk=stk)
        elif isinstance(step.acc, tuple):
            bits = step.acc[1]
            prod = st["opr"] * (st["mq"] >> (K - bits))
            assert prod < 1 << NW, "MUL overflow"
            new.update(acc=prod, acc_s=st["opr_s"] ^ st["mq_s"], acc_e=st["opr_e"] + st["mq_e"],
                       mq=(st["mq"] << bits) & ((1 << K) - 1), stk=0)
        elif step.acc == "add":
            a, h = st["acc"], st["hold"]
            for v in (a, h):
                assert v == 0 or (v >> (NW - 1) == 1 and v & 3 == 0), "ADD operand not normalized"
            a_high = a != 0 and (h == 0 or st["acc_e"] >= st["hold_e"])
            if a_high:
                hi, lo, e_hi, s_hi, s_lo, dd = a, h, st["acc_e"], st["acc_s"], st["hold_s"], st["acc_e"] - st["hold_e"]
            else:
                hi, lo, e_hi, s_hi, s_lo, dd = h, a, st["hold_e"], st["hold_s"], st["acc_s"], st["hold_e"] - st["acc_e"]
            sh = min(max(dd, 0), (1 << NW.bit_length()) - 1)
            lo_j = (lo >> sh) | int(lo & ((1 << sh) - 1) != 0)
            total = hi - lo_j if s_hi != s_lo else hi + lo_j
            neg = total < 0
            mag = abs(total)
            assert mag < 1 << (NW + 1)
            new.update(acc=(mag >> 1) | (mag & 1), acc_s=s_hi ^ neg, acc_e=e_hi, stk=0)
        elif step.acc == "div":
            assert st["acc"] & 1 == 0
            r = st["acc"] >> 1
            v = st["opr"] << (NW - NO - 1)
            q = 0
            for _ in range(KQ):
                t = r - v
                if t >= 0:
                    r, q = 2 * t, 2 * q + 1
                else:
                    r, q = 2 * r, 2 * q
                assert r < 1 << NW or v == 0      # a zero divisor (sigma <= 0) is discarded
                r &= (1 << NW) - 1
            new.update(acc=r, mq=q, mq_s=st["acc_s"] ^ st["opr_s"], mq_e=st["acc_e"] - st["opr_e"], stk=0)
        if step.opr:
            drop = NW - NO + engine.opr_shift[index]
            assert st["acc"] & ((1 << drop) - 1) == 0, "OPR load inexact"
            new.update(opr=st["acc"] >> drop, opr_s=st["acc_s"], opr_e=st["acc_e"])
        if step.mq is not None:
            src = step.mq.src
            if src.startswith("flt:"):
                sgn, mag, e = decode(fval(src[4:]))
                new.update(mq=mag << (K - M - 1), mq_s=sgn, mq_e=e)
            elif src == "int:c_scale":
                new.update(mq=record["c_scale"] << (K - C_WIDTH), mq_s=0, mq_e=0)
            else:
                new.update(mq=step.mq.value << (K - step.mq.width), mq_s=0, mq_e=0)
        if step.hold is not None:
            new.update(hold=st["acc"], hold_s=st["acc_s"] ^ (step.hold == "neg"), hold_e=st["acc_e"])
        if step.rnd is not None:
            dst, flag = step.rnd
            bits, over = rnd()
            new_regs[dst] = bits
            if over and pred(flag):
                new["ovf"] = 1
        for dst, p, flag in step.sets:
            if pred(p):
                new_regs[dst] = _model_set_value(engine, dst, fval)
            if flag != "never" and pred(flag):
                new["ovf"] = 1
        st, regs = new, new_regs
        if trace is not None:
            trace.append((step, dict(st), dict(regs)))
    out = {name: regs[name] for name in engine.OUTPUT_FLOATS}
    out["overflow"] = st["ovf"]
    if "flat" in engine.OUTPUT_BITS:
        out["flat"] = flat
    return out


def _model_set_value(engine, dst, fval):
    f = engine.internal
    src = engine.SET_SOURCES[dst]
    if src == "zero":
        return 0
    if src == "maxpos":
        return f.pack(0, f.exp_max, (1 << f.frac_bits) - 1)
    return fval(src)
