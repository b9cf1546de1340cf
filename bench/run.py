"""Run every benchmark (`bench/bench_*.py`, each exposing `run(quick: bool) -> dict`) and write results.json.

Each entry follows the platform contract: ours_s, baseline, baseline_s, ratio, ratio_means, target, meets_target;
and states what it measured: `input` (its size), `command` (what of ours is timed), `baseline_command` (what the
baseline runs; "none: ..." for an absolute target). A module that leaves one out fails the run (`check_entries`).
`baseline_is_limit: true` marks a baseline that is a physical limit (an API ceiling, `psql \\copy`). `machine` is
stamped here, once per module, just before it runs (`machine()`), and `bench`, the module that wrote the entry: a
run replaces its modules' entries and keeps the others' (`merge`). Baselines run in the same process, on the same
data, in the same run: ratios are what we report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
# Run only when named (`make soak` / `make soak-quick`): the soak alone takes longer than the whole bench-quick budget.
ON_REQUEST = {"bench_soak"}
REQUIRED = ("input", "command", "baseline_command")
BUSY_CORES = 0.5  # other processes using more than half a core on average: the figures are noisy


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, under 2 minutes in all")
    parser.add_argument("names", nargs="*", help="only these benchmark modules (e.g. silver risk)")
    args = parser.parse_args()
    available = sorted(p.stem for p in HERE.glob("bench_*.py"))
    modules = select(args.names, available)
    out = HERE / "results.json"
    fresh: dict[str, dict] = {}
    for name in modules:
        conditions = machine(0.25 if args.quick else 0.5)
        t0 = time.perf_counter()
        print(f"== {name} ({'quick' if args.quick else 'full'})", flush=True)
        entries = importlib.import_module(name).run(quick=args.quick)
        check_entries(name, entries)
        for entry in entries.values():
            entry.setdefault("quick", args.quick)
            entry["machine"] = conditions
            entry["bench"] = name
        fresh[name] = entries
        print(f"   {time.perf_counter() - t0:.1f}s", flush=True)
    results = merge(json.loads(out.read_text()) if out.exists() else {}, fresh, available, args.quick)
    out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print_machines(results)
    print_table(results)
    print_verdicts(results)
    print(f"\nwritten: {out}")
    return 0


def select(names: list[str], available: list[str]) -> list[str]:
    """The modules to run: those named (an unknown name fails, naming it), else all but ON_REQUEST."""
    if not names:
        return [m for m in available if m not in ON_REQUEST]
    known = [m.removeprefix("bench_") for m in available]
    if unknown := [n for n in names if n not in known]:
        raise SystemExit("bench/run.py: " + ", ".join(f"no benchmark {n!r} (bench/bench_{n}.py)" for n in unknown)
                         + f"; known: {', '.join(known)}")
    return [m for m in available if m.removeprefix("bench_") in names]


def merge(previous: dict, fresh: dict[str, dict], available: list[str], quick: bool) -> dict:
    """results.json after a run: `fresh` (module -> its entries) replaces what its modules wrote before; the
    entries of modules not run now (the soak after `make bench`, the others after a named run) stay as measured.
    An entry whose module is gone, or that its module no longer writes, is dropped: each entry names its module
    (`bench`). A quick run drops no full-size figure (those a quick run skips, such as the DAG tests, stay)."""
    def keep(e: dict) -> bool:
        return e.get("bench") in available and (e["bench"] not in fresh or (quick and not e.get("quick")))

    kept = {k: e for k, e in previous.items() if keep(e)}
    for entries in fresh.values():
        kept.update(entries)
    return kept


def check_entries(module: str, entries: dict) -> None:
    """Fail when an entry does not say what it measured: its input size, our command, the baseline's command."""
    for name, entry in entries.items():
        missing = [k for k in REQUIRED if not entry.get(k)]
        if missing:
            raise SystemExit(f"bench/{module}.py: entry {name!r} lacks {', '.join(missing)} "
                             f"(every entry states {', '.join(REQUIRED)})")


def machine(sample_s: float = 0.5) -> dict:
    """The conditions a benchmark starts under. Load average counts our own previous benchmark too, so `busy` is
    judged on the CPU the other processes (not this one and its children) use over `sample_s`."""
    me = psutil.Process()
    ours = {me.pid, *(c.pid for c in me.children(recursive=True))}
    others = [p for p in psutil.process_iter(["name"]) if p.pid not in ours]
    for p in others:
        try:
            p.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(sample_s)
    used = []
    for p in others:
        try:
            used.append((p.cpu_percent(None) / 100, p.info["name"]))
        except psutil.Error:
            pass
    used.sort(reverse=True)
    other_cores = sum(c for c, _ in used)
    memory = psutil.virtual_memory()
    return {"cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
            "memory_gib": round(memory.total / 2**30, 1), "memory_available_gib": round(memory.available / 2**30, 1),
            "python": platform.python_version(), "other_processes_cores": round(other_cores, 2),
            "busiest_others": [f"{n} {c:.2f}" for c, n in used[:3] if c >= 0.05],
            "busy": other_cores > BUSY_CORES}


def print_table(results: dict) -> None:
    header = f"{'benchmark':<38} {'ours_s':>9} {'baseline_s':>11} {'ratio':>8} {'target':>10}  ok  baseline"
    print("\n" + header + "\n" + "-" * len(header))
    for name, e in sorted(results.items()):
        def f(x):
            return f"{x:.3f}" if isinstance(x, (int, float)) and x is not None else str(x)
        print(f"{name:<38} {f(e.get('ours_s')):>9} {f(e.get('baseline_s')):>11} {f(e.get('ratio')):>8} "
              f"{str(e.get('target')):>10}  {'yes' if e.get('meets_target') else 'NO ':>3}  {e.get('baseline')}")


def print_machines(results: dict) -> None:
    """Each distinct `machine` (cores, load average at start) once, naming the benchmarks measured on it."""
    seen: dict[str, list[str]] = {}
    for name, e in sorted(results.items()):
        if isinstance(e.get("machine"), dict):
            seen.setdefault(json.dumps(e["machine"], sort_keys=True), []).append(name)
    for machine, names in seen.items():
        m = json.loads(machine)
        parts = ", ".join(f"{k}: {v}" for k, v in m.items())
        print(f"\nmachine ({parts}): {', '.join(names)}")


def verdict(name: str, e: dict) -> str:
    """One line: the ratio (or the absolute time), what it means, the target, ok/MISSED, the input."""
    def r(x):
        return f"{x:.3g}" if isinstance(x, float) else str(x)
    if e.get("ratio") is None:
        figure = f"{r(e['ours_s'])} s" if e.get("ours_s") is not None else "no figure"
        figure += f" ({e.get('ratio_means')})"
    else:
        figure = f"{r(e['ratio'])}x{' of its limit' if e.get('baseline_is_limit') else ''} ({e.get('ratio_means')})"
    return (f"{name}: {figure}; target {e.get('target')}: {'ok' if e.get('meets_target') else 'MISSED'}"
            f" - input: {e.get('input', 'not stated')}")


def print_verdicts(results: dict) -> None:
    """One line per benchmark that has a target."""
    lines = [verdict(name, e) for name, e in sorted(results.items()) if e.get("target") is not None]
    if lines:
        print("\n" + "\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
