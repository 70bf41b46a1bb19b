"""Float64 Range BN: the mathematical reference the golden model is measured against.

Arrays are ``x[n, channels]`` (positions by channels). Same K, C and eps as the golden model.
"""

import numpy as np

__all__ = ["range_bn_forward", "range_bn_backward", "range_bn_backward_no_correction"]


def _chunks(x, k):
    n, c = x.shape
    return x.reshape(k, n // k, c)


def range_bn_forward(x, gamma, beta, k, c, eps):
    """y = gamma (x - mu) / (C R + eps) + beta, R = mean over chunks of (max - min).
    Returns ``(y, cache)``."""
    x = np.asarray(x, dtype=np.float64)
    mu = x.mean(axis=0)
    xc = _chunks(x, k)
    r = (xc.max(axis=1) - xc.min(axis=1)).mean(axis=0)
    s = 1.0 / (c * r + eps)
    xhat = (x - mu) * s
    y = gamma * xhat + beta
    return y, {"x": x, "mu": mu, "s": s, "xhat": xhat, "gamma": np.asarray(gamma, np.float64),
               "k": k, "c": c, "r": r}


def _argmax_indicator(x, k, which):
    """1 at the first max (or min) of each chunk, per channel; 0 for chunks with max == min."""
    n, ch = x.shape
    xc = _chunks(x, k)
    ind = np.zeros_like(xc)
    pos = xc.argmax(axis=1) if which == "max" else xc.argmin(axis=1)   # first occurrence
    flat = xc.max(axis=1) == xc.min(axis=1)
    for kk in range(k):
        for c in range(ch):
            if not flat[kk, c]:
                ind[kk, pos[kk, c], c] = 1.0
    return ind.reshape(n, ch)


def range_bn_backward(g, cache, correction=True):
    """Exact gradient of :func:`range_bn_forward`. Returns ``(dx, dgamma, dbeta)``."""
    g = np.asarray(g, dtype=np.float64)
    x, mu, s, xhat, gamma, k, c = (cache[key] for key in ("x", "mu", "s", "xhat", "gamma", "k", "c"))
    n = x.shape[0]
    dbeta = g.sum(axis=0)
    dgamma = (g * xhat).sum(axis=0)
    dx = g - dbeta / n
    if correction:
        ind = _argmax_indicator(x, k, "max") - _argmax_indicator(x, k, "min")
        dx = dx - (c / k) * dgamma * ind
    return gamma * s * dx, dgamma, dbeta


def range_bn_backward_no_correction(g, cache):
    """The common mistake: the max/min term dropped. Kept to show that tests catch it."""
    return range_bn_backward(g, cache, correction=False)
