"""The BFP alignment shifter: one block of exact elements (or packed floats) -> one BFP block.

Two units live here:

:class:`BlockQuantizer`
    The reusable core. Its input is a block of *exact elements* ``(sign, mag, exp)`` with value
    ``(-1)**sign * mag * 2**(exp + exp_offset)``; its output is one flagged BFP block. It implements
    :func:`sim.model.golden.quantize_block` bit for bit. The Range-BN units (``y = a*x + b``, ``dx``) feed
    it their wide (rounded-to-odd) results, so the magnitude width, the exponent width and
    signedness and the exponent offset are parameters.

:class:`BFPShifter`
    Packed floats in, BFP block out: a combinational float decoder in front of a
    :class:`BlockQuantizer`. Implements :func:`sim.model.golden.float_to_bfp` bit for bit.

Both are pipelined stream components (``i`` in, ``o`` out) that sustain one block per cycle.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.checks import check_instance, check_int
from hw.formats import BFPFormat, FloatFormat, float_format, flags_layout

__all__ = ["BlockQuantizer", "BFPShifter", "MAX_MAG_WIDTH", "MAX_EXP_WIDTH", "THERMOMETER_KEYS"]

#: Parameter limits of :class:`BlockQuantizer`.
MAX_MAG_WIDTH = 128
MAX_EXP_WIDTH = 32

#: Stage 1 takes the block maximum of the lane keys with thermometer codes when every key is below
#: this bound (at most 63 thermometer bits per lane: float inputs with exponent fields of up to 6
#: bits, normalized), else with a comparator tree (the Range-BN cores' wide keys).
THERMOMETER_KEYS = 64

#: Thermometer decoding: runs ORed before the stage 1 register (two LUT4 levels); stage 2 ORs at
#: most ``THERMOMETER_KEYS // 2 // _DECODE_GROUP`` = 4 such parts per bit (one LUT4 level).
_DECODE_GROUP = 8

#: Comparator variant: lanes (or partial maxima) reduced per register stage, two comparator levels.
_TREE_GROUP = 4


# Lint-clean arithmetic. Amaranth's Verilog path trims constant operands to their shortest width,
# and Verilator -Wall wants both operands of an operator equally wide (or one of them 1 bit wide) and
# every bit of every intermediate result used. The helpers below keep to that: constants in
# comparisons and additions always have their top bit set at the width of the other operand.

def _gt_const(value, c):
    """``value > c`` for an unsigned ``value`` and an integer ``c >= 0``."""
    n = len(value)
    if c >= (1 << n) - 1:
        return Const(0, 1)
    k = c.bit_length()
    if k == 0:
        return value.any()
    if c == (1 << k) - 1:                   # no k-bit value exceeds c
        return value[k:].any()
    low = value[:k] > c                     # ``c`` is exactly k bits wide
    return value[k:].any() | low if k < n else low


def _gt_const_logic(value, c):
    """``value > c`` (unsigned ``value``, integer ``0 <= c < 2**len(value)``) as AND/OR gates, LSB
    first: no comparator cell, so no carry chain, and LUT mapping is free to merge it with the
    logic around it."""
    result = Const(0, 1)
    for i in range(len(value)):
        result = value[i] & result if (c >> i) & 1 else value[i] | result
    return result


def _add_const(m, value, k, name):
    """``value + k`` as a signed signal one bit wider than the unsigned ``value`` (w bits). The
    caller guarantees ``|k| <= 2**(w-1)`` and ``value + k`` in ``[-2**w, 2**w)``."""
    w = len(value)
    result = Signal(signed(w + 1), name=name)
    if k == 0:
        m.d.comb += result.eq(value)
        return result
    assert abs(k) <= 1 << (w - 1)
    total = Signal(w + 1, name=f"{name}_biased")
    if k < 0:
        m.d.comb += total.eq(value + Const((1 << w) + k, w))   # value + k + 2**w >= 0
    else:
        m.d.comb += total.eq(value - Const((1 << w) - k, w))   # value + k - 2**w < 0
    # Flipping bit w adds 2**w modulo 2**(w+1).
    m.d.comb += result.eq(Cat(total[:w], ~total[w]))
    return result


def _max_tree(values):
    """Maximum of unsigned values of equal width: a balanced comparator tree."""
    values = list(values)
    while len(values) > 1:
        paired = [Mux(a > b, a, b) for a, b in zip(values[0::2], values[1::2])]
        if len(values) % 2:
            paired.append(values[-1])
        values = paired
    return values[0]


def _shift_right_window(m, value, amount, out_width, name):
    """``(value >> amount)[:out_width]`` for unsigned ``value`` and ``amount``, plus two 1-bit
    ORs: ``below``, of the bits shifted out at the bottom (the bits of ``value`` below position
    ``amount``), and ``above``, of the bits that land at ``out_width`` or higher. Returns
    ``(out, below, above)``.

    A logarithmic shifter whose stages run from the largest step down, each keeping only the bits
    that the smaller steps and the output still read (``out_width + step - 1`` after the stage of
    ``step``): its width shrinks towards the output instead of staying ``len(value)`` through every
    stage. A bit dropped at the top of a stage would land at ``out_width`` or higher whatever the
    smaller steps do, so ``above`` is the OR of the bits each stage drops at the top; ``below`` is
    the OR of the bits each taken step drops at the bottom."""
    cur = Value.cast(value)
    below, above = [], []
    for j in reversed(range(len(amount))):
        step = 1 << j
        keep = min(out_width + step - 1, len(cur))
        moved = cur[step:step + keep] if step < len(cur) else Const(0, keep)
        if len(moved) < keep:
            moved = Cat(moved, Const(0, keep - len(moved)))
        out_moved = cur[step + keep:] if step + keep < len(cur) else None
        out_stay = cur[keep:] if keep < len(cur) else None
        if out_moved is not None or out_stay is not None:
            above.append(Mux(amount[j], out_moved.any() if out_moved is not None else Const(0, 1),
                             out_stay.any() if out_stay is not None else Const(0, 1)))
        below.append(amount[j] & cur[:min(step, len(cur))].any())
        stage = Signal(keep, name=f"{name}_s{j}")
        m.d.comb += stage.eq(Mux(amount[j], moved, cur[:keep]))
        cur = stage
    if len(cur) > out_width:
        above.append(cur[out_width:].any())
        cur = cur[:out_width]
    elif len(cur) < out_width:
        cur = Cat(cur, Const(0, out_width - len(cur)))
    return cur, _any(below), _any(above)


def _any(bits):
    """OR of a list of 1-bit values (a constant 0 for an empty list)."""
    return Cat(*bits).any() if bits else Const(0, 1)


def _runs(values, bit):
    """Maximal runs ``(a, c)`` of consecutive indices ``t`` where bit ``bit`` of ``values[t]`` is set."""
    runs, t, n = [], 0, len(values)
    while t < n:
        if (values[t] >> bit) & 1:
            a = t
            while t + 1 < n and (values[t + 1] >> bit) & 1:
                t += 1
            runs.append((a, t))
        t += 1
    return runs


class _ThermometerDecoder:
    """Binary values ``f(t)`` from the thermometer code ``therm`` of ``t`` (``therm[j] = t > j``,
    ``0 <= t < n``), split across a register. Bit ``b`` of ``f(t)`` is an OR over the runs
    ``a..c`` of ``t`` where it is set, a run being ``therm[a - 1] & ~therm[c]`` (a side is omitted
    at the ends): two LUT inputs per run, no carry chain. Before the register, runs are ORed in
    groups of :data:`_DECODE_GROUP` (the *parts*, shared between bits and values with identical
    groups); after it, :meth:`finish` ORs a bit's parts."""

    def __init__(self, therm, n):
        self._therm, self._n = therm, n
        self.parts = []             # 1-bit values to register
        self._index = {}            # tuple of runs -> index into ``parts``

    def _term(self, a, c):
        ends = ([self._therm[a - 1]] if a > 0 else []) + ([~self._therm[c]] if c < self._n - 1 else [])
        return ends[0] & ends[1] if len(ends) == 2 else ends[0]

    def plan(self, values, width):
        """Per bit of ``values[t] mod 2**width``: ``0``, ``1`` (constant) or a list of part indices."""
        assert len(values) == self._n
        values = [v % (1 << width) for v in values]
        plan = []
        for b in range(width):
            runs = _runs(values, b)
            if not runs or runs == [(0, self._n - 1)]:
                plan.append(1 if runs else 0)
                continue
            indices = []
            for i in range(0, len(runs), _DECODE_GROUP):
                group = tuple(runs[i:i + _DECODE_GROUP])
                if group not in self._index:
                    self._index[group] = len(self.parts)
                    self.parts.append(_any([self._term(a, c) for a, c in group]))
                indices.append(self._index[group])
            plan.append(indices)
        return plan

    @staticmethod
    def finish(parts, plan):
        """The value of a :meth:`plan` from the registered ``parts``."""
        return Cat(*(Const(bit, 1) if isinstance(bit, int) else _any([parts[i] for i in bit])
                     for bit in plan))


class _Thermometer:
    """Thermometer code of the maximum of unsigned ``keys`` (each at most ``key_max``):
    ``therm[j]`` (a ``Signal``, built on first use) is ``max(keys) > j``. A key is split at its
    top bit ``h`` (of ``key_max``) into ``top`` and ``rest``, so that each lane needs only the
    comparisons ``rest > i`` (``2**h - 1`` of them, LUT-sized for ``h <= 4``), shared by two
    thermometer bits: ``max > i`` is ``any(top) | any(rest > i)`` and ``max > 2**h + i`` is
    ``any(top & (rest > i))``. (The plain form, an OR of ``key > j`` per bit, maps to about the
    same LUT count but made YoWASP Yosys' ABC9 fail in the ULX3S board build.)"""

    def __init__(self, m, keys, key_max):
        self._m, self._bits, self._rest_gt = m, {}, {}
        h = key_max.bit_length() - 1
        self._half = 1 << h
        self._top = [key[h:].any() for key in keys]    # bits above h are 0
        self._rest = [key[:h] for key in keys]
        self._any_top = Signal(name="therm_top")
        m.d.comb += self._any_top.eq(_any(self._top))

    def _gt(self, k, i):
        if (k, i) not in self._rest_gt:
            bit = Signal(name=f"rest{k}_gt{i}")
            self._m.d.comb += bit.eq(_gt_const_logic(self._rest[k], i))
            self._rest_gt[k, i] = bit
        return self._rest_gt[k, i]

    def __getitem__(self, j):
        half, lanes = self._half, range(len(self._rest))
        if j == half - 1:
            return self._any_top
        if j not in self._bits:
            bit = Signal(name=f"therm{j}")
            if j < half:
                value = self._any_top | _any([self._gt(k, j) for k in lanes])
            else:
                value = _any([self._top[k] & self._gt(k, j - half) for k in lanes])
            self._m.d.comb += bit.eq(value)
            self._bits[j] = bit
        return self._bits[j]


def _leading_one(value, width):
    """Index of the most significant set bit of ``value`` (0 when ``value`` is 0), ``width`` bits."""
    result = Const(0, width)
    for k in range(1, len(value)):
        result = Mux(value[k], Const(k, width), result)
    return result


class _Stage:
    """One register stage of the pipeline: ``valid`` and a payload ``data``; ``ready`` says the
    register loads this cycle (it is empty, or the next register loads and so takes its content)."""

    def __init__(self, name, layout):
        self.valid = Signal(name=f"{name}_valid")
        self.data = Signal(layout, name=f"{name}_data", reset_less=True)
        self.ready = Signal(name=f"{name}_ready")


class BlockQuantizer(wiring.Component):
    """Round a block of exact elements into one BFP block (``sim.model.golden.quantize_block``).

    Parameters
    ----------
    bfp : BFPFormat
        Output format: ``bfp.block`` lanes of ``bfp.width``-bit codes, ``bfp.exp_bits`` exponent.
    mag_width : int
        Bits of each lane's unsigned magnitude ``mag`` (1..128).
    exp_width : int
        Bits of each lane's exponent field ``exp`` (1..32; at least 2 when signed).
    exp_signed : bool
        Whether ``exp`` is two's complement (default) or unsigned.
    exp_offset : int
        Lane value is ``(-1)**sign * mag * 2**(exp + exp_offset)``.
    normalized : bool
        Promise that every lane's ``mag`` is either 0 or has its top bit set. Saves one
        leading-one detector per lane; a lane whose top bit is clear must then be exactly 0.
    zeros_at_min_exp : bool
        Promise that every lane whose ``mag`` is 0 has the smallest ``exp`` (0 unsigned,
        ``-2**(exp_width-1)`` signed), as a decoded float's zero does. With ``normalized``, a
        lane's max-exponent key is then its exponent alone: the test of ``mag`` leaves the
        stage 1 critical path. Otherwise it changes nothing.

    Ports
    -----
    i : stream of ``input_layout``: ``lanes`` (array of ``element_layout`` = ``mag``, ``exp``,
        ``sign``; lane 0 first) and ``flags`` (``hw.formats.FLAG_NAMES``), ORed into the output
        flags (upstream ``special`` / ``flush``, or an upstream ``sat``).
    o : stream of ``bfp.flagged_block_layout()``.

    Arithmetic
    ----------
    Shared exponent ``E`` = max over non-zero lanes of ``floor(log2 |v|) + bias``, clamped to
    ``[1, exp_max]``; all-zero block: ``E = 0`` and all codes 0. Each magnitude is shifted to the
    code LSB ``2**(E - bias - (W - 2))`` with guard and sticky bits and rounded to nearest, ties to
    even; a result above ``2**(W-1) - 1`` saturates and raises ``sat``. Codes are two's
    complement and never ``-2**(W-1)`` or negative zero.

    Timing
    ------
    Latency: ``latency`` cycles, edge to edge: ``LATENCY`` = 3 register stages (1: block
    maximum and shared exponent; 2: alignment shift with guard and sticky; 3: round, saturate,
    negate), plus ``extra_stages`` in the comparator variant (below; 0 in the thermometer
    variant): ``pre_stages`` in front of stage 1 and stage R between stages 1 and 2, which
    registers each lane's shift amount ``r = P - u`` (a subtraction and a clamp), so that stage 2
    is the shifter alone. A block taken from ``i`` at clock edge ``t`` is on ``o`` (``o.valid``
    high) from edge ``t + latency - 1`` and leaves at edge ``t + latency`` when ``o.ready`` is
    high.

    The block maximum has two implementations, chosen by the key range (``key_max``, the largest
    lane key ``u`` or ``u + msb(mag)``; attribute ``thermometer``):

    * ``key_max >= THERMOMETER_KEYS`` (64; wide keys such as the Range-BN cores'): comparators,
      pipelined. Pre-stage K registers the lane keys (leading-one detector and adder). The
      clamp of the shared exponent to ``[1, exp_max]`` is monotonic and so commutes with the
      maximum: pre-stage C registers every lane key clamped on its own (comparisons with
      constants and an ``exp_bits``-wide adder); each tree stage registers the maxima of groups
      of four (two levels of ``exp_bits``-wide comparators and multiplexers); stage 1 takes the
      maximum of the last (at most four) partial maxima (the lanes carry ``u - c_p``, computed
      in pre-stage K, so that ``r = P - u = E - (u - c_p)`` needs no adder before stage R).
      ``tree_stages`` = ``max(ceil(log4 B) - 1, 0)`` (none for ``B <= 4``: stage 1 takes the
      maximum of the clamped lane keys themselves), ``pre_stages = 2 + tree_stages``: 2 for
      ``B <= 4``, 3 for ``B <= 16``, 4 for ``B <= 64``; with stage R, ``extra_stages`` = 3
      (``latency`` 6) for ``B <= 4``, 4 (``latency`` 7) for ``B <= 16`` and 5 (``latency`` 8) for
      ``B <= 64``.
    * ``key_max < THERMOMETER_KEYS`` (float inputs with exponent fields of up to 6 bits, e.g.
      the shifter's fp10): no pre-stages; the maximum as a thermometer code, ``therm[j] = max
      key > j`` = OR over the lanes of ``key > j`` (per lane ``key_max`` comparisons with
      constants, gates only; OR trees of ``B`` inputs), about four LUT4 levels. Every bit of
      ``E`` and of ``P`` (clamp included) is a function of ``max key`` known at elaboration: an
      OR over its runs of ``therm[a - 1] & ~therm[c]``. Runs are ORed in groups of eight (two
      LUT levels) into the stage 1 register; stage 2 ORs a bit's groups (at most four, one LUT
      level) before the alignment subtraction. Costs area (B16 fp10: about 470 more iCE40
      LUT4) for a stage 1 of about 6 LUT levels instead of about 30.

    Both variants detect the rounding overflow in stage 3 without the rounding carry (``q`` all
    ones and rounding up).

    The comparator variant is kept for wide keys because a thermometer code grows with
    ``key_max``. (Its extra stages changed the Range-BN cores' netlists: fault-injection results
    that reference them by line predate this.) W=8 B=16 M=12 ``BFPAffine``
    (``ln_part_forward_affine``), ``python -m gen area``: ECP5 about 109 MHz.
    Throughput: one block per cycle while ``o.ready`` is high (N blocks in N + ``latency``
    cycles).
    Back-pressure: ``o.valid`` never depends on ``o.ready``, and ``o.payload`` / ``o.valid``
    hold while ``o.valid & ~o.ready``. Thermometer variant: each register loads when it is
    empty or when the next register loads, so ``i.ready`` is combinational from ``o.ready`` and
    the stage valid bits (a bubble anywhere lets ``i`` advance even while ``o`` stalls).
    Comparator variant: one enable for all its ``latency`` registers, ``o.ready | ~o.valid``,
    which is also ``i.ready``: the pipeline advances as a whole and bubbles are not squeezed out
    while ``o`` stalls (a chain of per-stage enables through the seven or more stages limited
    the clock).
    """

    #: Register stages from ``i`` to ``o`` of the thermometer variant; ``latency`` (per instance)
    #: adds the comparator variant's ``pre_stages``.
    LATENCY = 3

    def __init__(self, bfp, mag_width, exp_width, *, exp_signed=True, exp_offset=0, normalized=False,
                 zeros_at_min_exp=False):
        check_instance("bfp", bfp, BFPFormat)
        check_int("magnitude width", mag_width, 1, MAX_MAG_WIDTH)
        check_int("exponent width", exp_width, 2 if exp_signed else 1, MAX_EXP_WIDTH)
        check_int("exponent offset", exp_offset)
        self.bfp = bfp
        self.mag_width = mag_width
        self.exp_width = exp_width
        self.exp_signed = bool(exp_signed)
        self.exp_offset = exp_offset
        self.normalized = bool(normalized)
        self.zeros_at_min_exp = bool(zeros_at_min_exp)

        exp_shape = signed(exp_width) if exp_signed else unsigned(exp_width)
        self.element_layout = data.StructLayout({"mag": mag_width, "exp": exp_shape, "sign": 1})
        self.input_layout = data.StructLayout({
            "lanes": data.ArrayLayout(self.element_layout, bfp.block),
            "flags": flags_layout(),
        })
        self.output_layout = bfp.flagged_block_layout()
        self._plan()
        super().__init__({
            "i": In(stream.Signature(self.input_layout)),
            "o": Out(stream.Signature(self.output_layout)),
        })

    def exact_element(self, sign, mag, exp):
        """The golden-model element ``(sign, mag, exp)`` of one lane's field values."""
        return (sign, mag, exp + self.exp_offset)

    # Static range analysis: sizes the comparator tree, the offset adders and the shifter.
    def _plan(self):
        bfp, mw, ew = self.bfp, self.mag_width, self.exp_width
        W = bfp.width
        self.exp_lo = -(1 << (ew - 1)) if self.exp_signed else 0
        self.exp_hi = (1 << (ew - 1)) - 1 if self.exp_signed else (1 << ew) - 1
        # u = exp - exp_lo is the lane exponent made unsigned (for a signed field: its top bit
        # inverted). Comparator key of a non-zero lane: u (normalized) or u + msb(mag); a zero
        # lane has key 0. floor(log2 |v|) + bias = key + k_shared.
        u_max = self.exp_hi - self.exp_lo
        msb_lo = mw - 1 if self.normalized else 0
        self.key_max = u_max + (0 if self.normalized else mw - 1)
        self.k_shared = (self.exp_lo + self.exp_offset + (mw - 1 if self.normalized else 0)
                         + bfp.bias)
        raw_lo, raw_hi = self.k_shared, self.key_max + self.k_shared
        shared_hi = min(max(raw_hi, 1), bfp.exp_max)
        # Right shift of a lane to the code LSB: sh = E - k_shift - exp.
        k_shift = bfp.bias + (W - 2) + self.exp_offset
        sh_min = msb_lo - (W - 2)
        if raw_hi > bfp.exp_max:            # E may clamp below a lane's own exponent
            sh_min = min(sh_min, bfp.exp_max - k_shift - self.exp_hi)
        sh_max = shared_hi - k_shift - self.exp_lo
        # Left shifts up to ``lead`` bits are exact; a non-zero lane shifted further left always
        # saturates (it is at least 2**(W-1)). The shifter input is mag * 2**(lead + 1) (one
        # zero bit below the LSB becomes the guard bit) and shifts right by r = sh + lead.
        self.lead = min(max(-sh_min, 0), W - 1)
        self.x_width = mw + self.lead
        self.r_cap = min(max(sh_max + self.lead, 0), self.x_width + 1)
        # r = P - u with P = E + c_p, computed per block.
        self.c_p = self.lead - k_shift - self.exp_lo
        # Width of the comparator keys: wide enough for the keys, for both offsets added to the
        # maximum key, and for the clamp comparisons to use every bit.
        needed = [self.key_max.bit_length(), bfp.exp_bits + 1]
        if not self.normalized:
            needed.append(max(ew, (mw - 1).bit_length()) + 1)
        for k in (self.k_shared, self.k_shared + self.c_p):
            needed.append(abs(k).bit_length() + 1)
            needed.append((self.key_max + max(k, 0)).bit_length())
        self.key_width = max(needed)
        # Block maximum: thermometer code when the keys are narrow, comparator tree otherwise
        # (see Timing in the class docstring).
        self.thermometer = self.key_max < THERMOMETER_KEYS
        # Comparator variant: register stages in front of stage 1 (see Timing in the class
        # docstring): the lane keys, the clamped lane exponents, then these reduced in groups of
        # ``_TREE_GROUP`` per stage until at most ``_TREE_GROUP`` partial maxima are left for
        # stage 1.
        self.tree_stages = 0
        if not self.thermometer:
            n = bfp.block
            while n > _TREE_GROUP:
                n = -(-n // _TREE_GROUP)
                self.tree_stages += 1
        self.pre_stages = 0 if self.thermometer else 2 + self.tree_stages
        # ... and stage R (the lane shift amounts) between stages 1 and 2.
        self.extra_stages = 0 if self.thermometer else self.pre_stages + 1
        self.latency = self.LATENCY + self.extra_stages

    def _clamp_key(self, m, key, name):
        """Shared exponent a lane key alone would give: ``min(max(key + k_shared, 1), exp_max)``
        (``exp_bits`` bits). The bounds are comparisons of ``key`` with constants (gates, no
        carry chain); only the low ``exp_bits`` bits of ``key + k_shared`` are added."""
        bfp, kw, eb, ks = self.bfp, self.key_width, self.bfp.exp_bits, self.k_shared

        def gt(c):                                  # key > c
            if c < 0:
                return Const(1, 1)
            if c >= (1 << kw) - 1:
                return Const(0, 1)
            return _gt_const_logic(key, c)

        positive = Signal(name=f"{name}_pos")       # key + k_shared >= 1
        clamp_hi = Signal(name=f"{name}_hi")        # key + k_shared > exp_max
        m.d.comb += [positive.eq(gt(-ks)), clamp_hi.eq(gt(bfp.exp_max - ks))]
        c = ks % (1 << eb)
        low = Signal(eb, name=f"{name}_low")
        if c == 0:
            m.d.comb += low.eq(key[:eb])
        elif c >> (eb - 1):                         # constant operands keep their top bit set
            m.d.comb += low.eq(key[:eb] + Const(c, eb))
        else:
            m.d.comb += low.eq(key[:eb] - Const((1 << eb) - c, eb))
        e = Signal(eb, name=name)
        m.d.comb += e.eq(Mux(positive, Mux(clamp_hi, bfp.exp_max, low), 1))
        return e

    def elaborate(self, platform):
        m = Module()
        bfp, B, W = self.bfp, self.bfp.block, self.bfp.width
        mw, ew, kw = self.mag_width, self.exp_width, self.key_width
        fl = flags_layout()

        # --- stage 1: keys, block maximum key, shared exponent and shift base P ---------------
        def unsigned_exp(exp):
            return Cat(exp[:-1], ~exp[-1]) if self.exp_signed else exp

        keys, nonzero = [], []
        for k in range(B):
            lane = self.i.payload.lanes[k]
            nz = lane.mag[-1] if self.normalized else lane.mag.any()
            key = Signal(kw, name=f"key{k}")
            if self.normalized and self.zeros_at_min_exp:    # a zero lane's exponent is 0 already
                m.d.comb += key.eq(unsigned_exp(lane.exp))
            elif self.normalized:
                m.d.comb += key.eq(Mux(nz, unsigned_exp(lane.exp), Const(0, kw)))
            else:
                m.d.comb += key.eq(Mux(nz, unsigned_exp(lane.exp), Const(0, kw - 1))
                                   + _leading_one(lane.mag, kw - 1))
            keys.append(key)
            nonzero.append(nz)
        if self.thermometer:
            # Block maximum as a thermometer code: therm[j] = max key > j is an OR over the lanes
            # of key > j; shared exponent and P are decoded from it directly (clamp included).
            any_nonzero = Signal()
            m.d.comb += any_nonzero.eq(Cat(*nonzero).any())
            clamped = [min(max(t + self.k_shared, 1), bfp.exp_max) for t in range(self.key_max + 1)]
            p_values = [e + self.c_p for e in clamped]
            p_width = max(ew + 1, *((v if v >= 0 else -v - 1).bit_length() + 1 for v in p_values))
            decoder = _ThermometerDecoder(_Thermometer(m, keys, self.key_max), self.key_max + 1)
            shared_plan = decoder.plan(clamped, bfp.exp_bits)
            p_plan = decoder.plan(p_values, p_width)
            parts = Signal(len(decoder.parts), name="parts")
            m.d.comb += parts.eq(Cat(*decoder.parts))
            s1_fields = {"parts": len(parts), "nonzero": 1}
        else:
            # Pre-stage K registers the lane keys, pre-stage C the clamped keys; each tree stage
            # reduces groups of ``_TREE_GROUP``; stage 1 takes the maximum of what is left. The
            # clamp to [1, exp_max] is monotonic, so it commutes with the maximum and is applied
            # per lane, where it needs no carry chain wider than ``exp_bits``.
            eb = bfp.exp_bits
            # The lanes carry v = u - c_p instead of u (the shift amount is r = P - u =
            # shared - v), so that stage 1 needs no adder after the maximum.
            u_max = (1 << ew) - 1
            vw = max(ew, abs(self.c_p).bit_length() + 1, (u_max - self.c_p).bit_length())
            v_values = []
            for k in range(B):
                u_w = Signal(vw, name=f"u{k}")
                m.d.comb += u_w.eq(unsigned_exp(self.i.payload.lanes[k].exp))
                v_values.append(_add_const(m, u_w, -self.c_p, f"v{k}"))
            pre_lanes = data.ArrayLayout(data.StructLayout({"mag": mw, "u": signed(vw + 1),
                                                            "sign": 1}), B)
            sk = _Stage("sk", data.StructLayout({
                "lanes": pre_lanes, "key": data.ArrayLayout(kw, B), "nonzero": B, "flags": fl,
            }))
            pre = [sk]
            with m.If(sk.ready):
                m.d.sync += [sk.valid.eq(self.i.valid), sk.data.flags.eq(self.i.payload.flags)]
                for k in range(B):
                    lane = self.i.payload.lanes[k]
                    m.d.sync += [
                        sk.data.lanes[k].mag.eq(lane.mag),
                        sk.data.lanes[k].u.eq(v_values[k]),
                        sk.data.lanes[k].sign.eq(lane.sign),
                        sk.data.key[k].eq(keys[k]),
                        sk.data.nonzero[k].eq(nonzero[k]),
                    ]
            clamped = [self._clamp_key(m, sk.data.key[k], f"e{k}") for k in range(B)]
            sc = _Stage("sc", data.StructLayout({
                "lanes": pre_lanes, "e": data.ArrayLayout(eb, B), "nonzero": B, "flags": fl,
            }))
            with m.If(sc.ready):
                m.d.sync += [
                    sc.valid.eq(sk.valid),
                    sc.data.flags.eq(sk.data.flags),
                    sc.data.lanes.eq(sk.data.lanes),
                    sc.data.nonzero.eq(sk.data.nonzero),
                ]
                for k in range(B):
                    m.d.sync += sc.data.e[k].eq(clamped[k])
            pre.append(sc)
            values = [sc.data.e[k] for k in range(B)]
            flags_nz = [sc.data.nonzero[k] for k in range(B)]
            for t in range(self.tree_stages):
                starts = range(0, len(values), _TREE_GROUP)
                st = _Stage(f"sm{t}", data.StructLayout({
                    "lanes": pre_lanes, "emax": data.ArrayLayout(eb, len(starts)),
                    "nonzero": len(starts), "flags": fl,
                }))
                prev = pre[-1]
                with m.If(st.ready):
                    m.d.sync += [
                        st.valid.eq(prev.valid),
                        st.data.flags.eq(prev.data.flags),
                        st.data.lanes.eq(prev.data.lanes),
                    ]
                    for g, a in enumerate(starts):
                        m.d.sync += [
                            st.data.emax[g].eq(_max_tree(values[a:a + _TREE_GROUP])),
                            st.data.nonzero[g].eq(_any(flags_nz[a:a + _TREE_GROUP])),
                        ]
                values = [st.data.emax[g] for g in range(len(starts))]
                flags_nz = [st.data.nonzero[g] for g in range(len(starts))]
                pre.append(st)
            shared = Signal(eb, name="shared")
            any_nonzero = Signal()
            m.d.comb += [shared.eq(_max_tree(values)), any_nonzero.eq(_any(flags_nz))]
            # Stage 1 holds ``shared`` as ``p`` (the lanes hold u - c_p).
            p_value = shared
            p_width = max(eb + 1, vw + 1)
            s1_fields = {"p": signed(p_width), "exponent": bfp.exp_bits}

        s1 = _Stage("s1", data.StructLayout({
            "lanes": data.ArrayLayout(data.StructLayout({
                "mag": mw, "u": signed(p_width), "sign": 1,
            }), B),
            **s1_fields,
            "flags": fl,
        }))
        # --- stage 2: alignment shift with guard and sticky -----------------------------------
        s2 = _Stage("s2", data.StructLayout({
            "lanes": data.ArrayLayout(data.StructLayout({
                "q": W - 1,         # low bits of the truncated magnitude
                "big": 1,           # truncated magnitude >= 2**(W-1), or shifted out at the top
                "guard": 1,
                "sticky": 1,
                "sign": 1,
            }), B),
            "exponent": bfp.exp_bits,
            "flags": fl,
        }))
        # stage 3 is the output register ``o``.
        r_width = max(1, self.r_cap.bit_length())
        if not self.thermometer:
            # Stage R (comparator variant): the lane shift amounts between stages 1 and 2.
            sr = _Stage("sr", data.StructLayout({
                "lanes": data.ArrayLayout(data.StructLayout({
                    "mag": mw, "r": r_width, "low_sat": 1, "sign": 1,
                }), B),
                "exponent": bfp.exp_bits,
                "flags": fl,
            }))

        # A register loads when it is empty or when the next register loads (takes its content).
        o_load = Signal()
        if self.thermometer:
            m.d.comb += [
                o_load.eq(self.o.ready | ~self.o.valid),
                s2.ready.eq(o_load | ~s2.valid),
                s1.ready.eq(s2.ready | ~s1.valid),
                self.i.ready.eq(s1.ready),
            ]
        else:
            # One enable for the whole pipeline: every register loads when ``o`` loads. (A chain
            # ``ready = next.ready | ~valid`` through all the stages, each link driving a whole
            # register's enables, limited the clock; synthesis rebuilds that chain from the flat
            # OR form too.)
            m.d.comb += o_load.eq(self.o.ready | ~self.o.valid)
            for st in pre + [s1, sr, s2]:
                m.d.comb += st.ready.eq(o_load)
            m.d.comb += self.i.ready.eq(o_load)

        with m.If(s1.ready):
            if self.thermometer:
                m.d.sync += s1.valid.eq(self.i.valid)
                m.d.sync += [s1.data.parts.eq(parts), s1.data.nonzero.eq(any_nonzero)]
                m.d.sync += s1.data.flags.eq(self.i.payload.flags)
                for k in range(B):
                    lane = self.i.payload.lanes[k]
                    m.d.sync += [
                        s1.data.lanes[k].mag.eq(lane.mag),
                        s1.data.lanes[k].u.eq(unsigned_exp(lane.exp)),
                        s1.data.lanes[k].sign.eq(lane.sign),
                    ]
            else:
                last = pre[-1]
                m.d.sync += [
                    s1.valid.eq(last.valid),
                    s1.data.p.eq(p_value),
                    s1.data.exponent.eq(Mux(any_nonzero, shared, 0)),
                    s1.data.flags.eq(last.data.flags),
                ]
                for k in range(B):
                    lane = last.data.lanes[k]
                    m.d.sync += [
                        s1.data.lanes[k].mag.eq(lane.mag),
                        s1.data.lanes[k].u.eq(lane.u),
                        s1.data.lanes[k].sign.eq(lane.sign),
                    ]

        # Stage 2 logic: aligned = mag * 2**(lead + 1); aligned >> r = 2 * floor(x / 2**r) + guard
        # where x = mag * 2**lead; sticky = any bit of ``aligned`` below position r. In the
        # comparator variant r comes from the stage R register.
        if self.thermometer:                        # finish the thermometer decoding
            p1 = Signal(signed(p_width), name="p1")
            shared1 = Signal(bfp.exp_bits, name="shared1")
            exponent1 = Signal(bfp.exp_bits, name="exponent1")
            m.d.comb += [
                p1.eq(decoder.finish(s1.data.parts, p_plan)),
                shared1.eq(decoder.finish(s1.data.parts, shared_plan)),
                exponent1.eq(Mux(s1.data.nonzero, shared1, 0)),
            ]
        else:
            p1, exponent1 = s1.data.p, s1.data.exponent
        lanes2 = []
        for k in range(B):
            lane = s1.data.lanes[k]
            nz = lane.mag[-1] if self.normalized else lane.mag.any()
            r_full = Signal(signed(p_width + 1), name=f"r_full{k}")
            m.d.comb += r_full.eq(p1 - lane.u)
            below = r_full[-1]                          # left shift beyond ``lead``: saturates
            r_low = r_full[:p_width]
            above = ~below & _gt_const(r_low, self.r_cap)
            r = Signal(r_width, name=f"r{k}")
            m.d.comb += r.eq(Mux(above, Const(self.r_cap, r_width), r_low[:r_width]))
            if self.thermometer:
                low_sat = nz & below
            else:
                with m.If(sr.ready):
                    m.d.sync += [
                        sr.data.lanes[k].mag.eq(lane.mag),
                        sr.data.lanes[k].r.eq(r),
                        sr.data.lanes[k].low_sat.eq(nz & below),
                        sr.data.lanes[k].sign.eq(lane.sign),
                    ]
                lane = sr.data.lanes[k]
                r, low_sat = lane.r, lane.low_sat
            aligned = Cat(Const(0, self.lead + 1), lane.mag)
            if self.x_width + 1 > W:
                # Wide magnitudes (BFPAffine's): only the guard bit and the W - 1 code bits of
                # ``aligned >> r`` are kept; the bits above them (``big``: the truncated magnitude
                # is 2**(W-1) or more) and below them (``sticky``) are ORed as the shifter drops
                # them. (ECP5, W8 B16 M12 BFPAffine: 11899 -> 10187 LUT sites with stage 3 below.)
                shifted, sticky, above = _shift_right_window(m, aligned, r, W, f"shifted{k}")
                big = low_sat | above
            else:
                # Narrow magnitudes (float inputs): the whole value fits the window. A plain
                # shift and sticky bits from comparisons of r with constants map smaller here
                # (ECP5, W8 B16 fp10 BFPShifter: 1958 against 2891 LUT sites with the window).
                shifted = Signal(self.x_width + 1, name=f"shifted{k}")
                m.d.comb += shifted.eq(aligned >> r)
                sticky = _any([aligned[j] & _gt_const(r, j)
                               for j in range(self.lead + 1, min(self.x_width + 1, self.r_cap))])
                big = low_sat
            lanes2.append({
                "q": shifted[1:],
                "big": big,
                "guard": shifted[0],
                "sticky": sticky,
                "sign": lane.sign,
            })

        if self.thermometer:
            valid2, exponent2, flags2 = s1.valid, exponent1, s1.data.flags
        else:
            with m.If(sr.ready):
                m.d.sync += [
                    sr.valid.eq(s1.valid),
                    sr.data.exponent.eq(exponent1),
                    sr.data.flags.eq(s1.data.flags),
                ]
            valid2, exponent2, flags2 = sr.valid, sr.data.exponent, sr.data.flags
        with m.If(s2.ready):
            m.d.sync += [
                s2.valid.eq(valid2),
                s2.data.exponent.eq(exponent2),
                s2.data.flags.eq(flags2),
            ]
            for k, fields in enumerate(lanes2):
                for name, value in fields.items():
                    m.d.sync += s2.data.lanes[k][name].eq(value)

        # Stage 3 logic: round to nearest even, saturate, negate.
        codes, sats = [], []
        for k in range(B):
            lane = s2.data.lanes[k]
            up = Signal(name=f"up{k}")
            m.d.comb += up.eq(lane.guard & (lane.sticky | lane.q[0]))
            sat = Signal(name=f"sat{k}")
            # Rounding overflows iff q is all ones and rounds up (q[0] = 1 then, so it rounds up
            # iff guard): no path through the rounding carry into the OR of all lanes' ``sat``.
            m.d.comb += sat.eq(lane.big | (lane.q.all() & lane.guard))
            # Round and negate with one adder: -(q + up) = ~q + (1 - up) in W bits, so the code
            # is (q ^ sign) + (up ^ sign); a zero magnitude gives +0 either way. A saturated lane
            # takes the largest code of its sign.
            signed_q = Signal(W, name=f"signed_q{k}")
            m.d.comb += signed_q.eq((Cat(lane.q, Const(0, 1)) ^ lane.sign.replicate(W)) + (up ^ lane.sign))
            code = Signal(W, name=f"code{k}")
            m.d.comb += code.eq(Mux(sat, Mux(lane.sign, Const((1 << W) - bfp.code_max, W),
                                             Const(bfp.code_max, W)), signed_q))
            codes.append(code)
            sats.append(sat)

        with m.If(o_load):
            m.d.sync += [
                self.o.valid.eq(s2.valid),
                self.o.payload.exponent.eq(s2.data.exponent),
                self.o.payload.flags.sat.eq(s2.data.flags.sat | Cat(*sats).any()),
                self.o.payload.flags.special.eq(s2.data.flags.special),
                self.o.payload.flags.flush.eq(s2.data.flags.flush),
            ]
            for k in range(B):
                m.d.sync += self.o.payload.codes[k].eq(codes[k])
        return m


class BFPShifter(wiring.Component):
    """Convert a block of packed floats into one flagged BFP block (``sim.model.golden.float_to_bfp``).

    Parameters
    ----------
    in_format : FloatFormat or str
        Input float format (see ``hw.formats.FLOAT_FORMATS``).
    bfp : BFPFormat
        Output format; usually ``BFPFormat.for_float(in_format, width, block)``, but any exponent
        width works (shared exponents outside its range clamp, and codes saturate).

    Ports
    -----
    i : stream of ``data.ArrayLayout(in_format.layout(), bfp.block)`` (lane 0 first).
    o : stream of ``bfp.flagged_block_layout()``.

    Decoding: exponent 0 is zero (a non-zero fraction there raises ``flush``); the all-ones
    exponent is an ordinary binade and raises ``special``. The decoder is combinational and
    feeds a :class:`BlockQuantizer` (``normalized`` magnitudes ``1.f``).

    Timing
    ------
    Latency: ``latency`` = the quantizer's (the decoder adds none): 3 cycles edge to edge for
    exponent fields of up to 6 bits (wider ones take the comparator variant); throughput: one block
    per cycle; back-pressure: as :class:`BlockQuantizer` (``i.ready`` is combinational from
    ``o.ready``; ``o.valid`` never waits for ``o.ready``; ``o`` holds while stalled).
    Exponent fields of up to 6 bits (fp10, fp16, fp15, e4m3, e5m2) give keys below
    ``THERMOMETER_KEYS``, so stage 1 takes the block maximum with thermometer codes; the
    quantizer is told that zero lanes have exponent 0 (``zeros_at_min_exp``), so the keys are the
    raw exponent fields. W=8 B=16 fp10, ``python -m gen area``: iCE40 UP5K about 40 MHz, ECP5
    about 124 MHz (see ``docs/area.md``).
    """

    def __init__(self, in_format, bfp):
        in_format = float_format(check_instance("in_format", in_format, FloatFormat, alternative="a format name"))
        check_instance("bfp", bfp, BFPFormat)
        self.in_format = in_format
        self.bfp = bfp
        self._quant = self.quantizer()
        self.latency = self._quant.latency
        self.input_layout = data.ArrayLayout(in_format.layout(), bfp.block)
        self.output_layout = bfp.flagged_block_layout()
        super().__init__({
            "i": In(stream.Signature(self.input_layout)),
            "o": Out(stream.Signature(self.output_layout)),
        })

    def quantizer(self):
        """A fresh :class:`BlockQuantizer` configured for this shifter's decoded elements."""
        fmt = self.in_format
        return BlockQuantizer(self.bfp, fmt.frac_bits + 1, fmt.exp_bits, exp_signed=False,
                              exp_offset=-(fmt.bias + fmt.frac_bits), normalized=True,
                              zeros_at_min_exp=True)

    def elaborate(self, platform):
        m = Module()
        fmt = self.in_format
        m.submodules.quantizer = quant = self._quant

        flush, special = [], []
        for k in range(self.bfp.block):
            word = self.i.payload[k]
            lane = quant.i.payload.lanes[k]
            normal = word.exponent.any()
            flush.append(~normal & word.fraction.any())
            special.append(word.exponent.all())
            m.d.comb += [
                lane.mag.eq(Mux(normal, Cat(word.fraction, Const(1, 1)), 0)),
                lane.exp.eq(word.exponent),
                lane.sign.eq(word.sign),
            ]
        m.d.comb += [
            quant.i.payload.flags.sat.eq(0),
            quant.i.payload.flags.special.eq(Cat(*special).any()),
            quant.i.payload.flags.flush.eq(Cat(*flush).any()),
            quant.i.valid.eq(self.i.valid),
            self.i.ready.eq(quant.i.ready),
        ]
        wiring.connect(m, wiring.flipped(self.o), quant.o)
        return m
