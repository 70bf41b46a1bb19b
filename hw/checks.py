"""Argument checks of the ``hw`` constructors: one line, naming the parameter, the allowed range
and the bad value (its ``repr``), raised as ``ValueError``.

Plain Python (no Amaranth). Messages read::

    channels must be a positive integer, not 0
    max_chunks must be a power of two in 1..64, not 3
    max_count must be an integer >= 2 * max_chunks = 16, not 9
    UART divisor must be an integer in 4..16777216 (clock cycles per bit), not 2
    bfp must be a hw.formats.BFPFormat, not (8, 5, 16)

``bool`` is an ``int`` subclass but never a valid size, so it is refused like any other non-integer.
"""

__all__ = ["is_int", "check_int", "check_instance"]


def is_int(value):
    """A plain integer (not a ``bool``)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name, value, lo=None, hi=None, *, power_of_two=False, lo_text=None, unit=None):
    """Return ``value`` if it is an integer in ``lo..hi`` (either bound may be ``None``; a power of
    two when ``power_of_two``), else raise ``ValueError`` with one line. ``lo_text`` says how ``lo``
    is derived (``"2 * max_chunks = 16"``); ``unit`` follows the range (``"bit times"``)."""
    ok = (is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi)
          and (not power_of_two or (value > 0 and not value & (value - 1))))
    if ok:
        return value
    kind = "a power of two" if power_of_two else "an integer"
    if lo is not None and hi is not None:
        text = f"{kind} in {lo}..{hi}"
    elif lo is not None:
        text = ("a positive integer" if lo == 1 and not power_of_two and lo_text is None
                else f"{kind} >= {lo_text or lo}")
    elif hi is not None:
        text = f"{kind} <= {hi}"
    else:
        text = kind
    if unit:
        text += f" {unit}"
    raise ValueError(f"{name} must be {text}, not {value!r}")


def check_instance(name, value, cls, *, alternative=None):
    """Return ``value`` if it is an instance of ``cls``, else raise ``ValueError`` naming the class
    by its import path (``hw.formats.BFPFormat``); ``alternative`` names another accepted kind
    (``"a format name"``, accepted as ``str``)."""
    if isinstance(value, cls) or (alternative is not None and isinstance(value, str)):
        return value
    text = f"a {cls.__module__}.{cls.__qualname__}" + (f" or {alternative}" if alternative else "")
    raise ValueError(f"{name} must be {text}, not {value!r}")
