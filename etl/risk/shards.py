"""The risk run in shards: the portfolios split across tasks, then one commit of the whole book.

The sorted portfolio ids are cut into `shards` contiguous blocks (deterministic: a retried shard computes the same
portfolios and overwrites its own files). Each shard reads the lake like an unsharded run, computes the
per-portfolio tables of its block (`engine.portfolio_tables`: every row depends on its own portfolio only; the
products the whole book holds fix the scenario sets and the Monte Carlo draws, so a portfolio's figures are the
same in any shard) and writes them to the uncommitted area `outputs/_shards/<run_key>/<shard>/`, its `done.json`
marker last. A shard reads the table versions the first shard done before it read (its `done.json`), so every
shard prices on the same lake; `commit_shards` checks every shard's marker (else it fails naming the missing ones
and commits nothing), refuses shards that read different versions (started at once around a commit of their
inputs: rerun those shards), other reference files than its own (edited since: rerun every shard) or other risk
parameters (RiskParams and runner.RUN_SETTINGS, which its record names: rerun those shards), computes what needs
the whole book (`engine.book_tables`: firm VaR/ES from every position's USD exposure, firm contributions and
stress, the product tables) and commits all tables with ONE run record, as
`run_risk` does (etl.commits; the record names the run key), then deletes the run's shard area, and `_shards` itself
once no other run's shards wait there. A retry of the commit after it committed (its worker died before Airflow saw
it succeed, or while it deleted the shard area) finds the day's record of its run key and succeeds without
committing again, finishing the deletion. One shard gives the same
tables as `run_risk`.
"""

from __future__ import annotations

import logging
import math
import posixpath
import re
import time
from datetime import date

import numpy as np
import pandas as pd

from etl.commits import OUTPUTS, RUNS, read_entry, read_manifest, risk_manifest, run_record
from etl.errors import DataNotFoundError, ValidationError
from etl.lake import Lake, note_read, pinned, recorded_reads, records_reads
from etl.portfolios import book_products
from etl.reference_set import Reference
from etl.risk.engine import append_tables, book_tables, portfolio_tables
from etl.risk.runner import (
    RiskSummary,
    commit_tables,
    finish_book_tables,
    finish_portfolio_tables,
    load_inputs,
    run_params,
)
from etl.settings import Settings
from etl.storage import Store, get_store
from etl.warehouse.schema import to_arrow

log = logging.getLogger(__name__)
SILVER = "silver"   # every table folder under it is a Delta table (etl/silver)

SHARDS_DIR = f"{OUTPUTS}/_shards"
DONE = "done.json"
PROCESS_ONLY = ("garch_workers",)   # risk parameters that set how a run computes, not its figures
PER_CURRENCY = ("scenario_returns", "scenario_covariance")   # one scenario set per base currency, not per shard


def shard_count(portfolios: int, settings: Settings, max_map_length: int | None = None) -> int:
    """How many shards: PIPELINE_RISK_SHARD_PORTFOLIOS per shard when set, else PIPELINE_RISK_SHARDS; at most
    one per portfolio and at most Airflow's `max_map_length` mapped tasks."""
    wanted = (math.ceil(portfolios / settings.risk_shard_portfolios) if settings.risk_shard_portfolios
              else settings.risk_shards)
    n = max(1, min(wanted, portfolios))
    if max_map_length is not None and n > max_map_length:
        log.warning("%d risk shards wanted but Airflow's [core] max_map_length is %d: running %d", n,
                    max_map_length, max_map_length)
        n = max_map_length
    return n


def shard_portfolios(portfolio_ids, shard: int, shards: int) -> list[str]:
    """The portfolio ids of shard `shard` (0-based) of `shards`: contiguous blocks of the sorted ids."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} is not one of 0..{shards - 1}")
    return [str(p) for p in np.array_split(np.array(sorted(map(str, portfolio_ids)), dtype=object), shards)[shard]]


def shard_dir(run_key: str, shard: int | None = None) -> str:
    """The uncommitted area of one run (or of one of its shards); run_key: the DAG run id, made path-safe."""
    root = posixpath.join(SHARDS_DIR, re.sub(r"[^A-Za-z0-9_.-]", "_", run_key))
    return root if shard is None else posixpath.join(root, str(shard))


def plan_inputs(settings: Settings) -> dict[str, int]:
    """The latest version of every Delta table a risk run may read (silver's, the outputs' and the run records),
    taken once when the shards are planned: each shard pins them, so shards started at once still price on one
    lake (an intraday silver build, run record or vacuum landing between their reads is not seen)."""
    store = get_store(settings)
    lake = Lake.of(store, settings)
    rels = [RUNS, *(posixpath.join(root, name) for root in (SILVER, OUTPUTS) for name in store.list_dirs(root))]
    return {rel: version for rel in rels if (version := lake.version(rel)) is not None}


@records_reads
def run_shard(as_of: date, shard: int, shards: int, run_key: str, settings: Settings,
              reference: Reference | None = None, inputs: dict[str, int] | None = None) -> dict:
    """Compute the per-portfolio tables of one shard into its uncommitted area; returns its row counts. inputs:
    the table versions the plan pinned (`plan_inputs`); without them, those a shard already done read."""
    t0 = time.perf_counter()
    store, folder = get_store(settings), shard_dir(run_key, shard)
    # every shard prices on the same lake: the plan's versions, else those of a shard done before this one
    with pinned(inputs or _first_reads(store, as_of, shards, run_key, skip=shard)):
        inputs = load_inputs(as_of, settings, reference)
        ids = shard_portfolios(inputs.portfolios["portfolio_id"], shard, shards)
        portfolios = inputs.portfolios[inputs.portfolios["portfolio_id"].astype(str).isin(ids)]
        tables = portfolio_tables(inputs.closes, inputs.quote_ccy, portfolios, inputs.positions, inputs.params,
                                  inputs.has_bar, settings.max_carried_days)
        tables = finish_portfolio_tables(inputs, portfolios, tables, settings)
    store.delete(posixpath.join(folder, DONE))                  # a retry: not done until it is again
    rows = {}
    for name, df in tables.items():
        rows[name] = len(df)
        store.write_parquet(posixpath.join(folder, f"{name}.parquet"), to_arrow(df))
    done = {"as_of": as_of.isoformat(), "shard": shard, "shards": shards, "portfolios": ids, "rows": rows,
            "seconds": round(time.perf_counter() - t0, 3), "inputs": recorded_reads(),
            "reference": inputs.reference_digests, "params": run_params(inputs.params, settings)}
    store.write_json(posixpath.join(folder, DONE), done)        # the shard's commit point
    log.info("risk shard %d/%d as of %s: %d portfolios in %.1fs", shard + 1, shards, as_of, len(ids),
             done["seconds"])
    return done


def _first_reads(store: Store, as_of: date, shards: int, run_key: str, skip: int) -> dict[str, int]:
    """The table versions the first done shard of the run (other than `skip`) read, or {} when none is done."""
    for i in range(shards):
        rel = posixpath.join(shard_dir(run_key, i), DONE)
        if i != skip and store.exists(rel) and (marker := store.read_json(rel)).get("as_of") == as_of.isoformat():
            return marker.get("inputs") or {}
    return {}


@records_reads
def commit_shards(as_of: date, shards: int, run_key: str, settings: Settings,
                  reference: Reference | None = None) -> RiskSummary:
    """Check every shard is done, add the whole book's tables and commit everything with one run record."""
    t0 = time.perf_counter()
    store = get_store(settings)
    done = {i: posixpath.join(shard_dir(run_key, i), DONE) for i in range(shards)}
    missing = [i for i, rel in done.items() if not store.exists(rel)]
    if missing:
        # a retry after this run committed (and cleared its shards, or died clearing them): that commit stands
        if summary := _committed(store, as_of, run_key, settings, reference, t0):
            _clear(store, run_key)
            return summary
        raise DataNotFoundError(f"risk shard(s) {missing} of {shards} as of {as_of} (run {run_key}) not done: no "
                                f"{store.path(done[missing[0]])}; nothing committed. Rerun compute_risk_shard "
                                f"{missing} of that run, then compute_risk")
    markers = {i: store.read_json(rel) for i, rel in done.items()}
    reads: dict[str, dict[int, int]] = {}
    for i, marker in markers.items():  # what the shards read (in their own processes) is what the run read
        for key, version in (marker.get("inputs") or {}).items():
            reads.setdefault(key, {})[i] = version
            note_read(key, version)
    differ = {key: by for key, by in sorted(reads.items()) if len(set(by.values())) > 1}
    if differ:  # shards that started at once, before any was done, around a commit of their inputs
        key, by = next(iter(differ.items()))
        raise ValidationError(f"the risk shards of run {run_key} as of {as_of} read different versions of {key} "
                              f"(shard: version {by}): nothing committed. Rerun compute_risk_shard "
                              f"{sorted(i for i, v in by.items() if v != by[min(by)])} of that run (it reads the "
                              "versions of the shards done), then compute_risk")
    with pinned({key: next(iter(by.values())) for key, by in reads.items()}):   # the whole book on the same lake
        inputs = load_inputs(as_of, settings, reference)
    book = sorted(map(str, inputs.portfolios["portfolio_id"]))
    got = sorted(p for m in markers.values() if m["as_of"] == as_of.isoformat() for p in m["portfolios"])
    if got != book:
        raise DataNotFoundError(f"the risk shards of run {run_key} cover {len(got)} portfolios as of their days, "
                                f"the book as of {as_of} has {len(book)}: rerun every compute_risk_shard of that "
                                f"run (the book changed, or shards of another day), then compute_risk")
    # the reference files are not versioned by the lake: the shards must have read the files the commit records
    stale = sorted(i for i, m in markers.items() if m.get("reference") != inputs.reference_digests)
    if stale:
        shard_ref = markers[stale[0]].get("reference") or {}
        name = next(iter(sorted(set(shard_ref.items()) ^ set(inputs.reference_digests.items()))), ("?",))[0]
        raise ValidationError(f"{name}: not the reference file risk shard(s) {stale} of run {run_key} as of {as_of} "
                              "read (changed since they ran): nothing committed. Rerun every compute_risk_shard of "
                              "that run, then compute_risk")
    # nor the settings: the record names the commit's parameters, so every shard must have computed with them
    params = {k: v for k, v in run_params(inputs.params, settings).items() if k not in PROCESS_ONLY}
    other = {i: theirs for i, m in markers.items()
             if (theirs := {k: v for k, v in (m.get("params") or {}).items() if k not in PROCESS_ONLY}) != params}
    if other:
        theirs = next(iter(other.values()))
        key = next(k for k in sorted({*params, *theirs}) if theirs.get(k, "absent") != params.get(k, "absent"))
        raise ValidationError(f"risk shard(s) {sorted(other)} of run {run_key} as of {as_of} were computed with "
                              f"{key}={theirs.get(key, 'absent')}, the commit with {params.get(key, 'absent')}: "
                              f"nothing committed. Rerun compute_risk_shard {sorted(other)} of that run with the "
                              "commit's settings, then compute_risk")
    tables: dict[str, pd.DataFrame] = {}
    for i, marker in markers.items():
        part = {name: store.read_parquet(posixpath.join(shard_dir(run_key, i), f"{name}.parquet")).to_pandas()
                for name in marker["rows"]}
        for name in PER_CURRENCY:                              # each currency's scenario set from its first shard
            seen = set(tables[name]["base_currency"]) if name in tables else set()
            part[name] = part[name][~part[name]["base_currency"].isin(seen)]
        append_tables(tables, part)
    append_tables(tables, book_tables(inputs.closes, inputs.quote_ccy, inputs.portfolios, inputs.positions,
                                      inputs.params, inputs.bars_5m, inputs.has_bar, settings.max_carried_days))
    summary = commit_tables(inputs, finish_book_tables(inputs, tables, settings), settings, t0,
                            meta={"run_key": run_key})
    _clear(store, run_key)
    return summary


def _clear(store: Store, run_key: str) -> None:
    """Delete the shard area of run `run_key`, and `_shards` itself once no other run's shards wait there."""
    store.delete(shard_dir(run_key))
    if not store.entries(SHARDS_DIR) and not store.list_dirs(SHARDS_DIR):
        store.delete(SHARDS_DIR)


def _committed(store: Store, as_of: date, run_key: str, settings: Settings, reference: Reference | None,
               t0: float) -> RiskSummary | None:
    """The summary of the day's risk commit when run `run_key` made it and no later run replaced it, else None."""
    name = risk_manifest(as_of)
    latest = read_manifest(store, name)
    if latest is None or latest.get("run_key") != run_key:
        return None
    record = run_record(store, name, latest["run_id"])
    rows = {entry["table"]: entry["rows"] for entry in record["files"].values()}
    metrics = read_entry(store, record["files"][f"risk_metrics/as_of_date={as_of.isoformat()}"], ["lookback_days"])
    ref = Reference.of(reference, settings)
    log.info("risk run %s (run %s) as of %s is already committed: nothing to do", latest["run_id"], run_key, as_of)
    return RiskSummary(as_of=as_of, portfolios=len(record["portfolios"]), positions=rows["positions_valued"],
                       products=sorted(book_products(ref.instruments, ref.portfolios, ref.positions)),
                       lookback_days=int(metrics["lookback_days"][0].as_py()), rows=rows,
                       breaches=rows["limit_breaches"], seconds=time.perf_counter() - t0)
