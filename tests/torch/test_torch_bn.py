"""LightNormBatchNorm2d (sim/apps/torch_bn.py): bit-exact against the golden model through torch,
parameters-only backward, running statistics, the ablation modes. Opt-in:
``pip install -e .[torch] && pytest tests/torch``."""

import math

import numpy as np
import pytest
import torch

from hw.formats import float_format
from sim.model import fast_bn as fb
from sim.model import golden_bn as gb
from sim.model.golden import float_to_bfp
from sim.apps.torch_bn import MODES, LightNormBatchNorm2d, grad_shift


def golden_stream(cfg, fmt, x):
    B, G = cfg.bfp.block, cfg.groups
    out = []
    for row in x:
        words = [fmt.encode(float(v)) for v in row]
        for g in range(G):
            out.append(float_to_bfp(fmt, cfg.bfp, [words[g * B + l] if g * B + l < cfg.channels else 0
                                                   for l in range(B)]))
    return out


def nc(t):
    return t.detach().double().permute(0, 2, 3, 1).reshape(-1, t.shape[1]).numpy()


def golden_values(cfg, blocks):
    return np.array([[float(v) for v in row] for row in gb.blocks_to_values(cfg, blocks)])


@pytest.mark.parametrize("width,block,chunks,C,fmt", [(8, 16, 1, 5, "fp10"), (5, 3, 8, 7, "fp10"),
                                                       (4, 4, 2, 4, "e5m2"), (12, 5, 4, 6, "fp16")])
def test_exact_mode_matches_golden(width, block, chunks, C, fmt):
    torch.manual_seed(width)
    bn = LightNormBatchNorm2d(C, width=width, block=block, in_format=fmt, chunks=chunks)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(C))
        bn.bias.copy_(torch.randn(C))
    x = (torch.randn(2, C, 4, 4) * 3).requires_grad_()
    y = bn(x)
    gy = torch.randn_like(y) * 1e-4
    y.backward(gy)

    n = 32
    cfg = bn.cfg_for(n)
    f = cfg.internal
    fmt = float_format(fmt)
    xs = golden_stream(cfg, fmt, nc(x))
    gamma = [f.encode(float(v)) for v in bn.weight.detach()]
    beta = [f.encode(float(v)) for v in bn.bias.detach()]
    rm0, rs0 = gb.running_reset(cfg)
    gy_blocks, st, par, rm, rs = gb.forward(cfg, xs, gamma, beta, True, [rm0] * C, [rs0] * C)
    assert np.array_equal(nc(y), golden_values(cfg, gy_blocks))
    assert fb.to_bits(f, bn.running_mean.numpy()) == rm
    assert fb.to_bits(f, bn.running_sigma.numpy()) == rs

    g = nc(gy)
    s = grad_shift(fmt, g)
    assert s > 0
    gs = golden_stream(cfg, fmt, np.ldexp(g, s))
    dx, gp = gb.backward(cfg, xs, gs, st, par)
    want_dx = np.ldexp(golden_values(cfg, dx), -s)
    assert np.array_equal(nc(x.grad), want_dx.astype(np.float32).astype(np.float64))
    want_dg = np.ldexp(np.array([float(f.decode(p.dgamma)) for p in gp]), -s)
    want_db = np.ldexp(np.array([float(f.decode(p.dbeta)) for p in gp]), -s)
    assert np.array_equal(bn.weight.grad.double().numpy(), want_dg.astype(np.float32))
    assert np.array_equal(bn.bias.grad.double().numpy(), want_db.astype(np.float32))

    # inference uses the running statistics
    bn.eval()
    with torch.no_grad():
        y2 = bn(x)
    iy, _, _, _, _ = gb.forward(cfg, xs, gamma, beta, False, rm, rs)
    assert np.array_equal(nc(y2), golden_values(cfg, iy))


def test_params_only_when_input_needs_no_grad():
    torch.manual_seed(0)
    bn = LightNormBatchNorm2d(6, chunks=2)
    x = torch.randn(4, 6, 3, 3)
    y = bn(x)
    (y * torch.randn_like(y)).sum().backward()
    assert bn.last_flags["params_only"] is True
    assert bn.weight.grad is not None and bn.bias.grad is not None
    g1 = bn.weight.grad.clone()
    bn.weight.grad = None
    bn.bias.grad = None
    bn.running_mean.zero_()
    bn.running_sigma.fill_(1)
    torch.manual_seed(0)
    x2 = torch.randn(4, 6, 3, 3).requires_grad_()
    y2 = bn(x2)
    (y2 * torch.randn_like(y2)).sum().backward()
    assert bn.last_flags["params_only"] is False
    assert torch.equal(g1, bn.weight.grad)


def test_float_mode_gradcheck():
    """The float mode is sim/model/reference.py: its backward is the exact gradient of its forward."""
    torch.manual_seed(1)
    bn = LightNormBatchNorm2d(3, chunks=2, mode="float").double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: bn(t), (x,), eps=1e-6, atol=1e-5)


def test_float_mode_matches_autograd_range_bn():
    torch.manual_seed(2)
    C, K = 4, 2
    bn = LightNormBatchNorm2d(C, chunks=K, mode="float")
    x = torch.randn(4, C, 3, 3, dtype=torch.float64, requires_grad=True)
    y = bn(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    xr = x.detach().clone().requires_grad_()
    t = xr.permute(0, 2, 3, 1).reshape(-1, C)
    chunks = t.reshape(K, -1, C)
    r = (chunks.max(dim=1).values - chunks.min(dim=1).values).mean(dim=0)
    c = bn.c_value(t.shape[0])
    yr = (t - t.mean(0)) / (c * r + 2.0 ** -16)
    yr = yr.reshape(4, 3, 3, C).permute(0, 3, 1, 2)
    yr.backward(gy)
    assert torch.allclose(y.double(), yr, atol=1e-12)
    assert torch.allclose(x.grad, xr.grad, atol=1e-10)


def test_bfp_only_close_to_batchnorm_when_wide():
    torch.manual_seed(3)
    bn = LightNormBatchNorm2d(5, width=16, block=4, in_format="e6m20", mode="bfp_only")
    ref = torch.nn.BatchNorm2d(5)
    x = (torch.randn(4, 5, 3, 3) * 2).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, yr = bn(x), ref(xr)
    gy = torch.randn_like(y) * 1e-3
    y.backward(gy)
    yr.backward(gy)
    assert torch.allclose(y, yr, atol=1e-3)
    assert torch.allclose(x.grad, xr.grad, rtol=1e-2, atol=1e-5)
    assert torch.allclose(bn.weight.grad, ref.weight.grad, rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "float", "range_only", "bfp_only"])
def test_modes_train_a_tiny_net(mode):
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1, bias=False),
                              LightNormBatchNorm2d(8, mode=mode, chunks=2), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    x = torch.randn(32, 1, 4, 4)
    yl = (x[:, 0, :2].mean(dim=(1, 2)) > x[:, 0, 2:].mean(dim=(1, 2))).long()
    x[:, 0, :2] += yl[:, None, None] * 0.5
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), yl)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.7 * losses[0]
    net.eval()
    with torch.no_grad():
        assert torch.isfinite(net(x)).all()


def test_state_dict_and_repr():
    bn = LightNormBatchNorm2d(3, width=6)
    sd = bn.state_dict()
    assert set(sd) == {"weight", "bias", "running_mean", "running_sigma", "num_batches_tracked"}
    assert "width=6" in repr(bn) and "internal_frac_bits=10" in repr(bn)
    with pytest.raises(ValueError):
        LightNormBatchNorm2d(3, mode="nope")
    with pytest.raises(ValueError):
        bn(torch.randn(2, 4, 2, 2))


@pytest.mark.parametrize("width,block,C,chunks,stats,guard", [
    (8, 16, 6, 1, "exact", 4), (5, 3, 7, 4, "exact", 4),
    (8, 16, 6, 1, "low", 4), (5, 3, 7, 4, "low", 0), (4, 4, 5, 2, "low", 16)])
def test_check_against_golden(width, block, C, chunks, stats, guard):
    torch.manual_seed(5)
    bn = LightNormBatchNorm2d(C, width=width, block=block, chunks=chunks, stats=stats, stats_guard=guard)
    assert bn.cfg.stats == stats and bn.cfg.stats_guard == guard
    with torch.no_grad():
        bn.weight.copy_(torch.rand(C) + 0.5)
        bn.bias.copy_(torch.randn(C))
    for _ in range(3):                       # move the running statistics away from their reset
        bn(torch.randn(2, C, 4, 4))
    assert bn.check_against_golden(torch.randn(2, C, 4, 4) * 2) > 0
    # the check does not touch the module's running statistics
    rm = bn.running_mean.clone()
    bn.check_against_golden(torch.randn(2, C, 4, 4))
    assert torch.equal(rm, bn.running_mean)


def test_low_stats_layer_differs_from_exact_and_is_refused_when_bad():
    """stats="low" reaches the hardware arithmetic (the sums are windowed: the outputs differ from
    exact mode on data whose exponents exceed G), and bad values are refused with
    hw.formats.check_stats's message."""
    from hw.formats import check_stats
    torch.manual_seed(1)
    x = torch.randn(2, 5, 4, 4) * 3 + 2
    outs = {}
    for stats in ("exact", "low"):
        bn = LightNormBatchNorm2d(5, width=8, block=4, stats=stats, stats_guard=0)
        xt = x.clone().requires_grad_()
        y = bn(xt)
        y.backward(torch.ones_like(y) * 1e-3 + y.detach() * 1e-3)
        outs[stats] = (y.detach(), xt.grad, bn.weight.grad, bn.bias.grad)
    assert any(not torch.equal(a, b) for a, b in zip(outs["exact"], outs["low"]))
    assert "stats=low, stats_guard=0" in repr(bn)
    for stats, guard in (("lo", 4), ("low", 17), ("low", -1), ("exact", 2.5)):
        with pytest.raises(ValueError) as want:
            check_stats(stats, guard)
        with pytest.raises(ValueError) as got:
            LightNormBatchNorm2d(4, stats=stats, stats_guard=guard)
        assert str(got.value) == str(want.value)


def test_study_low_methods():
    from sim.apps.study import METHODS, build_model, verify_exact
    for w in (4, 6, 8):
        assert METHODS[f"lightnorm_w{w}_low"][2] == {"mode": "exact", "width": w, "stats": "low"}
    net = build_model("lightnorm_w8_low", 0, channels=(4, 5, 3), block=3)
    assert all(bn.cfg.stats == "low" and bn.cfg.stats_guard == 4 for bn in net.norms())
    net.train()
    net(torch.rand(4, 1, 8, 8))
    assert verify_exact(net, torch.rand(2, 1, 8, 8)) > 0


def test_study_verify_exact_on_a_small_net():
    from sim.apps.study import build_model, verify_exact
    net = build_model("lightnorm_w6", 0, channels=(4, 5, 3), block=3, chunks=2)
    net.train()
    for _ in range(2):
        net(torch.rand(4, 1, 8, 8))
    assert verify_exact(net, torch.rand(2, 1, 8, 8)) > 0
    assert verify_exact(build_model("fp32_bn", 0), torch.rand(2, 1, 8, 8)) == 0


@pytest.mark.parametrize("name", ["bf16", "fp32", "e7m2"])
@pytest.mark.parametrize("mode", MODES)
def test_refuses_what_the_generator_refuses(name, mode):
    """An input format with more than BN_MAX_EXP_BITS exponent bits is refused in every mode, with
    the generator's one message (hw.formats.check_bn_format)."""
    from gen.units import ParamError, Params
    with pytest.raises(ParamError) as want:
        Params(in_format=name)
    with pytest.raises(ValueError) as got:
        LightNormBatchNorm2d(4, in_format=name, mode=mode)
    assert str(got.value) == str(want.value)
