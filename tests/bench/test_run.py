"""bench/run.py's own rules, without running a benchmark: every entry states what it measured, and the verdict
line says the ratio, its meaning, the target, ok/MISSED and the input."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from etl.settings import PROJECT_ROOT

spec = importlib.util.spec_from_file_location("bench_run", PROJECT_ROOT / "bench" / "run.py")
run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run)

ENTRY = {"ours_s": 2.0, "baseline": "psql \\copy", "baseline_s": 1.0, "ratio": 2.0,
         "ratio_means": "ours_s / baseline_s (lower is better)", "target": "<= 1.5", "meets_target": False,
         "input": "100,000 bars", "command": "python -m etl load", "baseline_command": "psql -c '\\copy ...'"}


def test_complete_entries_pass():
    run.check_entries("bench_x", {"x_load": ENTRY})


@pytest.mark.parametrize("field", run.REQUIRED)
def test_an_entry_without_a_stated_field_fails_naming_entry_and_field(field):
    entry = {k: v for k, v in ENTRY.items() if k != field}
    with pytest.raises(SystemExit, match=rf"bench/bench_x\.py: entry 'x_load' lacks {field}"):
        run.check_entries("bench_x", {"x_ok": ENTRY, "x_load": entry})


def test_an_empty_field_counts_as_missing():
    with pytest.raises(SystemExit, match="'x_load' lacks input, command"):
        run.check_entries("bench_x", {"x_load": ENTRY | {"input": "", "command": None}})


def test_verdict_states_ratio_meaning_target_outcome_and_input():
    assert run.verdict("x_load", ENTRY) == ("x_load: 2x (ours_s / baseline_s (lower is better)); target <= 1.5: "
                                            "MISSED - input: 100,000 bars")


def test_verdict_of_a_limit_baseline_says_of_its_limit():
    line = run.verdict("x_load", ENTRY | {"baseline_is_limit": True, "ratio": 1.25, "meets_target": True})
    assert line.startswith("x_load: 1.25x of its limit (ours_s / baseline_s")
    assert ": ok - input: 100,000 bars" in line


def test_verdict_without_a_ratio_gives_the_absolute_time():
    line = run.verdict("x_stage", ENTRY | {"ratio": None, "ours_s": 12.34, "ratio_means": "absolute seconds",
                                           "target": "< 30 s", "meets_target": True})
    assert line == "x_stage: 12.3 s (absolute seconds); target < 30 s: ok - input: 100,000 bars"


def test_machine_states_the_conditions():
    m = run.machine(sample_s=0.05)
    assert m["cores"] >= 1 and len(m["load_average_at_start"]) == 3
    assert 0 < m["memory_available_gib"] <= m["memory_gib"]
    assert m["python"].count(".") == 2 and isinstance(m["busy"], bool)
    assert m["busy"] == (m["other_processes_cores"] > run.BUSY_CORES)


def _fake_benches(tmp_path, monkeypatch, modules: dict[str, list[str]], previous: dict | None = None):
    """bench/ as `tmp_path`: one bench_<name>.py per module, each writing entries with the given names; bench_soak
    runs only when named (as in bench/run.py). Returns a function running run.py's main with some arguments."""
    for module, names in modules.items():
        entries = {n: ENTRY | {"ours_s": 1.0} for n in names}
        (tmp_path / f"{module}.py").write_text(f"def run(quick):\n    return {entries!r}\n")
    if previous is not None:
        (tmp_path / "results.json").write_text(json.dumps(previous))
    monkeypatch.setattr(run, "HERE", tmp_path)
    monkeypatch.setattr(run, "ON_REQUEST", {"bench_soak"})
    monkeypatch.setattr(run, "machine", lambda sample_s=0.5: {"busy": False})
    monkeypatch.syspath_prepend(str(tmp_path))

    def main(*argv: str) -> dict:
        for module in modules:
            sys.modules.pop(module, None)
        monkeypatch.setattr(sys, "argv", ["run.py", *argv])
        assert run.main() == 0
        return json.loads((tmp_path / "results.json").read_text())

    return main


def test_a_full_run_keeps_the_last_figures_of_a_benchmark_run_only_on_request(tmp_path, monkeypatch):
    main = _fake_benches(tmp_path, monkeypatch, {"bench_a": ["a_x"], "bench_soak": ["soak_x"]})
    assert set(main("soak")) == {"soak_x"}                     # make soak
    results = main()                                           # then make bench: soak is not run, its entry stays
    assert set(results) == {"a_x", "soak_x"}
    assert results["soak_x"]["bench"] == "bench_soak" and results["a_x"]["bench"] == "bench_a"


def test_an_entry_no_benchmark_writes_any_more_is_dropped(tmp_path, monkeypatch):
    stale = ENTRY | {"bench": "bench_a"}
    main = _fake_benches(tmp_path, monkeypatch, {"bench_a": ["a_x"], "bench_b": ["b_x"]},
                         previous={"a_old": stale, "gone_x": stale | {"bench": "bench_gone"},
                                   "b_x": ENTRY | {"bench": "bench_b"}})
    results = main("a")
    assert set(results) == {"a_x", "b_x"}                      # bench_a's old entry and a removed module's go
    assert results["b_x"]["ours_s"] == ENTRY["ours_s"]         # bench_b's, not run, stays as it was
    assert set(main()) == {"a_x", "b_x"}


def test_an_unknown_benchmark_name_fails_naming_it(tmp_path, monkeypatch):
    main = _fake_benches(tmp_path, monkeypatch, {"bench_a": ["a_x"]})
    with pytest.raises(SystemExit, match=r"no benchmark 'silvr' \(bench/bench_silvr\.py\); known: a"):
        main("a", "silvr")
    assert not (tmp_path / "results.json").exists()


def test_a_quick_run_drops_no_full_size_figure(tmp_path, monkeypatch):
    full_only = ENTRY | {"bench": "bench_a", "quick": False}     # e.g. the DAG test, full mode only
    main = _fake_benches(tmp_path, monkeypatch, {"bench_a": ["a_x"]},
                         previous={"a_full_only": full_only, "a_quick_old": full_only | {"quick": True}})
    results = main("--quick", "a")
    assert set(results) == {"a_x", "a_full_only"} and results["a_x"]["quick"] is True
    assert set(main("a")) == {"a_x"}                           # a full run that no longer writes it: gone
