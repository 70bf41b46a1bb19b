"""Combinational arithmetic helpers and the widths of the exact channel sums, shared by
``hw.bfp_affine``, ``hw.finalize``, ``hw.stats_unit`` and ``hw.grad_reduce``.

Every helper builds plain Amaranth expressions and ``Signal``s (names derive from ``name``) whose
emitted Verilog is lint-clean under ``verilator --lint-only -Wall`` (see the rules below); none
changes what it computes to achieve that.
"""

from amaranth.hdl import Cat, Const, Mux, Signal, Value, signed


__all__ = [
    "as_sig", "zext", "sext", "widen", "s_add", "add_const", "fold_u", "fold_s", "cond_neg", "gt_const",
    "eq_const", "select", "shift_right_jam", "shift_left", "shift_left_to", "count_leading_zeros",
    "shift_right_arith", "window_lsb", "window_control", "window_accumulate",
    "stats_widths", "grad_widths", "windowed_width", "window_lsb_width",
]


# --- lint-clean combinational helpers -------------------------------------------------------------
#
# Lint-clean arithmetic. ``gen.verilog.emit`` writes a flat netlist that must pass
# ``verilator --lint-only -Wall`` without waivers. Yosys writes every Amaranth operator as one cell
# whose output is a wire, constants at their shortest width, and drops plain zero/sign extensions of
# arithmetic operands. So: both operands of an arithmetic or comparison operator have the same width
# (``widen``; a 1-bit operand is also fine); constant operands have their top bit set at that width
# (``add_const``, ``gt_const``, ``eq_const``); every bit of every result is used, and a value used
# more than once (sliced) is first held in a ``Signal`` (``as_sig``: Amaranth would otherwise build
# one cell per use). Where a result bit is provably zero (or a copy of the sign) it is folded into a
# neighbouring bit with one gate (``fold_u``, ``fold_s``) instead of being left dangling.
# Multiplexers are ``Mux`` trees or AND-OR selects, never ``Switch`` (a ``casez`` with overlapping
# patterns).

def as_sig(m, value, name):
    """``value`` held in a ``Signal`` of its own shape (or ``value`` itself if it is one)."""
    if isinstance(value, Signal):
        return value
    value = Value.cast(value)
    sig = Signal(value.shape(), name=name)
    m.d.comb += sig.eq(value)
    return sig


def zext(value, width):
    """Zero-extend ``value`` to ``width`` bits (a concatenation; fine as an assignment source or a
    multiplexer input, but an arithmetic operand needs :func:`widen`)."""
    value = Value.cast(value)
    assert len(value) <= width, (len(value), width)
    return value if len(value) == width else Cat(value, Const(0, width - len(value)))


def sext(value, width):
    """Sign-extend ``value`` (its top bit is the sign) to ``width`` bits, as a signed value."""
    value = Value.cast(value)
    assert len(value) <= width, (len(value), width)
    if len(value) == width:
        return value.as_signed()
    return Cat(value, value[-1].replicate(width - len(value))).as_signed()


def widen(value, width, signed_=False):
    """``value`` extended to ``width`` bits as an arithmetic operand. Amaranth hands a plain
    extension to Yosys as the narrower operand (and Verilator then flags the width mismatch), so the
    extension goes through a multiplexer that is the identity (``value != 0 ? ext(value) : 0``)."""
    value = Value.cast(value)
    if len(value) == width:
        return value.as_signed() if signed_ else value.as_unsigned()
    ext = sext(value, width) if signed_ else zext(value, width)
    out = Mux(value.any(), ext, Const(0, width))
    return out.as_signed() if signed_ else out.as_unsigned()


def s_add(a, b, sub=False):
    """Exact ``a + b`` (or ``a - b``) of two signed values: one bit wider than the wider one."""
    a, b = Value.cast(a), Value.cast(b)
    w = max(len(a), len(b))
    a, b = widen(a, w, True), widen(b, w, True)
    return a - b if sub else a + b


def add_const(m, value, k, name):
    """Exact ``value + k`` (a signed ``Signal`` one bit wider) for a signed ``value`` and an integer
    ``k``. The constant is applied as an unsigned operand with its top bit set (``value + (2**w +
    k)`` for ``k < 0``, ``value - (2**w - k)`` for ``k > 0``) and the sign of the exact result is
    rebuilt from the carry and the operand's sign."""
    value = Value.cast(value)
    if k == 0:
        return as_sig(m, value.as_signed(), name)
    w = max(len(value), abs(k).bit_length() + 1)
    v = as_sig(m, widen(value, w, True).as_unsigned(), f"{name}_v")
    total = Signal(w + 1, name=f"{name}_t")
    out = Signal(signed(w + 1), name=name)
    if k < 0:
        m.d.comb += [total.eq(v + Const((1 << w) + k, w)),
                     out.eq(Cat(total[:w], ~total[w] | v[w - 1]))]
    else:
        m.d.comb += [total.eq(v - Const((1 << w) - k, w)),
                     out.eq(Cat(total[:w], total[w] & v[w - 1]))]
    return out


def fold_u(m, value, width, name):
    """``value[:width]`` for an unsigned ``value`` whose bits from ``width`` up are provably zero;
    they are ORed into bit 0 so that every bit is used (one gate, no change in function)."""
    value = Value.cast(value)
    if len(value) <= width:
        return zext(value, width)
    value = as_sig(m, value, name)
    return Cat(value[0] | value[width:].any(), value[1:width])


def fold_s(m, value, width, name):
    """``value`` as a ``width``-bit signed value, for a signed ``value`` whose bits from
    ``width - 1`` up are provably all equal (they are ANDed into the new sign bit)."""
    value = Value.cast(value)
    if len(value) <= width:
        return sext(value, width)
    value = as_sig(m, value, name)
    return Cat(value[:width - 1], value[width - 1:].all()).as_signed()


def cond_neg(m, value, neg, name):
    """``-value if neg else value`` of a ``w``-bit value, as a ``w + 1``-bit unsigned ``Signal``
    (``(value ^ neg...) + neg``); for the magnitude of a two's-complement value the top bit is 0."""
    value = Value.cast(value)
    w = len(value)
    out = Signal(w + 1, name=name)
    m.d.comb += out.eq((value.as_unsigned() ^ neg.replicate(w)) + neg)
    return out


def gt_const(m, value, c, name="gt"):
    """``value > c`` for an unsigned ``value`` and an integer ``c >= 0``."""
    value = as_sig(m, Value.cast(value).as_unsigned(), name)
    n = len(value)
    if c >= (1 << n) - 1:
        return Const(0, 1)
    k = c.bit_length()
    if k == 0:
        return value.any()
    if c == (1 << k) - 1:                   # no k-bit value exceeds c
        return value[k:].any()
    low = value[:k] > Const(c, k)           # ``c`` is exactly k bits wide
    return value[k:].any() | low if k < n else low


def eq_const(m, value, c, name="eq"):
    """``value == c`` for an unsigned ``value`` and an integer ``0 <= c < 2**len(value)``."""
    value = as_sig(m, Value.cast(value).as_unsigned(), name)
    k = c.bit_length()
    if k == 0:
        return ~value.any()
    low = value[:k] == Const(c, k)
    return low & ~value[k:].any() if k < len(value) else low


def select(pairs, width):
    """AND-OR multiplexer: ``OR_j (sel_j ? value_j : 0)`` over ``(sel_j, value_j)``; the selects
    are one-hot (or all zero: the result is 0). Values are zero-extended to ``width``."""
    terms = [Mux(sel, zext(Value.cast(val).as_unsigned(), width), Const(0, width)) for sel, val in pairs]
    if not terms:
        return Const(0, width)
    out = terms[0]
    for t in terms[1:]:
        out = out | t
    return out


def shift_right_jam(m, value, amount, name):
    """``value >> amount`` with every bit shifted out ORed into bit 0 of the result (jamming).
    ``amount`` is unsigned; amounts of ``len(value)`` or more leave only the jam bit. Returns a
    ``len(value)``-bit signal. A logarithmic shifter: one stage per bit of ``amount``, each stage
    ORs the bits it drops into a running sticky bit."""
    width = len(value)
    cur = value
    sticky = Const(0, 1)
    for j in range(len(amount)):
        step = 1 << j
        if step >= width:
            dropped = cur.any()
            nxt = Const(0, width)
        else:
            dropped = cur[:step].any()
            nxt = zext(cur[step:], width)
        s = Signal(width, name=f"{name}_s{j}")
        k = Signal(name=f"{name}_k{j}")
        m.d.comb += [s.eq(Mux(amount[j], nxt, cur)), k.eq(sticky | (amount[j] & dropped))]
        cur, sticky = s, k
    out = Signal(width, name=name)
    m.d.comb += out.eq(Cat(cur[0] | sticky, cur[1:]))
    return out


def shift_left(m, value, amount, name):
    """``(value << amount)`` truncated to ``len(value)`` bits (logarithmic shifter)."""
    width = len(value)
    cur = value
    for j in range(len(amount)):
        step = 1 << j
        nxt = Cat(Const(0, step), cur[:width - step]) if step < width else Const(0, width)
        s = Signal(width, name=f"{name}_s{j}")
        m.d.comb += s.eq(Mux(amount[j], nxt, cur))
        cur = s
    return cur


def count_leading_zeros(m, value, name):
    """Leading-zero count of ``value`` as a ``range(len(value) + 1)`` signal; a zero value gives
    ``len(value)``. A balanced tree of (all-zero, count) pairs, built as expressions."""
    width = len(value)
    out = Signal(range(width + 1), name=name)
    if width == 1:
        m.d.comb += out.eq(~value[0])
        return out
    # Pad to a power of two with ones at the bottom (they never change the count of a non-zero
    # value; a zero value is handled separately).
    size = 1 << (width - 1).bit_length()
    pad = size - width
    bits = Cat(Const((1 << pad) - 1, pad), value) if pad else value
    nodes = [(~bits[k], None) for k in range(size)]    # (all zero, count), leaves LSB first
    while len(nodes) > 1:
        merged = []
        for k in range(0, len(nodes), 2):
            (z_lo, c_lo), (z_hi, c_hi) = nodes[k], nodes[k + 1]
            if c_lo is None:
                count = z_hi
            else:
                # High half all zero: 2**level + count of the low half; else count of the high half.
                count = Mux(z_hi, Cat(c_lo, Const(1, 1)), Cat(c_hi, Const(0, 1)))
            merged.append((z_lo & z_hi, count))
        nodes = merged
    count = nodes[0][1]
    m.d.comb += out.eq(Mux(value.any(), zext(count, len(out)), Const(width, len(out))))
    return out


def shift_left_to(m, value, amount, width, name):
    """``value << amount`` (``value`` sign-extended when signed) truncated to ``width`` bits: a
    logarithmic shifter of explicit stages (no implicit width growth in the emitted Verilog)."""
    cur = Signal(signed(width) if value.shape().signed else width, name=f"{name}_s")
    m.d.comb += cur.eq(value)
    for j in range(len(amount)):
        step = 1 << j
        nxt = Signal.like(cur, name=f"{name}_s{j}")
        shifted = Cat(Const(0, step), cur[:width - step]) if step < width else Const(0, width)
        if cur.shape().signed:
            shifted = shifted.as_signed()
        m.d.comb += nxt.eq(Mux(amount[j], shifted, cur))
        cur = nxt
    return cur


def shift_right_arith(m, value, amount, name):
    """``value >> amount`` of a signed ``value`` (arithmetic: the sign fills in), ``len(value)``
    bits; amounts of ``len(value)`` or more leave only sign bits. Logarithmic shifter."""
    width = len(value)
    cur = Signal(signed(width), name=f"{name}_s")
    m.d.comb += cur.eq(value)
    for j in range(len(amount)):
        step = 1 << j
        fill = cur[-1].replicate(min(step, width))
        shifted = (Cat(cur[step:], fill) if step < width else fill).as_signed()
        nxt = Signal(signed(width), name=f"{name}_s{j}")
        m.d.comb += nxt.eq(Mux(amount[j], shifted, cur))
        cur = nxt
    return cur


# --- windowed accumulators (the ``low`` statistics, docs/numerics.md) ------------------------------
#
# A group of accumulators (the lanes of one BFP group) shares a running exponent ``F``, the largest
# element exponent so far, and holds ``A`` with its LSB at ``L = max(0, F - G)``; an element
# ``v * 2**E`` updates ``F' = max(F, E)``, ``L' = max(0, F' - G)`` and
# ``A' = rhu(A 2**(L - L')) + rhu(v 2**(E - L'))`` (``rhu(z) = floor(z + 1/2)``). One of the two
# terms is always exact: ``L' > L`` only when ``E = F'`` is a new maximum above ``G``, and then
# ``E - L' = G``. So each lane needs one right shifter, whose input (``A`` or ``v 2**G``) and amount
# (``L' - L`` or ``L' + G - E``) are chosen by the group: :func:`window_control` once per group,
# :func:`window_accumulate` per lane. ``rhu(t 2**-d)`` of an integer ``t`` is ``floor(2 t 2**-d)``
# halved with its dropped bit added back: ``y = (2 t) >> d``, ``rhu = (y >> 1) + (y & 1)``; a
# shift of ``len(A)`` or more gives 0 either way, so the amount is clamped there.


def window_lsb(m, f, guard, name):
    """``max(0, f - guard)`` of an unsigned running exponent ``f``, ``len(f)`` bits."""
    fw = len(f)
    if guard == 0:
        return f
    if guard >= (1 << fw) - 1:
        return Const(0, fw)
    t = add_const(m, zext(f, fw + 1).as_signed(), -guard, f"{name}_t")     # f - G
    # f - G >= -G > -2**fw: bits fw and up are all copies of the sign
    return as_sig(m, Mux(t[fw:].all(), Const(0, fw), t[:fw]), name)


def window_control(m, f, e, guard, acc_width, name):
    """Group control of a windowed accumulator: ``(f_new, lsb_new, up, d)`` for the group's running
    exponent ``f`` (unsigned) and an element exponent ``e`` (unsigned, at most ``len(f)`` bits):
    ``f_new = max(f, e)``, ``lsb_new = max(0, f_new - guard)`` (``len(f)`` bits), ``up``: the LSB
    rises (the accumulators are rescaled), ``d``: the shift, clamped to ``acc_width``."""
    fw = len(f)
    e_w = as_sig(m, widen(e, fw), f"{name}_e")
    f_new = as_sig(m, Mux(e_w > f, e_w, f), f"{name}_f")

    lsb_old, lsb_new = window_lsb(m, f, guard, f"{name}_lo"), window_lsb(m, f_new, guard, f"{name}_ln")
    up = Signal(name=f"{name}_up")
    m.d.comb += up.eq(lsb_new > lsb_old)
    # up: L' - L; else L' + G - E (>= 0 since E <= F'); both are below 2**fw + G.
    rise = as_sig(m, s_add(zext(lsb_new, fw + 1).as_signed(), zext(lsb_old, fw + 1).as_signed(), sub=True),
                  f"{name}_rise")
    below = add_const(m, s_add(zext(lsb_new, fw + 1).as_signed(), zext(e_w, fw + 1).as_signed(), sub=True),
                      guard, f"{name}_below")
    aw = max(len(rise), len(below))
    amount = Signal(aw - 1, name=f"{name}_amt")        # non-negative: the sign bit is dropped
    m.d.comb += amount.eq(Mux(up, sext(rise, aw), sext(below, aw))[:aw - 1])
    dw = acc_width.bit_length()
    d = Signal(dw, name=f"{name}_dist")
    if (1 << (aw - 1)) - 1 <= acc_width:
        m.d.comb += d.eq(zext(amount, dw))
    else:
        m.d.comb += d.eq(Mux(gt_const(m, amount, acc_width, f"{name}_clamp"), Const(acc_width, dw),
                             amount[:dw]))
    return f_new, lsb_new, up, d


def window_accumulate(m, acc, v, up, d, guard, name):
    """One lane of a windowed accumulator (see :func:`window_control`): the exact
    ``rhu(A 2**(L - L')) + rhu(v 2**(E - L'))`` as a signed value one bit wider than ``acc``
    (``acc``: signed ``A``; ``v``: the signed element, ``len(v) + guard <= len(acc)``)."""
    wa = len(acc)
    assert len(v) + guard <= wa, (len(v), guard, wa)
    scaled = Signal(signed(wa), name=f"{name}_v")
    m.d.comb += scaled.eq(Cat(Const(0, guard), sext(v, wa - guard)) if guard else sext(v, wa))
    x = Signal(signed(wa + 1), name=f"{name}_x")
    m.d.comb += x.eq(Cat(Const(0, 1), Mux(up, acc, scaled)))
    y = shift_right_arith(m, x, d, f"{name}_y")
    kept = Signal(signed(wa + 1), name=f"{name}_k")
    m.d.comb += kept.eq(sext(as_sig(m, Mux(up, scaled, acc), f"{name}_m"), wa + 1))
    # kept + y[1:] + y[0] with one adder: the rounding bit enters as the carry into bit 1 of
    # (2 kept + y[0]) + (2 y[1:] + y[0]).
    total = Signal(wa + 2, name=f"{name}_t")
    m.d.comb += total.eq(Cat(y[0], kept).as_unsigned() + Cat(y[0], sext(y[1:], wa + 1)).as_unsigned())
    out = Signal(signed(wa + 1), name=name)
    m.d.comb += out.eq(Cat(total[1] | total[0], total[2:]))   # total[0] = 2 y[0] mod 2 = 0
    return out


# --- widths of the exact per-channel sums ----------------------------------------------------------
#
# One rule: an accumulator is sized by its exact bound, the bit length of ``max_count`` times the
# largest element, plus a sign bit (``stats_widths`` for the statistics unit, ``grad_widths`` for
# the gradient reduction, ``windowed_width`` for the low statistics), and the finalize engines take
# the accumulators' widths as they are.

def stats_widths(bfp, max_count, max_chunks):
    """``(value_width, sum_width, range_width)``: signed width of one ``q * 2**E`` in units u, of the
    exact per-channel sum, and unsigned width of ``sum_k (max_k - min_k)``."""
    peak = bfp.code_max << bfp.exp_max              # largest |q * 2**E|
    value_width = peak.bit_length() + 1
    sum_width = (max_count * peak).bit_length() + 1
    range_width = (min(max_chunks, max_count // 2) * 2 * peak).bit_length()
    return value_width, sum_width, range_width


def windowed_width(value_max, guard, max_count):
    """Signed width of a windowed accumulator (``window_accumulate``) over at most ``max_count``
    elements of magnitude at most ``value_max``: every addend is at most ``value_max 2**guard``
    (``E - L' <= guard``) and a rescale never increases ``|A|`` (``|rhu(A/2**d)| <= |A|`` for an
    integer ``A``, ``d >= 1``), so ``|A| <= max_count value_max 2**guard``."""
    return (max_count * value_max << guard).bit_length() + 1


def window_lsb_width(exp_max):
    """Width of a windowed accumulator's LSB exponent ``L <= exp_max`` (and of its running ``F``)."""
    return max(1, exp_max.bit_length())


def grad_widths(bfp, max_count):
    """``(sum_g_width, sum_gx_width)``: signed widths of the exact per-channel sums that cannot
    overflow for ``n <= max_count``."""
    c, e = bfp.code_max, bfp.exp_max
    return ((max_count * c << e).bit_length() + 1,
            (max_count * c * c << (2 * e)).bit_length() + 1)
