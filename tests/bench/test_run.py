"""bench/run.py's own rules, without running a benchmark: every entry states what it measured, and the verdict
line says the ratio, its meaning, the target, ok/MISSED and the input."""

from __future__ import annotations

import importlib.util

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
