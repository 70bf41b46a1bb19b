"""Per-channel finalize engines of the Range-BN cores: a tiny micro-coded sequencer over one
"load, multiply, add, divide, round" datapath.

:class:`ForwardFinalize` implements ``sim.golden_bn.finalize`` + ``update_running`` and
:class:`BackwardFinalize` implements ``sim.golden_bn.backward_finalize``, bit for bit, flags
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
         ``NO`` significant bits).
``mq``   MQ <- a float's significand, ``c_scale`` or a constant, left-aligned.
``mul``  ACC <- OPR * MQ, exactly, one multiplier bit per cycle (MSB first, shift-and-add).
``hold`` HOLD <- ACC (optionally negated).
``add``  ACC <- ACC + HOLD, both normalized with at least two zero low bits (all terms have at
         most ``NW - 2`` significant bits). The operand with the larger exponent stays; it is
         shifted right by one (exact: its bit 0 is 0) and the other by one more than the exponent
         difference, with every bit shifted out ORed into bit 0 ("jamming"). The high operand's
         bit 0 is then 0, so the jammed sum is odd whenever it is inexact and lies within one unit
         of the exact sum: it is the exact sum rounded to odd on the window grid. When bits are
         lost the exponents differ by at least 2, so no more than one leading bit cancels and at
         least ``NW - 2 >= M + 3`` significant bits remain: rounding the odd-rounded sum to ``M + 1``
         bits (RNE) gives the same result as rounding the exact sum (round-to-odd theorem).
         Close operands never lose bits: exact cancellation is exact.
``div``  Restoring division of the normalized ACC by the normalized OPR: ``M + 3`` quotient bits
         (at least ``M + 2`` significant) into MQ, the remainder stays in ACC; ``ld q`` then loads the
         quotient and sets STK = (remainder != 0). Quotient plus sticky round exactly like the
         exact ratio. One cycle per quotient bit.
``rnd``  Round the normalized ACC (+ STK) to the internal float exactly as ``FloatFormat.encode``:
         RNE on ``M + 1`` bits; a biased exponent above ``exp_max`` saturates to the largest
         magnitude (and raises ``overflow`` if the step's flag predicate holds, exactly when the
         golden ``_round`` records a flag); below the smallest normal the value becomes the
         smallest normal if it is above ``2**(-bias)``, else a zero with the value's sign; an exact
         zero is ``+0``.
``set``  Write a float register from a fixed source (a run-time predicated copy: inference,
         flat channel, sigma not positive).

Micro-instructions have predicates instead of branches, so the number of cycles per channel is a
constant: :attr:`latency`.

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
``i`` is accepted while the engine is idle (``i.ready`` is a register: high when idle); the record
is latched on the transfer edge ``t``. The result is on ``o`` (``o.valid`` high) after edge
``t + latency`` and holds until taken; the engine is idle again (``i.ready`` high) in the cycle
after ``o`` is loaded, so with ``o.ready`` high a new channel can start every ``latency + 1`` cycles
(``cycles_per_channel``). If ``o`` is still full when a result is ready the engine waits. ``latency``
depends on the formats (about ``50 + 6 M`` cycles forward and ``50 + 7 M`` backward; see
:attr:`latency`).

:func:`run_model` executes the same micro-program on Python integers (the register-transfer
model the tests use to sweep thousands of channels quickly); the Amaranth engine is checked
against the golden model directly.
"""

from dataclasses import dataclass, field

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bfp_affine import count_leading_zeros, shift_left, shift_right_jam
from hw.bn_layouts import C_WIDTH, chunks_log2_width, count_width
from hw.formats import BFPFormat, FloatFormat
from sim.golden_bn import C_FRAC_BITS

__all__ = ["ForwardFinalize", "BackwardFinalize", "run_model", "sum_width", "sum_gx_width"]


def sum_width(bfp, max_count):
    """Signed width of an exact channel sum in units ``u``: ``(W-1) + exp_max + count_width + 1``
    (also used for the range ``R_int``, unsigned, and for ``sum g``)."""
    return (bfp.width - 1) + bfp.exp_max + count_width(max_count) + 1


def sum_gx_width(bfp, max_count):
    """Signed width of ``sum g x`` in units ``u**2``: ``(2W-2) + 2 exp_max + count_width + 1``."""
    return (2 * bfp.width - 2) + 2 * bfp.exp_max + count_width(max_count) + 1


# --- micro-code ----------------------------------------------------------------------------------

PREDICATES = ("always", "never", "training", "inference", "flat", "!flat", "snp", "!snp")


@dataclass(frozen=True)
class Ld:
    """ACC <- source * 2**exp, normalized. ``src``: ``"int:<field>"`` (an integer input field,
    exponent = ``exp``), ``"flt:<name>"`` (a float register or input field, exponent = the float's
    LSB exponent + ``exp``), ``"one"`` (1 * 2**exp), ``"q"`` (the quotient in MQ, sets STK),
    ``"acc"`` (ACC itself, keeps STK). ``kl``: subtract ``chunks_log2`` from the exponent."""
    src: str
    exp: int = 0
    kl: bool = False
    neg: bool = False


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


def _steps_cycles(step, k_div):
    if isinstance(step.acc, tuple) and step.acc[0] == "mul":
        return step.acc[1]
    if step.acc == "div":
        return 1 + k_div
    return 1


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

    def __init__(self, bfp, internal, max_count, max_chunks):
        if not isinstance(bfp, BFPFormat):
            raise ValueError(f"bfp must be a hw.formats.BFPFormat, not {bfp!r}")
        if not isinstance(internal, FloatFormat):
            raise ValueError(f"internal must be a hw.formats.FloatFormat, not {internal!r}")
        if isinstance(max_count, bool) or not isinstance(max_count, int) or max_count < 2:
            raise ValueError(f"max_count must be an integer >= 2, not {max_count!r}")
        if isinstance(max_chunks, bool) or not isinstance(max_chunks, int) or not 1 <= max_chunks <= 64 \
                or max_chunks & (max_chunks - 1):
            raise ValueError(f"max_chunks must be a power of two in 1..64, not {max_chunks!r}")
        self.bfp = bfp
        self.internal = internal
        self.max_count = max_count
        self.max_chunks = max_chunks
        self.unit_exp = bfp.lsb_exponent(0)
        self.count_width = count_width(max_count)
        self.kl_width = chunks_log2_width(max_chunks)
        self.kq = internal.frac_bits + 3            # quotient bits
        self.program = self._program()
        self.nw, self.no, self.k = self.sizes()
        self.ew = self._exp_width()
        self.cycles = [_steps_cycles(s, self.kq) for s in self.program]
        self.latency = sum(self.cycles)
        self.cycles_per_channel = self.latency + 1
        self.input_layout = data.StructLayout(self._input_fields())
        self.output_layout = data.StructLayout(self._output_fields())
        super().__init__({
            "i": In(stream.Signature(self.input_layout)),
            "o": Out(stream.Signature(self.output_layout)),
        })

    # -- sizing -----------------------------------------------------------------------------------
    def _term_widths(self):
        """``(no_needs, add_terms, dividends)``: significant widths of values moved into OPR, of
        ADD operands and of dividends."""
        raise NotImplementedError

    def sizes(self):
        """``(NW, NO, k)``: ACC/HOLD width, OPR width, MQ width."""
        M = self.internal.frac_bits
        no_needs, add_terms, dividends = self._term_widths()
        no = max(no_needs + [M + 1, self.count_width])
        k = max(self.kq, C_WIDTH, M + 1, max((s.mq.width for s in self.program
                                               if s.mq is not None and s.mq.src == "const"), default=0))
        nw = max([no + k, M + 3] + [w + 2 for w in add_terms] + [w + 1 for w in dividends])
        return nw, no, k

    def _exp_width(self):
        f = self.internal
        bound = (2 * (f.bias + f.frac_bits + f.exp_max) + 4 * abs(self.unit_exp) + 4 * self.nw
                 + C_FRAC_BITS + 2 * 64 + abs(getattr(self, "eps_log2", 0)) + 64)
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

    # -- hardware ---------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        f = self.internal
        M, bias = f.frac_bits, f.bias
        NW, NO, K, EW, KQ = self.nw, self.no, self.k, self.ew, self.kq
        prog = self.program
        es = signed(EW)

        busy = Signal()
        pc = Signal(range(max(2, len(prog))))
        cnt = Signal(range(max(2, max(self.cycles))))
        inp = Signal(self.input_layout)
        m.d.comb += self.i.ready.eq(~busy)
        with m.If(self.i.valid & ~busy):
            m.d.sync += [inp.eq(self.i.payload), busy.eq(1), pc.eq(0), cnt.eq(0)]

        # Registers of the datapath.
        acc, acc_s, acc_e = Signal(NW), Signal(), Signal(es)
        hold, hold_s, hold_e = Signal(NW), Signal(), Signal(es)
        opr, opr_s, opr_e = Signal(NO), Signal(), Signal(es)
        mq, mq_s, mq_e = Signal(K), Signal(), Signal(es)
        stk = Signal()
        ovf = Signal()
        regs = {name: Signal(f.width, name=f"r_{name}") for name in self.FLOAT_REGS}

        # Predicates.
        training = self._training(inp)
        flat = Signal()
        m.d.comb += flat.eq(self._flat(inp))
        snp = Signal()
        if "sigma" in regs:
            sig = regs["sigma"]
            m.d.comb += snp.eq(sig[-1] | ~sig[M:M + f.exp_bits].any())
        preds = {
            "always": Const(1), "never": Const(0), "training": training, "inference": ~training,
            "flat": flat, "!flat": ~flat, "snp": snp, "!snp": ~snp,
        }

        # Float read ports (LD and MQ).
        float_names = list(self.FLOAT_INPUTS) + list(self.FLOAT_REGS)

        def float_value(name):
            return regs[name] if name in regs else getattr(inp, name)

        ld_names = sorted({s.acc.src for s in prog if isinstance(s.acc, Ld)})
        mq_names = sorted({s.mq.src + (f"={s.mq.value}/{s.mq.width}" if s.mq.src == "const" else "")
                           for s in prog if s.mq is not None})

        # Control signals, decoded from pc.
        c_ld = Signal()
        c_ld_src = Signal(range(max(2, len(ld_names))))
        c_ld_exp = Signal(es)
        c_ld_kl = Signal()
        c_ld_neg = Signal()
        c_mul = Signal()
        c_add = Signal()
        c_div = Signal()
        c_opr = Signal()
        c_mq = Signal()
        c_mq_src = Signal(range(max(2, len(mq_names))))
        c_hold = Signal()
        c_hold_neg = Signal()
        c_rnd = Signal()
        c_rnd_flag = Signal()
        c_rnd_dst = {name: Signal(name=f"c_rnd_{name}") for name in regs}
        c_set = {name: Signal(name=f"c_set_{name}") for name in regs}
        c_set_flag = Signal()
        c_out = Signal()
        c_last = Signal()

        with m.Switch(pc):
            for index, step in enumerate(prog):
                with m.Case(index):
                    cycles = self.cycles[index]
                    m.d.comb += c_last.eq(cnt == cycles - 1 if cycles > 1 else 1)
                    if isinstance(step.acc, Ld):
                        m.d.comb += [c_ld.eq(1), c_ld_src.eq(ld_names.index(step.acc.src)),
                                     c_ld_exp.eq(step.acc.exp), c_ld_kl.eq(step.acc.kl),
                                     c_ld_neg.eq(step.acc.neg)]
                    elif isinstance(step.acc, tuple):
                        m.d.comb += c_mul.eq(1)
                    elif step.acc == "add":
                        m.d.comb += c_add.eq(1)
                    elif step.acc == "div":
                        m.d.comb += c_div.eq(1)
                    if step.opr:
                        m.d.comb += c_opr.eq(1)
                    if step.mq is not None:
                        key = step.mq.src + (f"={step.mq.value}/{step.mq.width}"
                                             if step.mq.src == "const" else "")
                        m.d.comb += [c_mq.eq(1), c_mq_src.eq(mq_names.index(key))]
                    if step.hold is not None:
                        m.d.comb += [c_hold.eq(1), c_hold_neg.eq(step.hold == "neg")]
                    if step.rnd is not None:
                        dst, flag = step.rnd
                        m.d.comb += [c_rnd.eq(1), c_rnd_dst[dst].eq(1), c_rnd_flag.eq(preds[flag])]
                    set_flags = []
                    for dst, pred, flag in step.sets:
                        m.d.comb += c_set[dst].eq(preds[pred])
                        if flag != "never":
                            set_flags.append(preds[flag])
                    if set_flags:
                        m.d.comb += c_set_flag.eq(Cat(*set_flags).any())
                    if step.out:
                        m.d.comb += c_out.eq(1)

        run = busy
        first = cnt == 0

        # --- LD: source select, exponent, normalize ------------------------------------------
        src_mag = Signal(NW)
        src_sign = Signal()
        src_exp = Signal(es)
        with m.Switch(c_ld_src):
            for j, name in enumerate(ld_names):
                with m.Case(j):
                    if name.startswith("int:"):
                        fld = getattr(inp, name[4:])
                        width, is_signed = self.INT_FIELDS[name[4:]]
                        if is_signed:
                            value = fld.as_signed()
                            m.d.comb += [src_sign.eq(value[-1]), src_mag.eq(Mux(value[-1], -value, value))]
                        else:
                            m.d.comb += [src_sign.eq(0), src_mag.eq(fld)]
                        m.d.comb += src_exp.eq(0)
                    elif name.startswith("flt:"):
                        word = float_value(name[4:])
                        e_f = word[M:M + f.exp_bits]
                        m.d.comb += [
                            src_sign.eq(word[-1]),
                            src_mag.eq(Mux(e_f.any(), Cat(word[:M], Const(1, 1)), 0)),
                            src_exp.eq(e_f - (bias + M)),
                        ]
                    elif name == "one":
                        m.d.comb += [src_sign.eq(0), src_mag.eq(1), src_exp.eq(0)]
                    elif name == "q":
                        m.d.comb += [src_sign.eq(mq_s), src_mag.eq(mq[:KQ]), src_exp.eq(mq_e)]
                    elif name == "acc":
                        m.d.comb += [src_sign.eq(acc_s), src_mag.eq(acc), src_exp.eq(acc_e)]
                    else:
                        raise ValueError(f"unknown LD source {name!r}")
        kl = self._chunks_log2(inp)
        ld_exp = Signal(es)
        m.d.comb += ld_exp.eq(src_exp + c_ld_exp - Mux(c_ld_kl, kl, 0))
        lz = count_leading_zeros(m, src_mag, "ld_lz")
        lz_amt = Signal(max(1, NW.bit_length()))
        m.d.comb += lz_amt.eq(lz)
        ld_mag = shift_left(m, src_mag, lz_amt, "ld_norm")
        ld_exp_n = Signal(es)
        m.d.comb += ld_exp_n.eq(Mux(src_mag.any(), ld_exp - lz, ld_exp))

        # --- MUL: one shift-and-add step ------------------------------------------------------
        mul_acc = Signal(NW)
        m.d.comb += mul_acc.eq(Mux(first, 0, Cat(Const(0, 1), acc[:NW - 1])) + Mux(mq[-1], opr, 0))

        # --- ADD: align with jamming, add, magnitude ------------------------------------------
        a_nz, h_nz = acc[-1], hold[-1]
        a_high = Signal()
        m.d.comb += a_high.eq(a_nz & (~h_nz | (acc_e >= hold_e)))
        hi = Mux(a_high, acc, hold)
        lo = Signal(NW)
        m.d.comb += lo.eq(Mux(a_high, hold, acc))
        e_hi = Signal(es)
        m.d.comb += e_hi.eq(Mux(a_high, acc_e, hold_e))
        s_hi = Mux(a_high, acc_s, hold_s)
        s_lo = Mux(a_high, hold_s, acc_s)
        d = Signal(signed(EW + 1))
        m.d.comb += d.eq(Mux(a_high, acc_e - hold_e, hold_e - acc_e) + 1)
        sh_w = max(1, NW.bit_length())
        sh = Signal(sh_w)
        m.d.comb += sh.eq(Mux(d < 0, 0, Mux(d > NW, NW, d[:sh_w])))
        lo_j = shift_right_jam(m, lo, sh, "add_lo")
        hi_1 = Cat(hi[1:], Const(0, 1))
        add_sum = Signal(signed(NW + 2))
        m.d.comb += add_sum.eq(Mux(s_hi ^ s_lo, hi_1 - lo_j, hi_1 + lo_j))
        add_neg = add_sum < 0
        add_mag = Signal(NW)
        m.d.comb += add_mag.eq(Mux(add_neg, -add_sum, add_sum))

        # --- DIV: one restoring step ------------------------------------------------------------
        div_v = Cat(Const(0, NW - NO - 1), opr) if NW - NO - 1 > 0 else opr
        div_t = Signal(signed(NW + 2))
        m.d.comb += div_t.eq(acc - div_v)
        div_ge = div_t >= 0
        div_acc = Signal(NW)
        m.d.comb += div_acc.eq(Mux(div_ge, Cat(Const(0, 1), div_t[:NW - 1]), Cat(Const(0, 1), acc[:NW - 1])))

        # --- RND ---------------------------------------------------------------------------------
        rnd_bits = Signal(f.width)
        rnd_ovf = Signal()
        mant = acc[NW - M - 1:]
        guard = acc[NW - M - 2]
        sticky = acc[:NW - M - 2].any() | stk if NW - M - 2 > 0 else stk
        inc = guard & (sticky | mant[0])
        mant2 = Signal(M + 2)
        m.d.comb += mant2.eq(mant + inc)
        biased = Signal(es)
        m.d.comb += biased.eq(acc_e + (NW - 1 + bias))
        biased2 = Signal(es)
        m.d.comb += biased2.eq(biased + mant2[M + 1])
        nz = acc[-1]
        tiny = biased < 1
        with m.If(~nz):
            m.d.comb += rnd_bits.eq(0)
        with m.Elif(tiny):
            up = (biased == 0) & (acc[:NW - 1].any() | stk)
            m.d.comb += rnd_bits.eq(Cat(Const(0, M), up, Const(0, f.exp_bits - 1), acc_s))
        with m.Elif(biased2 > f.exp_max):
            m.d.comb += [rnd_bits.eq(Cat(Const((1 << M) - 1, M), Const(f.exp_max, f.exp_bits), acc_s)),
                         rnd_ovf.eq(1)]
        with m.Else():
            m.d.comb += rnd_bits.eq(Cat(mant2[:M], biased2[:f.exp_bits], acc_s))

        # --- register updates -------------------------------------------------------------------
        with m.If(run):
            with m.If(c_ld):
                m.d.sync += [acc.eq(ld_mag), acc_s.eq(src_sign ^ c_ld_neg), acc_e.eq(ld_exp_n)]
                with m.If(c_ld_src == (ld_names.index("q") if "q" in ld_names else -1)):
                    m.d.sync += stk.eq(acc.any())
                with m.Elif(c_ld_src != (ld_names.index("acc") if "acc" in ld_names else -1)):
                    m.d.sync += stk.eq(0)
            with m.If(c_mul):
                m.d.sync += [acc.eq(mul_acc), acc_s.eq(opr_s ^ mq_s), acc_e.eq(opr_e + mq_e),
                             mq.eq(Cat(Const(0, 1), mq[:K - 1])), stk.eq(0)]
            with m.If(c_add):
                m.d.sync += [acc.eq(add_mag), acc_s.eq(s_hi ^ add_neg), acc_e.eq(e_hi + 1), stk.eq(0)]
            with m.If(c_div):
                with m.If(first):
                    m.d.sync += [acc.eq(acc[1:]), mq.eq(0), mq_s.eq(acc_s ^ opr_s),
                                 mq_e.eq(acc_e - opr_e + (NW - NO - (KQ - 1))), stk.eq(0)]
                with m.Else():
                    m.d.sync += [acc.eq(div_acc), mq.eq(Cat(div_ge, mq[:K - 1]))]
            with m.If(c_opr):
                m.d.sync += [opr.eq(acc[NW - NO:]), opr_s.eq(acc_s), opr_e.eq(acc_e + (NW - NO))]
            with m.If(c_mq):
                with m.Switch(c_mq_src):
                    for j, key in enumerate(mq_names):
                        with m.Case(j):
                            if key.startswith("flt:"):
                                word = float_value(key[4:])
                                e_f = word[M:M + f.exp_bits]
                                mant_q = Mux(e_f.any(), Cat(word[:M], Const(1, 1)), 0)
                                m.d.sync += [mq.eq(Cat(Const(0, K - M - 1), mant_q)), mq_s.eq(word[-1]),
                                             mq_e.eq(e_f - (bias + M))]
                            elif key == "int:c_scale":
                                m.d.sync += [mq.eq(Cat(Const(0, K - C_WIDTH), inp.c_scale)), mq_s.eq(0),
                                             mq_e.eq(-C_FRAC_BITS)]
                            else:
                                value, width = (int(x) for x in key.split("=")[1].split("/"))
                                m.d.sync += [mq.eq(Const(value << (K - width), K)), mq_s.eq(0), mq_e.eq(0)]
            with m.If(c_hold):
                m.d.sync += [hold.eq(acc), hold_s.eq(acc_s ^ c_hold_neg), hold_e.eq(acc_e)]
            for name, reg in regs.items():
                with m.If(c_rnd & c_rnd_dst[name]):
                    m.d.sync += reg.eq(rnd_bits)
                if name in self.SET_SOURCES:
                    with m.If(c_set[name]):
                        m.d.sync += reg.eq(self._set_value(name, float_value))
            with m.If((c_rnd & c_rnd_flag & rnd_ovf) | c_set_flag):
                m.d.sync += ovf.eq(1)
            # sequencing
            with m.If(c_out):
                with m.If(~self.o.valid | self.o.ready):
                    m.d.sync += [self.o.valid.eq(1), busy.eq(0)]
                    self._drive_output(m, regs, ovf, flat)
            with m.Elif(c_last):
                m.d.sync += [pc.eq(pc + 1), cnt.eq(0)]
            with m.Else():
                m.d.sync += cnt.eq(cnt + 1)
        with m.If(self.i.valid & ~busy):
            m.d.sync += ovf.eq(0)
        with m.If(self.o.valid & self.o.ready & ~(run & c_out)):
            m.d.sync += self.o.valid.eq(0)
        return m

    def _set_value(self, name, float_value):
        f = self.internal
        src = self.SET_SOURCES[name]
        if src == "zero":
            return Const(0, f.width)
        if src == "maxpos":
            return Const(f.pack(0, f.exp_max, (1 << f.frac_bits) - 1), f.width)
        return float_value(src)

    def _drive_output(self, m, regs, ovf, flat):
        raise NotImplementedError

    def _training(self, inp):
        return Const(1)

    def _flat(self, inp):
        return Const(0)

    def _chunks_log2(self, inp):
        return inp.chunks_log2


class ForwardFinalize(_FinalizeEngine):
    """Forward per-channel finalize: ``sim.golden_bn.finalize`` + ``update_running``.

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
        ``sum`` (signed, ``sum_width`` = ``(W-1) + exp_max + count_width + 1`` bits): exact channel
        sum S in units ``u``; ``range`` (unsigned, ``sum_width`` bits): ``R_int = sum_k max_k -
        sum_k min_k`` in units ``u``; ``count`` (``count_width(max_count)`` bits): n;
        ``chunks_log2`` (``chunks_log2_width(max_chunks)`` bits): log2 K; ``c_scale``
        (``C_WIDTH`` = 18 bits, C = c_scale / 2**16); ``training`` (1 bit); ``gamma``, ``beta``,
        ``running_mean``, ``running_sigma`` (internal-float bits).
    o : stream of ``output_layout`` (one record per channel)
        ``mu``, ``sigma``, ``inv``, ``a``, ``b``, ``new_running_mean``, ``new_running_sigma``
        (internal-float bits), ``flat`` (training and R = 0), ``overflow`` (an internal-float
        result saturated, or sigma <= 0: exactly when the golden ``ChannelParams.flags`` is
        non-empty). Inference: ``mu``/``sigma`` are the running statistics, which also pass through
        unchanged as ``new_running_*``; ``flat`` is 0.

    Timing: see the module docstring; ``latency`` cycles from the input transfer to ``o.valid``,
    ``cycles_per_channel = latency + 1`` back to back. ``sum`` and ``range`` may be wider than a
    statistics unit's fields (they are sign- or zero-extended).
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

    def __init__(self, bfp, internal, max_count, max_chunks, *, eps_log2=-16, momentum_shift=3):
        if isinstance(eps_log2, bool) or not isinstance(eps_log2, int) or not -200 <= eps_log2 <= 200:
            raise ValueError(f"eps_log2 must be an integer in -200..200, not {eps_log2!r}")
        if isinstance(momentum_shift, bool) or not isinstance(momentum_shift, int) \
                or not 0 <= momentum_shift <= 16:
            raise ValueError(f"momentum_shift must be an integer in 0..16, not {momentum_shift!r}")
        self.eps_log2 = eps_log2
        self.momentum_shift = momentum_shift
        self.sum_width = sum_width(bfp, max_count)
        self.range_width = self.sum_width
        self.INT_FIELDS = {
            "sum": (self.sum_width, True), "range": (self.range_width, False),
            "count": (count_width(max_count), False),
        }
        super().__init__(bfp, internal, max_count, max_chunks)

    def _input_fields(self):
        f = self.internal
        return {
            "sum": signed(self.sum_width),
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
        return no_needs, add_terms, dividends

    def _program(self):
        ue, s = self.unit_exp, self.momentum_shift
        P = [
            # mu = rnd(S u / n)
            Step(acc=Ld("int:count")),
            Step(opr=True, acc=Ld("int:sum", exp=ue)),
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

    def _drive_output(self, m, regs, ovf, flat):
        o = self.o.payload
        m.d.sync += [getattr(o, name).eq(regs[name]) for name in self.OUTPUT_FLOATS]
        m.d.sync += [o.flat.eq(flat), o.overflow.eq(ovf)]


class BackwardFinalize(_FinalizeEngine):
    """Backward per-channel finalize: ``sim.golden_bn.backward_finalize``.

    Parameters: ``bfp``, ``internal``, ``max_count``, ``max_chunks`` as :class:`ForwardFinalize`.

    Ports
    -----
    i : stream of ``input_layout``
        ``sum_g`` (signed, ``sum_width`` bits, units ``u``), ``sum_gx`` (signed, ``sum_gx_width``
        = ``(2W-2) + 2 exp_max + count_width + 1`` bits, units ``u**2``), ``count`` n,
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

    def __init__(self, bfp, internal, max_count, max_chunks):
        self.sum_width = sum_width(bfp, max_count)
        self.sum_gx_width = sum_gx_width(bfp, max_count)
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
        return no_needs, add_terms, dividends

    def _program(self):
        ue, M = self.unit_exp, self.internal.frac_bits
        mb = M + 1
        return [
            # gbar = rnd(sum_g u / n)
            Step(acc=Ld("int:count")),
            Step(opr=True, acc=Ld("int:sum_g", exp=ue)),
            Step(acc="div"),
            Step(acc=Ld("q")),
            # dbeta = rnd(sum_g u); Y = inv mu sum_g u
            Step(rnd=("gbar", "always"), acc=Ld("int:sum_g", exp=ue)),
            Step(rnd=("dbeta", "always"), opr=True, mq=Mq("flt:mu")),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc")),
            Step(opr=True, mq=Mq("flt:inv")),
            Step(acc=("mul", mb)),
            Step(acc=Ld("acc")),
            # X = inv sum_gx u**2; dgamma = rnd(X - Y)
            Step(hold="neg", acc=Ld("int:sum_gx", exp=2 * ue)),
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

    def _drive_output(self, m, regs, ovf, flat):
        o = self.o.payload
        m.d.sync += [getattr(o, name).eq(regs[name]) for name in self.OUTPUT_FLOATS]
        m.d.sync += o.overflow.eq(ovf)


# --- register-transfer model (plain Python) ------------------------------------------------------

def run_model(engine, record, trace=None):
    """Execute ``engine``'s micro-program on Python integers. ``record``: dict of input field
    values (signed fields as Python ints). Returns the output record as a dict. Asserts every
    width and exactness assumption of the hardware on the way."""
    f = engine.internal
    M, bias = f.frac_bits, f.bias
    NW, NO, K, KQ = engine.nw, engine.no, engine.k, engine.kq
    st = dict(acc=0, acc_s=0, acc_e=0, hold=0, hold_s=0, hold_e=0, opr=0, opr_s=0, opr_e=0,
              mq=0, mq_s=0, mq_e=0, stk=0, ovf=0)
    regs = {name: 0 for name in engine.FLOAT_REGS}
    training = record.get("training", 1)
    flat = int(bool(training) and record.get("range", 1) == 0)

    def fval(name):
        return regs[name] if name in regs else record[name]

    def decode(word):
        s, e, fr = f.unpack(word)
        return s, ((1 << M) | fr) if e else 0, e - bias - M

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

    for step in engine.program:
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
            e += ld.exp - (record["chunks_log2"] if ld.kl else 0)
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
            sh = min(max(dd + 1, 0), NW)
            lo_j = (lo >> sh) | int(lo & ((1 << sh) - 1) != 0)
            total = (hi >> 1) - lo_j if s_hi != s_lo else (hi >> 1) + lo_j
            neg = total < 0
            assert abs(total) < 1 << NW
            new.update(acc=abs(total), acc_s=s_hi ^ neg, acc_e=e_hi + 1, stk=0)
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
            new.update(acc=r, mq=q, mq_s=st["acc_s"] ^ st["opr_s"],
                       mq_e=st["acc_e"] - st["opr_e"] + (NW - NO - (KQ - 1)), stk=0)
        if step.opr:
            assert st["acc"] & ((1 << (NW - NO)) - 1) == 0, "OPR load inexact"
            new.update(opr=st["acc"] >> (NW - NO), opr_s=st["acc_s"], opr_e=st["acc_e"] + NW - NO)
        if step.mq is not None:
            src = step.mq.src
            if src.startswith("flt:"):
                sgn, mag, e = decode(fval(src[4:]))
                new.update(mq=mag << (K - M - 1), mq_s=sgn, mq_e=e)
            elif src == "int:c_scale":
                new.update(mq=record["c_scale"] << (K - C_WIDTH), mq_s=0, mq_e=-C_FRAC_BITS)
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
