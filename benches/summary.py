#!/usr/bin/env python3
"""Elements per second of every benchmark criterion measured, from target/criterion.

  python3 benches/summary.py                 # the latest run
  python3 benches/summary.py before after    # two saved baselines side by side, with the target

A benchmark's rate is its elements (the throughput it declares) over the median time of one
iteration. Targets (BENCHMARKS.md): 20,000/s per render of a ticketing connector, 100,000/s for
the generic envelope and for a render context.
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")
GENERIC = ("render/generic/", "render/ticketing/", "render/auth-oncall/")


def target(bench):
    if bench.startswith(GENERIC):
        return 100_000
    if bench.startswith("render/"):
        return 20_000
    if bench.startswith("context/"):
        return 100_000
    return None


def rates(baseline):
    out = {}
    for dirpath, _, files in os.walk(ROOT):
        if os.path.basename(dirpath) != baseline or "benchmark.json" not in files:
            continue
        with open(os.path.join(dirpath, "benchmark.json")) as f:
            meta = json.load(f)
        with open(os.path.join(dirpath, "estimates.json")) as f:
            est = json.load(f)
        elements = (meta.get("throughput") or {}).get("Elements", 1)
        ns = est["median"]["point_estimate"]
        out[meta["full_id"]] = elements / (ns / 1e9)
    return out


def main():
    names = sys.argv[1:] or ["new"]
    runs = [rates(n) for n in names]
    benches = sorted(set().union(*runs))
    head = ["bench"] + names + ["target", "met?"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for b in benches:
        cells = [f"{r[b]:,.0f}" if b in r else "" for r in runs]
        t = target(b)
        last = runs[-1].get(b)
        met = "" if t is None or last is None else ("yes" if last >= t else "**no**")
        print(f"| {b} | " + " | ".join(cells) + f" | {f'{t:,}' if t else ''} | {met} |")


if __name__ == "__main__":
    main()
