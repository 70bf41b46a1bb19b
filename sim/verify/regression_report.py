"""Markdown tables of the forward and backward core regressions, from the summaries their benches
write (``tests/test_forward_core.py`` -> ``build/sim/results/forward_core-*.json``,
``tests/test_backward_core.py`` -> ``build/sim/backward-results/W*-*.json``):

    pytest -n 2 tests/test_forward_core.py tests/test_backward_core.py
    PYTHONPATH=. python sim/verify/regression_report.py [--build build/sim]

One row per configuration and element target (the newest summary wins). Nothing here is measured:
the numbers are the bench's own counts.
"""

import argparse
import json
import re
import sys
from pathlib import Path

FORWARD = re.compile(r"forward_core-block(\d+)-channels(\d+)-chunks(\d+)-in_format(\w+?)-width(\d+)"
                     r"-s(\d+)-e(\d+)-\d+\.json$")
BACKWARD = re.compile(r"W(\d+)-B(\d+)-K(\d+)-C(\d+)-(\w+?)-(\d+)-\d+\.json$")


def _newest(paths, key):
    best = {}
    for path in paths:
        k = key(path)
        if k is not None and (k not in best or path.stat().st_mtime > best[k].stat().st_mtime):
            best[k] = path
    return [best[k] for k in sorted(best)]


def forward_rows(root):
    def key(path):
        m = FORWARD.search(path.name)
        if not m:
            return None
        b, c, k, fmt, w, _seed, e = m.groups()
        return int(w), int(b), int(k), int(c), fmt, int(e)
    lines = ["| W | B | K | channels | format | elements checked | y blocks | stats records | "
             "commands (bad) | cycles | mismatches |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in _newest((root / "results").glob("forward_core-*.json"), key):
        w, b, k, c, fmt, _ = key(path)
        r = json.loads(path.read_text())
        bad = sum(r["mismatches"].values()) + len(r.get("errors", []))
        lines.append(f"| {w} | {b} | {k} | {c} | {fmt} | {r['elements']:,} | {r['y_blocks']:,} | "
                     f"{r['stats_records']} | {r['commands']} ({r['bad_commands']}) | {r['cycles']:,} | {bad} |")
    return lines


def backward_rows(root):
    def key(path):
        m = BACKWARD.search(path.name)
        if not m or path.name.startswith("throughput"):
            return None
        w, b, k, c, fmt, e = m.groups()
        return int(w), int(b), int(k), int(c), fmt, int(e)
    lines = ["| W | B | K | channels | format | elements (with dx) | grads records | dx blocks | "
             "saturated dx blocks | cycles | mismatches grads / dx | protocol errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in _newest((root / "backward-results").glob("W*.json"), key):
        w, b, k, c, fmt, _ = key(path)
        r = json.loads(path.read_text())
        lines.append(f"| {w} | {b} | {k} | {c} | {fmt} | {r['elements']:,} ({r['dx_elements']:,}) | "
                     f"{r['grads_records']} | {r['dx_blocks']:,} | {r['sat_blocks']:,} | {r['cycles']:,} | "
                     f"{r['grads_mismatches']} / {r['dx_mismatches']} | "
                     f"{len(r['protocol_errors']) + len(r['status_errors'])} |")
    return lines


def throughput_rows(root):
    lines = ["| W | B | K | channels | n | reduction pairs/cycle | dx blocks/cycle | dx latency | "
             "finalize cycles/channel | last pair -> first grads | busy cycles normal / params-only | "
             "params-only saves |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for path in sorted((root / "backward-results").glob("throughput-*.json")):
        r = json.loads(path.read_text())
        m = re.match(r"throughput-W(\d+)-B(\d+)-", path.name)
        w, b = int(m.group(1)), int(m.group(2))
        rows.append((w, b, r["chunks"], r["channels"], r))
    for w, b, k, c, r in sorted(rows, key=lambda t: t[:4]):
        lines.append(f"| {w} | {b} | {k} | {c} | {r['n']} | {r['reduce_blocks_per_cycle']} | "
                     f"{r['dx_blocks_per_cycle']} | {r['dx_latency']} | {r['finalize_cycles_per_channel']} | "
                     f"{r['reduce_to_first_grads']} | {r['busy_cycles'][0]} / {r['busy_cycles'][1]} | "
                     f"{r['params_only_saved_cycles']} |")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default="build/sim", help="bench output root (default build/sim)")
    args = parser.parse_args(argv)
    root = Path(args.build)
    for title, rows in (("Forward core regression", forward_rows(root)),
                        ("Backward core regression", backward_rows(root)),
                        ("Backward core throughput", throughput_rows(root))):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
