"""Chaos: the real `python -m etl risk|factors|load|report` processes SIGKILLed at seeded points, then rerun.

One clean run (database A) and one chaos run (database B) over the same silver data. The chaos run kills risk and
factors after a seeded number of output files, kills `load` while its dbt child is building, starts two `load`s at
once and kills `report` mid-way; after the reruns every gold table, every committed output file and every report CSV
equals the clean run's. Along the way `report` must never exit 0 on an incomplete day. The whole sequence runs once
(module fixture); each test checks one of its promises.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from etl import commits, db
from etl.lake import Lake
from etl.settings import PROJECT_ROOT
from etl.storage import Store
from tests.support import warehouse_sample as sample

pytestmark = pytest.mark.slow

SEED = 20261202
FIRST = date(2026, 1, 1)
DAYS = 40
D2 = FIRST + timedelta(days=DAYS - 1)      # the as-of day the chaos is about
D1 = D2 - timedelta(days=1)
PRODUCTS = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD")
SETTINGS = {"RISK_MC_SCENARIOS": "2000", "RISK_BACKTEST_DAYS": "25", "RISK_VAR_LOOKBACK_DAYS": "25",
            "PIPELINE_DAILY_HISTORY_DAYS": "45", "PIPELINE_PRODUCTS": ",".join(PRODUCTS), "PIPELINE_HISTORY_DAYS": "1",
            "FACTOR_FREQUENCY_S": "300", "FACTOR_WINDOW": "48", "FACTOR_MIN_OBS": "12",
            "FACTOR_FORMATION_MINUTES": "120", "FACTOR_HOLDING_MINUTES": "60", "FACTOR_MOMENTUM_MINUTES": "30,60,120"}
FACTORS_END = f"{D2 + timedelta(days=1)}T00:00:00Z"
VOLATILE = {"loaded_at", "risk_run_id", "source_file"}  # differ between any two runs by design
# the lake's run history: which runs (ids, times) read which table versions differs with every rerun and kill by
# design; what each commit read (name, stage, table) does not
RUN_HISTORY = {"fact_run_inputs": ["run_id", "committed_at", "input_version"]}


def _world(root: Path) -> None:
    """Silver 5-minute and daily bars for DAYS days and the warehouse sample's book (two portfolios)."""
    store = Store.from_uri(str(root / "data"))
    b5 = sample.bars_5m(FIRST, DAYS, products=PRODUCTS)
    daily = sample.daily_from_5m(b5)
    sample.write_silver(store, b5, daily, FIRST.year)
    sample.write_reference(root / "ref")


def _env(root: Path, url: str) -> dict[str, str]:
    return {**os.environ, **SETTINGS, "PIPELINE_DATA_DIR": str(root / "data"), "PIPELINE_STATE_DIR": str(root / "state"),
            "PIPELINE_DATABASE_URL": url, "PIPELINE_REFERENCE_DIR": str(root / "ref")}


def _start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "etl", *args], cwd=PROJECT_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _etl(env: dict, *args: str) -> subprocess.CompletedProcess:
    proc = _start(env, *args)
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _ok(env: dict, *args: str) -> None:
    res = _etl(env, *args)
    assert res.returncode == 0, f"{args}: {res.stderr[-2000:]}"


def _run_files(root: Path) -> set[Path]:
    """The output data files on disk (not the run records, not the tables' logs)."""
    outputs = root / "data" / "outputs"
    return {p for p in outputs.rglob("*.parquet")
            if not any(part.startswith((".", "_")) for part in p.relative_to(outputs).parts)}


def _live_files(root: Path) -> set[str]:
    """The data files of the latest version of every output table: what a Delta reader sees."""
    lake = Lake(str(root / "data"))
    return {f for table in (root / "data" / "outputs").iterdir() if not table.name.startswith("_")
            for f in lake.table(f"outputs/{table.name}").file_uris()}


def _kill_after_files(env: dict, root: Path, k: int, *args: str) -> bool:
    """Start the stage, SIGKILL it once k new output files exist; False if it finished first."""
    before = _run_files(root)
    proc = _start(env, *args)
    while proc.poll() is None and len(_run_files(root) - before) < k:
        time.sleep(0.005)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    return killed


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _gold(url: str) -> dict[str, pd.DataFrame]:
    """Every gold table, volatile columns dropped, rows in a canonical order."""
    with db.connect(url=url) as conn, conn.cursor() as cur:
        cur.execute("select tablename from pg_tables where schemaname = 'gold' order by 1")
        tables = [t for (t,) in cur.fetchall()]
        out = {}
        for t in tables:
            cur.execute(f"select * from gold.{t}")
            df = pd.DataFrame(cur.fetchall(), columns=[d.name for d in cur.description])
            df = df.drop(columns=[c for c in df.columns if c in VOLATILE])
            if t in RUN_HISTORY:
                df = df.drop(columns=RUN_HISTORY[t]).drop_duplicates()
            out[t] = df.sort_values(list(df.columns), ignore_index=True) if len(df) else df
    return out


def _outputs(root: Path) -> dict[str, pd.DataFrame]:
    store = Store.from_uri(str(root / "data"))
    out = {}
    for m in commits.manifests(store):
        for key, entry in m["files"].items():
            df = commits.read_entry(store, entry).to_pandas()
            out[key] = df.drop(columns=[c for c in df.columns if c in VOLATILE])
    return out


def _report_csvs(root: Path, day: date) -> dict[str, pd.DataFrame]:
    folder = root / "data" / "reports" / day.isoformat()
    out = {}
    for p in sorted(folder.rglob("*.csv")):
        df = pd.read_csv(p) if p.stat().st_size > 1 else pd.DataFrame()
        out[p.relative_to(folder).as_posix()] = df.drop(columns=[c for c in df.columns if c in VOLATILE])
    return out


@pytest.fixture(scope="module")
def chaos(pg_url, tmp_path_factory):
    rng = np.random.default_rng(SEED)
    seen: dict = {}
    with db.scratch_database(pg_url, "chaos_clean") as url_a, db.scratch_database(pg_url, "chaos") as url_b:
        a, b = tmp_path_factory.mktemp("clean"), tmp_path_factory.mktemp("chaos")
        _world(a)
        _world(b)
        env_a, env_b = _env(a, url_a), _env(b, url_b)

        # the clean run
        for args in (("risk", "--as-of", str(D1)), ("risk", "--as-of", str(D2)), ("factors", "--end", FACTORS_END),
                     ("load",), ("report", "--as-of", str(D2))):
            _ok(env_a, *args)
        n_risk = len([p for p in _run_files(a) if f"as_of_date={D2}" in p.as_posix()])  # files of one risk run
        n_factor = len(_run_files(a)) - 2 * n_risk
        seen["clean"] = {"gold": _gold(url_a), "outputs": _outputs(a), "report": _report_csvs(a, D2)}

        # chaos: risk D2 and factors killed at seeded points, then a load, and a report on the incomplete day
        _ok(env_b, "risk", "--as-of", str(D1))
        # the first risk kill lands in the first half of its files, so the day is surely uncommitted; later kills
        # may land anywhere, even after the commit (then the commit must be complete)
        seen["risk_kill_1"] = _kill_after_files(env_b, b, int(rng.integers(1, n_risk // 2 + 1)), "risk", "--as-of",
                                                str(D2))
        seen["factor_kill"] = _kill_after_files(env_b, b, int(rng.integers(1, n_factor)), "factors", "--end",
                                                FACTORS_END)
        store_b = Store.from_uri(str(b / "data"))
        seen["commits_after_kills"] = sorted(m["name"] for m in commits.manifests(store_b))
        seen["factor_commit_complete"] = all(
            store_b.exists(p) for m in commits.manifests(store_b) for e in m["files"].values() for p in e["files"])
        factors = commits.read_manifest(store_b, "factors")
        seen["factor_keys"] = None if factors is None else sorted(factors["files"])
        seen["clean_factor_keys"] = sorted(commits.read_manifest(Store.from_uri(str(a / "data")), "factors")["files"])
        _ok(env_b, "load")
        seen["report_incomplete"] = _etl(env_b, "report", "--as-of", str(D2))
        seen["report_incomplete_html"] = (b / "data" / "reports" / str(D2) / "report.html").read_text()

        # risk D2 killed at a second point, then rerun; factors rerun
        seen["risk_kill_2"] = _kill_after_files(env_b, b, int(rng.integers(1, n_risk)), "risk", "--as-of", str(D2))
        _ok(env_b, "risk", "--as-of", str(D2))
        _ok(env_b, "factors", "--end", FACTORS_END)

        # load killed while its dbt child builds: dbt must die with it, gold must stay the previous complete one
        gold_before = _gold(url_b)
        load = _start(env_b, "load")
        dbt_pid = None
        while load.poll() is None and dbt_pid is None:
            dbt_pid = next(iter(_children(load.pid)), None)
            time.sleep(0.01)
        time.sleep(float(rng.uniform(0.5, 3.0)))                    # a seeded point inside the build
        load.send_signal(signal.SIGKILL)
        load.communicate(timeout=60)
        deadline = time.monotonic() + 15
        while dbt_pid and _alive(dbt_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen["dbt_pid"], seen["dbt_alive_after_kill"] = dbt_pid, bool(dbt_pid and _alive(dbt_pid))
        gold_after = _gold(url_b)
        seen["gold_kept"] = sorted(gold_after) == sorted(gold_before) and all(
            gold_after[t].equals(df) for t, df in gold_before.items())
        seen["report_after_killed_load"] = _etl(env_b, "report", "--as-of", str(D2))

        # two loads at once: one waits for the other's lock; both succeed
        first, second = _start(env_b, "load"), _start(env_b, "load")
        seen["two_loads"] = [(p.wait(timeout=600), p.stderr.read()) for p in (first, second)]

        # report killed mid-way, then rerun
        report = _start(env_b, "report", "--as-of", str(D2))
        time.sleep(float(rng.uniform(1.0, 3.0)))
        report.send_signal(signal.SIGKILL)
        report.communicate(timeout=60)
        seen["final_report"] = _etl(env_b, "report", "--as-of", str(D2))
        seen["chaos"] = {"gold": _gold(url_b), "outputs": _outputs(b), "report": _report_csvs(b, D2)}
        committed = {store_b.path(p) for m in commits.manifests(store_b) for e in m["files"].values()
                     for p in e["files"]}
        seen["orphans"] = sorted(p for p in _live_files(b) if p not in committed)
        yield seen


def test_killed_risk_run_never_gives_green_report(chaos):
    assert chaos["risk_kill_1"] and chaos["factor_kill"], "the seeded points fell inside the runs"
    # the killed risk run committed nothing; the killed factors run committed nothing or all of it
    assert [n for n in chaos["commits_after_kills"] if n != "factors"] == [f"risk/as_of_date={D1}"]
    assert chaos["factor_keys"] in (None, chaos["clean_factor_keys"]) and chaos["factor_commit_complete"]
    res = chaos["report_incomplete"]
    assert res.returncode == 3, res.stderr
    assert f"gold.fact_risk_metrics has no row for {D2} for portfolio(s) P001, P002" in res.stderr
    last = res.stderr.strip().splitlines()[-1]                       # log lines above it; the error is one line
    assert last.startswith(f"error: report for {D2} is INCOMPLETE") and "Traceback" not in res.stderr
    page = chaos["report_incomplete_html"]
    assert page.index('id="incomplete"') < page.index('id="title"') and "INCOMPLETE" in page


def test_killed_load_keeps_previous_gold_and_dbt_dies_with_its_parent(chaos):
    assert chaos["dbt_pid"] is not None, "load was killed while dbt ran"
    assert not chaos["dbt_alive_after_kill"]
    assert chaos["gold_kept"]
    res = chaos["report_after_killed_load"]
    assert res.returncode == 3 and f"no row for {D2}" in res.stderr  # raw has D2, gold does not: not green


def test_two_loads_at_once_both_succeed(chaos):
    assert [rc for rc, _ in chaos["two_loads"]] == [0, 0], chaos["two_loads"]


def test_chaos_reruns_match_a_clean_run(chaos):
    assert chaos["final_report"].returncode == 0, chaos["final_report"].stderr
    clean, after = chaos["clean"], chaos["chaos"]
    assert sorted(after["gold"]) == sorted(clean["gold"])
    for table, df in clean["gold"].items():
        pd.testing.assert_frame_equal(after["gold"][table], df, obj=f"gold.{table}")
    assert sorted(after["outputs"]) == sorted(clean["outputs"])
    for key, df in clean["outputs"].items():
        pd.testing.assert_frame_equal(after["outputs"][key], df, obj=key)
    assert sorted(after["report"]) == sorted(clean["report"]) and after["report"]
    for name, df in clean["report"].items():  # corr() and sums in SQL add in row order: equal to the last bits
        pd.testing.assert_frame_equal(after["report"][name], df, check_exact=False, rtol=1e-9, obj=name)
    assert chaos["orphans"] == []  # the reruns' commits removed the killed runs' files
