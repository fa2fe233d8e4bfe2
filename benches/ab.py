#!/usr/bin/env python3
"""Two warren binaries side by side on compare.py's scenarios (A B, B A, ...).

    benches/ab.py OLD_BINARY NEW_BINARY [--only 1,2,3] [--rounds 3] [--out FILE]

For a change's before/after: build the old commit's binary into a copy first. Prints one
table of medians with the change in percent; writes every run to --out (JSON).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--only", default="1,2,3,4,5,6,7,8a,9")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--out", default="ab.json")
    a = ap.parse_args()
    _, perf = compare.build()
    bins = {"old": a.old, "new": a.new}
    wanted = a.only.split(",")
    scen = [s for s in compare.SCENARIOS if s[0] in wanted]
    res = {}
    for rnd in range(a.rounds):
        order = ["old", "new"] if rnd % 2 == 0 else ["new", "old"]
        for sid, _title, args, metric, _unit, _better in scen:
            for name in order:
                b = compare.Warren(bins[name])
                try:
                    with tempfile.TemporaryDirectory() as wd:
                        r = compare.measure(sid, perf, b, args, a.duration, wd)
                finally:
                    b.stop()
                res.setdefault(sid, {}).setdefault(name, []).append(r[metric])
                compare.log(f"  ({sid}) {name}: {r[metric]:,.1f}")
    print("\n| scenario | old | new | change |\n|---|---|---|---|")
    for sid, title, _args, _metric, unit, better in scen:
        o = statistics.median(res[sid]["old"])
        n = statistics.median(res[sid]["new"])
        print(f"| ({sid}) {title} | {o:,.1f} {unit} | {n:,.1f} {unit} | "
              f"{100 * (n / o - 1):+.1f}% ({better} is better) |")
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
