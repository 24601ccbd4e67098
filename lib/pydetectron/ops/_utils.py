"""Argument normalisation shared by the op wrappers (pure Python, no tensors)."""


def pair(value, name):
    """``output_size`` as ``(height, width)``: an int or a pair of positive ints."""
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = value
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise ValueError("`%s` must be an int or a pair of ints (height, width), got %r"
                         % (name, value)) from None
    if h <= 0 or w <= 0:
        raise ValueError("`%s` must be positive, got %r" % (name, value))
    return h, w
