#!/usr/bin/env python3
"""Elements per second of every benchmark criterion measured, from target/criterion.

  python3 benches/summary.py                 # the latest run
  python3 benches/summary.py before after    # two saved baselines side by side, with the target
  python3 benches/summary.py --condensed before after
      # one row per connector and event for the seed sample, one for its slowest hostile
      # variant (and how many of the variants meet the target), and the other groups

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


def fmt(v):
    return f"{v:,.0f}" if v is not None else ""


def condensed(names, runs):
    """Rows of (bench, value per run, target) for BENCHMARKS.md."""
    last = runs[-1]
    rows = []
    renders = {}
    for b in last:
        parts = b.split("/")
        if parts[0] == "render" and len(parts) == 4:
            renders.setdefault((parts[1], parts[2]), []).append(parts[3])
    for b in sorted(last):
        parts = b.split("/")
        if parts[0] == "render":
            continue
        if parts[-1] != "sample" and parts[0] in ("schema", "context", "correlation_key") \
                and parts[1] not in ("recent", "set_facts"):
            continue
        rows.append((b, [r.get(b) for r in runs], target(b)))
    for group in ("schema/validate", "correlation_key/route_for", "context/attempt", "context/facts"):
        variants = [b for b in last if b.startswith(group + "/") and not b.endswith("/sample")]
        if variants:
            slowest = min(variants, key=lambda b: last[b])
            met = sum(1 for b in variants if target(b) and last[b] >= target(b))
            label = f"{group}/hostile (slowest: {slowest.split('/')[-1]}; {met}/{len(variants)} meet)"
            rows.append((label, [r.get(slowest) for r in runs], target(slowest)))
    for (connector, event), incidents in sorted(renders.items()):
        base = f"render/{connector}/{event}"
        rows.append((f"{base}/sample", [r.get(f"{base}/sample") for r in runs], target(base + "/")))
        hostile = [i for i in incidents if i != "sample"]
        if hostile:
            slowest = min(hostile, key=lambda i: last[f"{base}/{i}"])
            t = target(base + "/")
            met = sum(1 for i in hostile if last[f"{base}/{i}"] >= t)
            rows.append((f"{base}/hostile (slowest: {slowest}; {met}/{len(hostile)} meet)",
                         [r.get(f"{base}/{slowest}") for r in runs], t))
    return rows


def main():
    args = sys.argv[1:]
    condense = "--condensed" in args
    names = [a for a in args if a != "--condensed"] or ["new"]
    runs = [rates(n) for n in names]
    head = ["bench"] + names + ["target", "met?"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    if condense:
        rows = condensed(names, runs)
    else:
        benches = sorted(set().union(*runs))
        rows = [(b, [r.get(b) for r in runs], target(b)) for b in benches]
    for b, values, t in rows:
        last = values[-1]
        met = "" if t is None or last is None else ("yes" if last >= t else "**no**")
        cells = [fmt(v) for v in values]
        print(f"| {b} | " + " | ".join(cells) + f" | {f'{t:,}' if t else ''} | {met} |")


if __name__ == "__main__":
    main()
