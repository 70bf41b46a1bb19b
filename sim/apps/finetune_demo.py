"""BN-parameters-only fine-tuning on the hardware's arithmetic, against analog in-memory-computing
weight noise.

    python -m sim.apps.finetune_demo            # 3 seeds, into build/finetune

For each seed: train the digits CNN of ``sim.apps.study`` with LightNorm W=8 (bit-exact ``fast_bn``
path), perturb its convolution weights once with the noise model below (the weights are programmed
into the analog array once and stay perturbed), then recover accuracy by training *only* gamma and
beta of the BN layers with the hardware's backward. Reported (test accuracy, eval mode with the
running statistics):

* ``clean``: the trained network;
* ``noisy``: perturbed conv weights, running statistics from clean training;
* ``recalibrated``: running statistics re-estimated on the training set (forward passes only, no
  gradient) -- the cheap baseline any BN network gets for free;
* ``finetuned (last BN, params-only)``: only the last BN layer's gamma/beta trained. Its input needs
  no gradient, so every backward call is the hardware's parameters-only mode
  (``golden_bn.backward(..., params_only=True)`` semantics: reductions + finalize, no dx pass);
* ``finetuned (all BN)``: gamma/beta of all three BN layers trained. The first BN layer's input
  (conv1 of the data, frozen) needs no gradient, so it runs in parameters-only mode; the two later
  layers also compute dx (exact, with the argmax/argmin correction) to reach the earlier gammas.

Noise model (conductance variation of an analog crossbar, e.g. Joshi et al., Nat. Commun. 2020;
Rasch et al., IBM aihwkit): each weight ``w`` of a conv layer becomes
``w (1 + sigma_mul z1) + sigma_add max|W| z2`` with ``z1, z2 ~ N(0, 1)`` independent per weight:
a multiplicative programming error (relative to the weight) and an additive error relative to the
layer's largest weight (conductance range). Defaults ``sigma_mul = 0.2``, ``sigma_add = 0.1``.
The classifier stays digital (noise-free).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np


def perturb(net, seed, sigma_mul, sigma_add):
    """Apply the analog noise model to every conv weight (in place)."""
    import torch
    gen = torch.Generator().manual_seed(50_000 + seed)
    with torch.no_grad():
        for conv in net.convs():
            w = conv.weight
            z1 = torch.randn(w.shape, generator=gen)
            z2 = torch.randn(w.shape, generator=gen)
            w.copy_(w * (1 + sigma_mul * z1) + sigma_add * w.abs().max() * z2)


def recalibrate(net, xtr, batch=64, passes=2):
    """Re-estimate running statistics with forward passes in training mode (no gradients)."""
    import torch
    net.train()
    with torch.no_grad():
        for _ in range(passes):
            for i in range(0, len(xtr) - batch + 1, batch):
                net(xtr[i:i + batch])


def finetune_bn(net, data, seed, epochs, lr, which="all", log=None, tag=""):
    """Train only gamma/beta (of all BN layers or of the last one) on the training set."""
    import torch
    from sim.apps.study import train
    for p in net.parameters():
        p.requires_grad_(False)
    layers = net.norms() if which == "all" else net.norms()[-1:]
    for bn in layers:
        bn.weight.requires_grad_(True)
        bn.bias.requires_grad_(True)
    for bn in net.norms():
        bn.backward_calls = {"full": 0, "params_only": 0}
    hist = train(net, data, seed, epochs, 64, lr, 0.0, log=log, tag=tag)
    calls = {f"bn{i + 1}": dict(bn.backward_calls) for i, bn in enumerate(net.norms())}
    return hist, calls


def run_seed(seed, args, log):
    import torch
    from sim.apps.study import build_model, evaluate, load_digits_split, train
    torch.set_num_threads(args.threads)
    data = load_digits_split()
    xtr, xte, ytr, yte = (torch.from_numpy(a) for a in data)
    t0 = time.perf_counter()
    net = build_model("lightnorm_w8", seed)
    train(net, data, seed, args.epochs, 64, 3e-3, 1e-4, log=log, tag=f"[train seed {seed}]")
    res = {"clean": evaluate(net, xte, yte)}
    clean_state = {k: v.clone() for k, v in net.state_dict().items()}
    perturb(net, seed, args.sigma_mul, args.sigma_add)
    noisy_state = {k: v.clone() for k, v in net.state_dict().items()}
    res["noisy"] = evaluate(net, xte, yte)
    recalibrate(net, xtr)
    res["recalibrated"] = evaluate(net, xte, yte)
    for which, key in (("last", "finetuned_last_bn"), ("all", "finetuned_all_bn")):
        net.load_state_dict(noisy_state)
        hist, modes = finetune_bn(net, data, seed, args.ft_epochs, args.lr, which, log=log,
                                  tag=f"[fine-tune {which} BN seed {seed}]")
        res[key] = evaluate(net, xte, yte)
        res[key + "_history"] = hist["test_acc"]
        res[key + "_backward_calls"] = modes
    # gamma/beta-only really means that: the conv and classifier weights are unchanged
    for k, v in net.state_dict().items():
        if k.startswith(("conv", "fc")):
            assert torch.equal(v, noisy_state[k]), k
    res["wall"] = time.perf_counter() - t0
    del clean_state
    return res


ROWS = [("clean", "clean (trained, LightNorm W=8)"),
        ("noisy", "noisy conv weights"),
        ("recalibrated", "noisy + running statistics re-estimated"),
        ("finetuned_last_bn", "noisy + last BN gamma/beta fine-tuned (params-only backward)"),
        ("finetuned_all_bn", "noisy + all BN gamma/beta fine-tuned")]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.apps.finetune_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/finetune")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10, help="training epochs of the clean network")
    ap.add_argument("--ft-epochs", type=int, default=5, help="fine-tuning epochs")
    ap.add_argument("--lr", type=float, default=1e-2, help="fine-tuning learning rate (Adam)")
    ap.add_argument("--sigma-mul", type=float, default=0.2)
    ap.add_argument("--sigma-add", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the work is mostly NumPy)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg):
        if not args.quiet:
            print(msg, flush=True)
    t0 = time.perf_counter()
    runs = {}
    for seed in range(args.seeds):
        runs[seed] = run_seed(seed, args, log)
        r = runs[seed]
        print(f"seed {seed}: " + ", ".join(f"{k} {100 * r[k]:.2f}%" for k, _ in ROWS) +
              f" ({r['wall']:.0f} s)", flush=True)
    wall = time.perf_counter() - t0
    lines = ["| state | test accuracy (mean +- std over seeds) | per seed |", "|---|---|---|"]
    summary = {}
    for key, label in ROWS:
        v = np.array([100 * runs[s][key] for s in runs])
        sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
        summary[key] = {"mean": float(v.mean()), "std": sd, "all": v.tolist()}
        lines.append(f"| {label} | {v.mean():.2f} +- {sd:.2f} % | {', '.join(f'{a:.2f}' for a in v)} |")
    text = "\n".join(lines)
    print()
    print(text)
    print(f"\nhardware backward calls per BN layer (seed 0), last-BN run: "
          f"{runs[0]['finetuned_last_bn_backward_calls']}; all-BN run: {runs[0]['finetuned_all_bn_backward_calls']}")
    print(f"wall time {wall:.0f} s")
    (out / "results.json").write_text(json.dumps(dict(
        args=vars(args), summary=summary, wall_seconds=wall,
        runs={str(s): r for s, r in runs.items()}), indent=1) + "\n")
    (out / "results.md").write_text(text + f"\n\nwall time {wall:.0f} s\n")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    return summary


if __name__ == "__main__":
    main()
