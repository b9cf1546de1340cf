"""Run every benchmark (`bench/bench_*.py`, each exposing `run(quick: bool) -> dict`) and write results.json.

Each entry follows the platform contract: ours_s, baseline, baseline_s, ratio, ratio_means, target, meets_target.
Baselines run in the same process, on the same data, in the same run: ratios are what we report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# Run only when named (`make soak` / `make soak-quick`): the soak alone takes longer than the whole bench-quick budget.
ON_REQUEST = {"bench_soak"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes in all")
    parser.add_argument("names", nargs="*", help="only these benchmark modules (e.g. silver risk)")
    args = parser.parse_args()
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.names:
        modules = [m for m in modules if m.removeprefix("bench_") in args.names]
    else:
        modules = [m for m in modules if m not in ON_REQUEST]
    results: dict = {}
    out = HERE / "results.json"
    if args.names and out.exists():
        results = json.loads(out.read_text())
    for name in modules:
        t0 = time.perf_counter()
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        entries = importlib.import_module(name).run(quick=args.quick)
        for entry in entries.values():
            entry.setdefault("quick", args.quick)
        results.update(entries)
        print(f"   {time.perf_counter() - t0:.1f}s", flush=True)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print_table(results)
    print(f"\nwritten: {out}")
    return 0


def print_table(results: dict) -> None:
    header = f"{'benchmark':<38} {'ours_s':>9} {'baseline_s':>11} {'ratio':>8} {'target':>10}  ok  baseline"
    print("\n" + header + "\n" + "-" * len(header))
    for name, e in sorted(results.items()):
        def f(x):
            return f"{x:.3f}" if isinstance(x, (int, float)) and x is not None else str(x)
        print(f"{name:<38} {f(e.get('ours_s')):>9} {f(e.get('baseline_s')):>11} {f(e.get('ratio')):>8} "
              f"{str(e.get('target')):>10}  {'yes' if e.get('meets_target') else 'NO ':>3}  {e.get('baseline')}")


if __name__ == "__main__":
    raise SystemExit(main())
