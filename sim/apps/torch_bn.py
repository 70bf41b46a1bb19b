"""``LightNormBatchNorm2d``: a drop-in for ``torch.nn.BatchNorm2d`` whose forward and backward are the
hardware's arithmetic, bit for bit (through :mod:`sim.model.fast_bn`, checked against the golden model).

Torch is an optional extra (``pip install -e .[torch]``); nothing else in the project imports this.

Modes
-----
``"exact"`` (default)
    The hardware. Forward: the conv output (N, C, H, W) becomes ``n = N*H*W`` positions by C
    channels in N, H, W order (chunk k of the Range-BN range is positions ``[k n/K, (k+1) n/K)``);
    every element is rounded to the input float format (``FloatFormat.encode``: RNE, saturate,
    flush), converted to BFP blocks of ``block`` channels at one position, then statistics, finalize
    and ``y = a x + b`` rounded into BFP exactly as ``sim/model/golden_bn.py`` defines them. gamma and beta
    (float32 master copies, trained by the optimizer) are rounded to the internal float at every
    call; the module returns the exact values of the output BFP codes. Backward: the incoming
    gradient goes through the same input converter into BFP, then the hardware's reductions,
    finalize and ``dx = a g + b_sel`` with the argmax/argmin correction. dgamma and dbeta are the
    hardware's internal-float results. When the input does not need a gradient (e.g. the first BN
    of a network whose convolutions are frozen) the backward runs in the hardware's
    parameters-only mode (``params_only=True``: no dx pass).
``"float"``
    Range BN in float64 with the same K, C (the same fixed-point constant) and eps:
    ``sim/model/reference.py``'s forward and exact backward, no quantization anywhere.
``"range_only"``
    Range BN without BFP: x and the incoming gradient are rounded to the input float format (as the
    hardware's converter does), then float64 Range BN (``sim/model/reference.py``); y and dx are not
    quantized. Compared with ``"exact"`` this isolates what block floating point and the internal
    float cost; compared with ``"float"`` what the input format costs.
``"bfp_only"``
    Standard BN statistics (batch mean, biased variance, ``std_eps`` = 1e-5 as ``nn.BatchNorm2d``)
    in float64 on BFP data: x and g go through the input converter into BFP blocks, y and dx are
    rounded once into BFP blocks (same block format and grouping), gamma/beta/gradients stay float.

Gradient scaling
----------------
The hardware has one input converter format for x and g. A narrow exponent field (fp10 has 5 bits:
normal magnitudes 2^-14 .. 2^16) flushes typical CNN gradients (1e-5 .. 1e-3 per element with a
mean-reduced loss) to zero. As in any low-precision training setup, the software in front of the
hardware scales the gradient by a power of two: with ``grad_scaling="dynamic"`` (default) the
incoming gradient of each BN call is multiplied by ``2**s`` so that its largest magnitude falls in
the binade ``2**T`` with ``T = max(mid, top - 8)`` (``top`` the format's largest binade, ``mid`` the
middle of its normal range; fp10: ``T = 8``, leaving 8 binades of headroom for ``dx = a g + b``), and
dx, dgamma, dbeta are multiplied by ``2**-s`` afterwards. Scaling by a power of two is exact, so
the hardware sees exactly the scaled gradient and the returned values are its outputs, unscaled. An
int fixes ``s``; ``"none"`` disables it (``s = 0``).

Defaults and why
----------------
``width=8, block=16, in_format="fp10"``: LightNorm's forward format and the generator's default
width/block. ``chunks=1``: the paper's Range BN (one range per channel); ``chunks=8`` is the LightNorm
simulator's choice. ``internal_frac_bits=None`` means ``min(23, width + 4)``, the generator's
default (a and b carry at least 4 more bits than a code has). ``cfix=1.0``: the paper's constant;
gamma absorbs the scale. ``eps_log2=-16``: eps = 2^-16, the golden model's default.
``momentum_shift=3``: running statistics move by 1/8 per batch (PyTorch uses 0.1). Running
statistics are the hardware's (internal-float mean and sigma_hat, reset to 0 and 1); eval mode uses
them (``finalize(training=False)``). ``stats="exact"``, ``stats_guard=4``: the hardware's
statistics precision (``--stats``, ``--stats-guard``): ``"low"`` makes the channel sums windowed
accumulators with G guard bits (``docs/numerics.md``, "Low-precision statistics"); checked by
``hw.formats.check_stats``; only the ``"exact"`` layer mode (the hardware) uses it.
"""

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from hw.formats import STATS_GUARD_DEFAULT, BFPFormat, check_bn_format, check_stats, float_format
from sim.model import fast_bn as fb
from sim.model import reference
from sim.model.golden_bn import BNConfig, C_FRAC_BITS, range_scale

__all__ = ["LightNormBatchNorm2d", "MODES", "grad_shift"]

MODES = ("exact", "float", "range_only", "bfp_only")


def _to_nc(t):
    """(N, C, H, W) or (N, C) tensor -> float64 numpy (n, C), positions in N, H, W order."""
    t = t.detach().to(torch.float64)
    if t.dim() == 4:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(-1, t.shape[-1]).cpu().numpy()


def _from_nc(a, like):
    """float64 numpy (n, C) -> tensor shaped and typed like ``like``."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if like.dim() == 4:
        N, C, H, W = like.shape
        t = t.reshape(N, H, W, C).permute(0, 3, 1, 2)
    return t.to(dtype=like.dtype, device=like.device).contiguous()


def grad_shift(fmt, g, scaling="dynamic"):
    """The power of two ``s`` the incoming gradient is multiplied by (see the module docstring)."""
    if scaling == "none" or scaling is None:
        return 0
    if isinstance(scaling, (int, np.integer)) and not isinstance(scaling, bool):
        return int(scaling)
    if scaling != "dynamic":
        raise ValueError(f"grad_scaling must be 'dynamic', 'none' or an int, not {scaling!r}")
    fmt = float_format(fmt)
    peak = float(np.max(np.abs(g))) if g.size else 0.0
    if peak == 0.0 or not math.isfinite(peak):
        return 0
    top = fmt.exp_max - fmt.bias
    mid = (1 - fmt.bias + top) // 2
    target = max(mid, top - 8)
    return target - (math.frexp(peak)[1] - 1)


class _Function(torch.autograd.Function):
    """Forward/backward through the module's numeric mode. ``mod`` carries config and buffers."""

    @staticmethod
    def forward(ctx, x, weight, bias, mod):
        out, saved = mod._forward_numpy(_to_nc(x), weight.detach(), bias.detach())
        ctx.mod = mod
        ctx.saved = saved
        ctx.like_x = (x.shape, x.dtype)
        return _from_nc(out, x)

    @staticmethod
    def backward(ctx, gy):
        mod = ctx.mod
        if ctx.saved is None:
            raise RuntimeError("LightNormBatchNorm2d: backward needs batch statistics (call it in training mode)")
        need_dx = ctx.needs_input_grad[0]
        dx, dgamma, dbeta = mod._backward_numpy(ctx.saved, _to_nc(gy), need_dx)
        dx_t = _from_nc(dx, gy) if dx is not None else None
        w = mod.weight
        return (dx_t, torch.from_numpy(dgamma).to(w.dtype), torch.from_numpy(dbeta).to(w.dtype), None)


class LightNormBatchNorm2d(nn.Module):
    """Drop-in for ``nn.BatchNorm2d(num_features)`` computing LightNorm's Range BN with the
    hardware's exact arithmetic (``mode="exact"``) or one of the ablations (see the module doc)."""

    def __init__(self, num_features, width=8, block=16, in_format="fp10", chunks=1,
                 internal_frac_bits=None, cfix=1.0, eps_log2=-16, momentum_shift=3,
                 mode="exact", grad_scaling="dynamic", std_eps=1e-5, stats="exact",
                 stats_guard=STATS_GUARD_DEFAULT):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        check_stats(stats, stats_guard)     # the generator's check and message
        self.num_features = num_features
        self.fmt = check_bn_format(in_format)     # refuses what the generator refuses (bf16, fp32)
        if internal_frac_bits is None:
            internal_frac_bits = min(23, width + 4)
        self.cfg = BNConfig(bfp=BFPFormat.for_float(self.fmt, width, block), channels=num_features,
                            chunks=chunks, internal_frac_bits=internal_frac_bits, eps_log2=eps_log2,
                            momentum_shift=momentum_shift, stats=stats, stats_guard=stats_guard)
        range_scale(2, cfix)            # validates cfix
        self.cfix = cfix
        self.mode = mode
        self.grad_scaling = grad_scaling
        self.grad_shift(np.zeros(1))    # validates grad_scaling
        self.std_eps = std_eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        rm, rs = fb.running_reset(self.cfg)
        self.register_buffer("running_mean", torch.from_numpy(rm))
        self.register_buffer("running_sigma", torch.from_numpy(rs))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self._cfg_cache = {}
        #: flags of the last exact-mode call: block-flag counts and internal-float flag names
        self.last_flags = {}
        #: how many backward calls ran in the hardware's full mode and in parameters-only mode
        self.backward_calls = {"full": 0, "params_only": 0}

    def extra_repr(self):
        b = self.cfg.bfp
        return (f"{self.num_features}, mode={self.mode}, width={b.width}, block={b.block}, "
                f"in_format={self.fmt.name}, chunks={self.cfg.chunks}, "
                f"internal_frac_bits={self.cfg.internal_frac_bits}, cfix={self.cfix}, "
                f"eps_log2={self.cfg.eps_log2}, momentum_shift={self.cfg.momentum_shift}, "
                f"stats={self.cfg.stats}, stats_guard={self.cfg.stats_guard}")

    # --- configuration per count ---------------------------------------------------------------

    def cfg_for(self, n):
        """The golden-model configuration for count n: C = range_scale(n / K, cfix), as the host
        driver programs the hardware's c_scale register."""
        if n not in self._cfg_cache:
            fb.check_count(self.cfg, n)
            self._cfg_cache[n] = dataclasses.replace(self.cfg, c_scale=range_scale(n // self.cfg.chunks, self.cfix))
        return self._cfg_cache[n]

    def c_value(self, n):
        return self.cfg_for(n).c_scale / (1 << C_FRAC_BITS)

    def grad_shift(self, g):
        return grad_shift(self.fmt, g, self.grad_scaling)

    # --- torch entry point -----------------------------------------------------------------------

    def forward(self, x):
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}, H, W) or (N, {self.num_features}), got {tuple(x.shape)}")
        if self.training:
            self.num_batches_tracked += 1
        return _Function.apply(x, self.weight, self.bias, self)

    # --- cross-check against the golden model -------------------------------------------------

    def check_against_golden(self, x, g=None, seed=0):
        """Run this layer (exact mode) on ``x`` in training mode (on a copy: the module's running
        statistics are not touched) and in eval mode, and compare every output value with
        ``sim/model/golden_bn.py`` run on the same data: y (training and eval), the running statistics,
        and, with ``g`` (default: random), dx, dgamma and dbeta (in the layer's statistics mode,
        exact or low: the configuration carries it). Raises ``AssertionError`` on any
        difference; returns the number of values compared. Slow (pure Python golden model): use
        a small ``x``."""
        import copy
        from sim.model import golden_bn as gb
        from sim.model.golden import float_to_bfp
        if self.mode != "exact":
            raise ValueError("only the exact mode is bit-exact")
        x = x.detach().to(torch.float64)
        xn = _to_nc(x)
        n, C = xn.shape
        cfg = self.cfg_for(n)
        f, fmt, B = cfg.internal, self.fmt, cfg.bfp.block

        def stream(a):
            out = []
            for row in a:
                words = [fmt.encode(float(v)) for v in row]
                for grp in range(cfg.groups):
                    out.append(float_to_bfp(fmt, cfg.bfp, [words[grp * B + l] if grp * B + l < C else 0
                                                           for l in range(B)]))
            return out

        def values(blocks):
            return np.array([[float(v) for v in row] for row in gb.blocks_to_values(cfg, blocks)])

        bits = lambda v: [f.encode(float(t)) for t in v]                  # noqa: E731
        gamma = bits(fb.round_float(f, self.weight.detach().double().numpy())[0])
        beta = bits(fb.round_float(f, self.bias.detach().double().numpy())[0])
        rm = bits(fb.round_float(f, self.running_mean.numpy())[0])
        rs = bits(fb.round_float(f, self.running_sigma.numpy())[0])
        xs = stream(xn)
        compared = 0
        # eval mode
        ev = copy.deepcopy(self).eval()
        with torch.no_grad():
            y_eval = _to_nc(ev(x))
        gy_eval, _, _, _, _ = gb.forward(cfg, xs, gamma, beta, False, rm, rs)
        assert np.array_equal(y_eval, values(gy_eval)), "eval-mode y differs from the golden model"
        compared += y_eval.size
        # training mode, forward and backward
        tr = copy.deepcopy(self).train()
        xt = x.clone().requires_grad_()
        y = tr(xt)
        if g is None:
            g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1e-3
        y.backward(g.to(y.dtype))
        gy_blocks, st, par, grm, grs = gb.forward(cfg, xs, gamma, beta, True, rm, rs)
        assert np.array_equal(_to_nc(y), values(gy_blocks)), "training-mode y differs from the golden model"
        assert bits(tr.running_mean.numpy()) == grm and bits(tr.running_sigma.numpy()) == grs
        gn = _to_nc(g.to(y.dtype))
        s = tr.grad_shift(gn)
        dxb, gp = gb.backward(cfg, xs, stream(np.ldexp(gn, s)), st, par)
        want_dx = np.ldexp(values(dxb), -s)
        assert np.array_equal(_to_nc(xt.grad), want_dx), "dx differs from the golden model"
        for got, key in ((tr.weight.grad, "dgamma"), (tr.bias.grad, "dbeta")):
            want = np.ldexp([float(f.decode(getattr(p, key))) for p in gp], -s)
            assert np.array_equal(got.double().numpy(), np.asarray(want, dtype=got.numpy().dtype)), key
        compared += 2 * y.numel() + 2 * C + 2 * C
        return compared

    # --- numpy implementations -------------------------------------------------------------------

    def _running(self):
        return self.running_mean.double().numpy().copy(), self.running_sigma.double().numpy().copy()

    def _set_running(self, rm, rs):
        with torch.no_grad():
            self.running_mean.copy_(torch.from_numpy(np.asarray(rm, dtype=np.float64)))
            self.running_sigma.copy_(torch.from_numpy(np.asarray(rs, dtype=np.float64)))

    def _forward_numpy(self, x, weight, bias):
        """x: (n, C) float64. Returns ``(y, saved-for-backward or None)``."""
        gamma = weight.double().cpu().numpy()
        beta = bias.double().cpu().numpy()
        return getattr(self, f"_fwd_{self.mode}")(x, gamma, beta)

    def _backward_numpy(self, saved, g, need_dx):
        return getattr(self, f"_bwd_{self.mode}")(saved, g, need_dx)

    # exact ------------------------------------------------------------------------------------

    def _fwd_exact(self, x, gamma, beta):
        n = x.shape[0]
        cfg = self.cfg_for(n) if self.training else self.cfg_for_eval(n)
        f = cfg.internal
        xb = fb.quantize_input(cfg, self.fmt, x)
        gq = fb.round_float(f, gamma)[0]
        bq = fb.round_float(f, beta)[0]
        rm, rs = self._running()
        if self.training:
            yb, st, par, rm, rs = fb.forward(cfg, xb, gq, bq, True, rm, rs)
            self._set_running(rm, rs)
            saved = (cfg, xb, st, par)
        else:
            # the hardware's registers hold internal floats: round whatever the buffers hold
            rm, rs = fb.round_float(f, rm)[0], fb.round_float(f, rs)[0]
            yb, st, par, _, _ = fb.forward(cfg, xb, gq, bq, False, rm, rs)
            saved = None
        self.last_flags = {"x_blocks": xb.n * cfg.groups, "x_sat": int(xb.sat.sum()),
                           "x_special": int(xb.special.sum()), "x_flush": int(xb.flush.sum()),
                           "y_sat": int(yb.sat.sum()), "flat": int(par.flat.sum()),
                           "internal": sorted(set().union(*par.flags))}
        return fb.block_values(cfg, yb), saved

    def cfg_for_eval(self, n):
        # inference uses running statistics: no count constraint, C unused
        return self.cfg

    def _bwd_exact(self, saved, g, need_dx):
        cfg, xb, st, par = saved
        s = self.grad_shift(g)
        gb = fb.quantize_input(cfg, self.fmt, np.ldexp(g, s))
        dxb, gp = fb.backward(cfg, xb, gb, st, par, params_only=not need_dx)
        self.backward_calls["full" if need_dx else "params_only"] += 1
        self.last_flags.update({"g_sat": int(gb.sat.sum()), "g_shift": s,
                                "dx_sat": int(dxb.sat.sum()) if dxb is not None else 0,
                                "internal_bwd": sorted(set().union(*gp.flags)),
                                "params_only": not need_dx})
        dx = np.ldexp(fb.block_values(cfg, dxb), -s) if dxb is not None else None
        return dx, np.ldexp(gp.dgamma, -s), np.ldexp(gp.dbeta, -s)

    # float Range BN (sim/model/reference.py), optionally on input-format-rounded data ----------------

    def _fwd_float(self, x, gamma, beta, quantize=False):
        n = x.shape[0]
        if quantize:
            x = fb.encode_values(self.fmt, x)
        eps = 2.0 ** self.cfg.eps_log2
        if self.training:
            c = self.c_value(n)
            y, cache = reference.range_bn_forward(x, gamma, beta, self.cfg.chunks, c, eps)
            sigma = c * cache["r"] + eps
            rm, rs = self._running()
            mom = 2.0 ** -self.cfg.momentum_shift
            self._set_running(rm + (cache["mu"] - rm) * mom, rs + (sigma - rs) * mom)
            return y, cache
        rm, rs = self._running()
        return gamma * (x - rm) / rs + beta, None

    def _bwd_float(self, cache, g, need_dx, quantize=False):
        s = 0
        if quantize:
            s = self.grad_shift(g)
            g = fb.encode_values(self.fmt, np.ldexp(g, s))
        dx, dgamma, dbeta = reference.range_bn_backward(g, cache)
        return (np.ldexp(dx, -s) if need_dx else None), np.ldexp(dgamma, -s), np.ldexp(dbeta, -s)

    def _fwd_range_only(self, x, gamma, beta):
        return self._fwd_float(x, gamma, beta, quantize=True)

    def _bwd_range_only(self, cache, g, need_dx):
        return self._bwd_float(cache, g, need_dx, quantize=True)

    # standard BN on BFP data ----------------------------------------------------------------------

    def _fwd_bfp_only(self, x, gamma, beta):
        n = x.shape[0]
        cfg = self.cfg
        xv = fb.block_values(cfg, fb.quantize_input(cfg, self.fmt, x))
        if self.training:
            mu = xv.mean(axis=0)
            var = xv.var(axis=0)
            inv = 1.0 / np.sqrt(var + self.std_eps)
            rm, rs = self._running()
            mom = 2.0 ** -self.cfg.momentum_shift
            unbiased = var * n / max(n - 1, 1)
            self._set_running(rm + (mu - rm) * mom, rs + (np.sqrt(unbiased + self.std_eps) - rs) * mom)
        else:
            mu, sigma = self._running()
            inv = 1.0 / sigma
        xhat = (xv - mu) * inv
        y = fb.block_values(cfg, fb.quantize_values(cfg, gamma * xhat + beta))
        return y, ((xhat, inv, gamma) if self.training else None)

    def _bwd_bfp_only(self, saved, g, need_dx):
        xhat, inv, gamma = saved
        cfg = self.cfg
        s = self.grad_shift(g)
        gv = fb.block_values(cfg, fb.quantize_input(cfg, self.fmt, np.ldexp(g, s)))
        n = gv.shape[0]
        dbeta = gv.sum(axis=0)
        dgamma = (gv * xhat).sum(axis=0)
        dx = None
        if need_dx:
            dxs = gamma * inv * (gv - dbeta / n - xhat * dgamma / n)
            dx = np.ldexp(fb.block_values(cfg, fb.quantize_values(cfg, dxs)), -s)
        return dx, np.ldexp(dgamma, -s), np.ldexp(dbeta, -s)
