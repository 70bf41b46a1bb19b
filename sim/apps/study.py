"""Training-accuracy study: a small CNN on scikit-learn's digits (8x8, shipped with the package, no
download) with FP32 BN, float Range BN, LightNorm at W = 4, 6, 8 (the bit-exact hardware arithmetic
through ``sim.model.fast_bn``), the ablations BFP-only and range-only, and no BN (Fixup-style init).

    python -m sim.apps.study                 # everything, 3 seeds, into build/study
    python -m sim.apps.study --quick         # 2 epochs, 1 seed: a smoke run

Writes ``results.json`` (every number), ``results.md`` (the table) and ``accuracy.png`` (test
accuracy against epoch, mean and min/max band over seeds) into ``--out``. Needs the ``torch`` extra.
"""

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from hw.formats import STATS_GUARD_DEFAULT as _G

#: method name -> (label, kind, options)
METHODS = {
    "fp32_bn":      ("FP32 BN (nn.BatchNorm2d)", "torch_bn", {}),
    "float_range":  ("Range BN, float64", "ln", {"mode": "float"}),
    "lightnorm_w4": ("LightNorm W=4 (bit-exact)", "ln", {"mode": "exact", "width": 4}),
    "lightnorm_w6": ("LightNorm W=6 (bit-exact)", "ln", {"mode": "exact", "width": 6}),
    "lightnorm_w8": ("LightNorm W=8 (bit-exact)", "ln", {"mode": "exact", "width": 8}),
    "lightnorm_w8_m8": ("LightNorm W=8, M=8 (bit-exact)", "ln", {"mode": "exact", "width": 8, "internal_frac_bits": 8}),
    "lightnorm_w8_m6": ("LightNorm W=8, M=6 (bit-exact)", "ln", {"mode": "exact", "width": 8, "internal_frac_bits": 6}),
    "lightnorm_w8_k8": ("LightNorm W=8, K=8 (bit-exact)", "ln", {"mode": "exact", "width": 8, "chunks": 8}),
    "lightnorm_w4_low": (f"LightNorm W=4, low statistics G={_G} (bit-exact)", "ln", {"mode": "exact", "width": 4, "stats": "low"}),
    "lightnorm_w6_low": (f"LightNorm W=6, low statistics G={_G} (bit-exact)", "ln", {"mode": "exact", "width": 6, "stats": "low"}),
    "lightnorm_w8_low": (f"LightNorm W=8, low statistics G={_G} (bit-exact)", "ln", {"mode": "exact", "width": 8, "stats": "low"}),
    "bfp_only":     ("BFP only W=8 (standard BN statistics)", "ln", {"mode": "bfp_only", "width": 8}),
    "range_only":   ("Range only (fp10 inputs, no BFP)", "ln", {"mode": "range_only"}),
    "no_bn_fixup":  ("No BN, Fixup-style init", "fixup", {}),
}

#: Shared hyperparameters (one set for every method; chosen for FP32 BN, not tuned per method).
DEFAULTS = dict(epochs=15, batch=64, lr=3e-3, weight_decay=1e-4, seeds=3, channels=(16, 32, 32),
                block=16, in_format="fp10", chunks=1, test_fraction=0.25, split_seed=0)


def load_digits_split(test_fraction=0.25, split_seed=0):
    """scikit-learn's digits, pixels scaled to [0, 1], one stratified split used by every run."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    return train_test_split(x, d.target.astype(np.int64), test_size=test_fraction,
                            random_state=split_seed, stratify=d.target)


def _torch_defs():
    import torch
    from torch import nn

    class Affine(nn.Module):
        """Fixup's scalar multiplier and bias (in place of a BN layer)."""

        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.shift = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x * self.scale + self.shift

    class Net(nn.Module):
        """conv3x3-norm-ReLU x2, maxpool 2, conv3x3-norm-ReLU, global average pool, linear."""

        def __init__(self, norm, channels=(16, 32, 32)):
            super().__init__()
            c1, c2, c3 = channels
            self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
            self.bn1 = norm(c1)
            self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
            self.bn2 = norm(c2)
            self.conv3 = nn.Conv2d(c2, c3, 3, padding=1, bias=False)
            self.bn3 = norm(c3)
            self.fc = nn.Linear(c3, 10)

        def features(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            x = nn.functional.max_pool2d(x, 2)
            x = torch.relu(self.bn3(self.conv3(x)))
            return x.mean(dim=(2, 3))

        def forward(self, x):
            return self.fc(self.features(x))

        def norms(self):
            return [self.bn1, self.bn2, self.bn3]

        def convs(self):
            return [self.conv1, self.conv2, self.conv3]

    return Affine, Net


def build_model(method, seed, channels=(16, 32, 32), block=16, in_format="fp10", chunks=1):
    """The CNN for ``method`` with parameters initialised from ``seed``."""
    import torch
    from torch import nn
    from sim.apps.torch_bn import LightNormBatchNorm2d
    Affine, Net = _torch_defs()
    _, kind, opts = METHODS[method]
    torch.manual_seed(seed)
    if kind == "torch_bn":
        norm = nn.BatchNorm2d
    elif kind == "ln":
        def norm(c):
            # a method's own options (its K or M) override the study's
            return LightNormBatchNorm2d(c, **{"block": block, "in_format": in_format, "chunks": chunks, **opts})
    else:
        norm = lambda c: Affine()      # noqa: E731
    net = Net(norm, channels)
    if kind == "fixup":
        # Fixup (Zhang et al., ICLR 2019) without residual branches: He init of every conv,
        # scalar multiplier/bias in place of normalization, classifier initialised to zero.
        for conv in net.convs():
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        nn.init.zeros_(net.fc.weight)
        nn.init.zeros_(net.fc.bias)
    return net


def evaluate(net, x, y, batch=512):
    import torch
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            correct += (net(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    return correct / len(x)


def train(net, data, seed, epochs, batch, lr, weight_decay, log=None, tag=""):
    """Adam with cosine decay, shuffled mini-batches (last partial batch dropped). Returns a dict
    with per-epoch train loss and test accuracy."""
    import torch
    xtr, xte, ytr, yte = (torch.from_numpy(a) for a in data)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps = epochs * (len(xtr) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    gen = torch.Generator().manual_seed(10_000 + seed)
    hist = {"loss": [], "test_acc": [], "epoch_time": []}
    for ep in range(epochs):
        t0 = time.perf_counter()
        net.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, count = 0.0, 0
        for i in range(0, len(xtr) - batch + 1, batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            count += len(idx)
        acc = evaluate(net, xte, yte)
        hist["loss"].append(total / count)
        hist["test_acc"].append(acc)
        hist["epoch_time"].append(time.perf_counter() - t0)
        if log:
            log(f"{tag} epoch {ep + 1:2d}/{epochs} loss {total / count:.4f} test {100 * acc:5.1f}% "
                f"({hist['epoch_time'][-1]:.1f} s)")
    return hist


def verify_exact(net, x):
    """For every exact-mode LightNorm layer of ``net``: capture its input on the images ``x`` and
    compare the layer with the golden model bit for bit (``check_against_golden``). Returns the
    number of values compared (0 if the net has no exact layer)."""
    import torch
    from sim.apps.torch_bn import LightNormBatchNorm2d
    layers = [m for m in net.modules() if isinstance(m, LightNormBatchNorm2d) and m.mode == "exact"]
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, inp: inputs.__setitem__(id(mod), inp[0].detach()))
             for m in layers]
    net.eval()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return sum(m.check_against_golden(inputs[id(m)]) for m in layers)


def _log(msg):
    print(msg, flush=True)


def run_one(job):
    """One (method, seed) training run; executed in a worker process."""
    import torch
    torch.set_num_threads(job["threads"])
    cfg = job["cfg"]
    data = load_digits_split(cfg["test_fraction"], cfg["split_seed"])
    net = build_model(job["method"], job["seed"], tuple(cfg["channels"]), cfg["block"], cfg["in_format"], cfg["chunks"])
    t0, c0 = time.perf_counter(), time.process_time()
    hist = train(net, data, job["seed"], cfg["epochs"], cfg["batch"], cfg["lr"], cfg["weight_decay"],
                 log=_log if job["verbose"] else None, tag=f"[{job['method']} seed {job['seed']}]")
    hist["wall"] = time.perf_counter() - t0
    hist["cpu"] = time.process_time() - c0
    # proof that the run used the bit-exact path: each LightNorm layer of the trained net against
    # the golden model on two test images (forward in training and eval mode, running statistics,
    # backward); a few CPU seconds per network with the pure-Python golden model
    if job.get("verify"):
        hist["golden_checked_values"] = verify_exact(net, torch.from_numpy(data[1][:2]))
    if job.get("save"):
        torch.save(net.state_dict(), job["save"])
    return job["method"], job["seed"], hist


def summarize(results, methods):
    rows = []
    for m in methods:
        runs = results.get(m, {})
        if not runs:
            continue
        final = np.array([100 * h["test_acc"][-1] for h in runs.values()])
        best = np.array([100 * max(h["test_acc"]) for h in runs.values()])
        wall = np.array([h["wall"] for h in runs.values()])
        cpu = np.array([h["cpu"] for h in runs.values()])
        rows.append(dict(method=m, label=METHODS[m][0], seeds=len(final), final_mean=float(final.mean()),
                         final_std=float(final.std(ddof=1)) if len(final) > 1 else 0.0,
                         final_all=final.tolist(), best_mean=float(best.mean()), wall_mean=float(wall.mean()),
                         cpu_mean=float(cpu.mean())))
    return rows


def table(rows, ref="fp32_bn"):
    base = next((r["final_mean"] for r in rows if r["method"] == ref), None)
    lines = ["| method | test accuracy, final epoch (mean +- std) | per seed | vs FP32 BN | CPU s per run |",
             "|---|---|---|---|---|"]
    for r in rows:
        delta = f"{r['final_mean'] - base:+.2f} pp" if base is not None else ""
        seeds = ", ".join(f"{v:.2f}" for v in r["final_all"])
        lines.append(f"| {r['label']} | {r['final_mean']:.2f} +- {r['final_std']:.2f} % | {seeds} | {delta} | "
                     f"{r['cpu_mean']:.0f} |")
    return "\n".join(lines)


def plot(results, methods, path):
    """Test accuracy against epoch: mean over seeds, band = min..max; full scale and zoomed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for m in methods:
        runs = results.get(m)
        if not runs:
            continue
        acc = 100 * np.array([h["test_acc"] for h in runs.values()])
        ep = np.arange(1, acc.shape[1] + 1)
        for ax in axes:
            line, = ax.plot(ep, acc.mean(0), label=METHODS[m][0], marker="o", ms=3)
            ax.fill_between(ep, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.12)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(0, 100)
    axes[0].set_title("digits 8x8, small CNN: test accuracy (mean of seeds, band min..max)", fontsize=10)
    axes[1].set_ylim(90, 100)
    axes[1].set_title("zoom", fontsize=10)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def replot(out):
    """Rebuild the table and the plot from ``out/results.json`` (no training)."""
    data = json.loads((Path(out) / "results.json").read_text())
    methods = list(data["meta"]["methods"])
    results = {m: {int(s): h for s, h in runs.items()} for m, runs in data["runs"].items()}
    rows = summarize(results, methods)
    plot(results, methods, Path(out) / "accuracy.png")
    return table(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m sim.apps.study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="build/study", help="output directory (default build/study)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--seeds", type=int, default=DEFAULTS["seeds"])
    ap.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2, one torch thread each)")
    ap.add_argument("--chunks", type=int, default=DEFAULTS["chunks"], help="Range-BN chunks K")
    ap.add_argument("--quick", action="store_true", help="2 epochs, 1 seed (smoke run)")
    ap.add_argument("--quiet", action="store_true", help="no per-epoch lines")
    ap.add_argument("--verify", choices=("all", "first", "none"), default="all",
                    help="check the trained LightNorm layers against golden_bn: every run (default), seed 0 only, none")
    ap.add_argument("--replot", action="store_true", help="only rebuild table and plot from --out/results.json")
    args = ap.parse_args(argv)
    if args.replot:
        print(replot(args.out))
        return None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            ap.error(f"unknown method {m!r}; known: {', '.join(METHODS)}")
    cfg = dict(DEFAULTS, epochs=2 if args.quick else args.epochs, seeds=1 if args.quick else args.seeds,
               chunks=args.chunks)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    threads = 2 if args.jobs <= 1 else 1
    jobs = [dict(method=m, seed=s, cfg=cfg, threads=threads, verbose=not args.quiet,
                 verify=args.verify == "all" or (args.verify == "first" and s == 0))
            for s in range(cfg["seeds"]) for m in methods]
    # the bit-exact runs are the slow ones: start them first so the pool stays busy
    jobs.sort(key=lambda j: METHODS[j["method"]][2].get("mode") not in ("exact", "bfp_only"))
    print(f"study: {len(jobs)} runs ({len(methods)} methods x {cfg['seeds']} seeds, {cfg['epochs']} epochs) "
          f"on {args.jobs} worker(s)", flush=True)
    t0 = time.perf_counter()
    results = {}
    done = 0

    def collect(res):
        nonlocal done
        m, s, hist = res
        results.setdefault(m, {})[s] = hist
        done += 1
        checked = f", {hist['golden_checked_values']} values bit-identical to golden_bn" \
            if hist.get("golden_checked_values") else ""
        print(f"done {done}/{len(jobs)}: {m} seed {s}: final test {100 * hist['test_acc'][-1]:.2f}%{checked} "
              f"in {hist['wall']:.0f} s, {hist['cpu']:.0f} CPU s (elapsed {time.perf_counter() - t0:.0f} s)", flush=True)

    if args.jobs <= 1:
        for j in jobs:
            collect(run_one(j))
    else:
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(args.jobs) as pool:
            for res in pool.imap_unordered(run_one, jobs):
                collect(res)
    wall = time.perf_counter() - t0
    results = {m: dict(sorted(results[m].items())) for m in methods if m in results}
    rows = summarize(results, methods)
    text = table(rows)
    print()
    print(text)
    print(f"\nstudy wall time: {wall:.0f} s ({wall / 60:.1f} min) on {args.jobs} worker(s)")
    import torch
    meta = dict(config=cfg, methods={m: METHODS[m][0] for m in methods}, wall_seconds=wall, jobs=args.jobs,
                torch=torch.__version__, numpy=np.__version__, python=sys.version.split()[0],
                cpus=os.cpu_count())
    (out / "results.json").write_text(json.dumps(dict(meta=meta, summary=rows, runs={
        m: {str(s): h for s, h in runs.items()} for m, runs in results.items()}), indent=1) + "\n")
    (out / "results.md").write_text(text + f"\n\nwall time {wall:.0f} s, {args.jobs} worker(s)\n")
    plot(results, methods, out / "accuracy.png")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'accuracy.png'}")
    return rows


if __name__ == "__main__":
    main()
