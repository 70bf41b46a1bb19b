"""The generator's user-facing error (kept apart so that every ``gen`` module can raise it without
importing the unit registry)."""

__all__ = ["ParamError"]


class ParamError(ValueError):
    """A user-facing parameter error: its message names the value and the allowed range."""
