"""`python -m etl risk --as-of D --reproduce RUN_ID --output DIR`: recompute a committed risk run from what it read.

A risk run's record (etl/commits.py) names the version of every Delta table it read (`inputs`: silver bars, trade
bars and liquidity, the run records through which it found factor outputs), the SHA-256 of every reference file
(`reference`) and its parameters (`params`). Recomputing reads each of those tables at its recorded version
(`etl.lake.pinned`: time travel, kept for PIPELINE_LAKE_RETENTION_DAYS), checks the reference files are the ones
the run read (else it refuses, naming the file: reference files are not versioned by the lake), runs the same
engine with the recorded parameters (and the recorded settings that change the figures, runner.RUN_SETTINGS: the
daily history window, the 5-minute bars' source, the LVaR percentile) and writes each table to `DIR/<table>.parquet`, in the types of the files the run committed,
with `DIR/_reproduce.json` naming the run. DIR is replaced whole: the tables are written into a hidden sibling
folder that takes DIR's place at the end in one step (`_write`), so DIR holds exactly this run's tables, or (on a
failure, a SIGKILL included) what it held before. A
DIR that is not empty and holds no `_reproduce.json` (not an earlier reproduce's output) is refused, untouched.
Nothing in the lake or the warehouse changes. A run split into shards (each shard's reads are in the run's record)
is recomputed in one process: equal to its shards' results to 1e-12 relative (BLAS groups a sum by the chunk it
computes; tests/etl/risk/test_shards.py), exactly equal for an unsharded run.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from etl import commits
from etl.errors import ValidationError
from etl.lake import VersionGone, conform, pinned
from etl.reference_set import Reference
from etl.risk.engine import RiskParams, compute_tables
from etl.risk.runner import RUN_SETTINGS, finish_book_tables, finish_portfolio_tables, load_inputs
from etl.settings import Settings, get_settings
from etl.storage import get_store
from etl.warehouse.schema import to_arrow

log = logging.getLogger(__name__)
AT_FDCWD, RENAME_EXCHANGE = -100, 2   # renameat2(2)
MARKER = "_reproduce.json"   # in an output folder: the run it holds; a later reproduce may replace that folder


@dataclass
class ReproduceSummary:
    run_id: str
    as_of: date
    output: str
    inputs: dict[str, int] = field(default_factory=dict)   # the table versions read
    rows: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        versions = ", ".join(f"{t}@{v}" for t, v in sorted(self.inputs.items()) if "=" not in t)
        return (f"reproduced risk run {self.run_id} of {self.as_of} into {self.output} from {versions}; rows: "
                f"{self.rows}")


def _by_name(digests: dict[str, str]) -> dict[str, str]:
    """{file name: SHA-256} of Reference.digests ({path: SHA-256}; the stress file comes last, so it is the one
    kept when a reference CSV has its name: the file the engine reads)."""
    return {Path(path).name: sha for path, sha in digests.items()}


def _check_output(out: Path) -> None:
    """Refuse an --output that is a file, or a non-empty folder that is not an earlier reproduce's output: replacing
    it would delete files reproduce never wrote."""
    if out.exists() and not out.is_dir():
        raise ValidationError(f"{out}: --output is a file, not a folder; nothing was written")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ValidationError(f"{out}: --output is not empty and is not the output of an earlier `risk --reproduce` "
                              f"(no {MARKER} in it); nothing was written: give a new or empty folder")


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders `a` and `b` in one step (Linux renameat2 RENAME_EXCHANGE): a kill leaves either both as they
    were or both swapped. False when the system or the file system cannot (nothing was changed)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    if (errno_ := ctypes.get_errno()) in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(errno_, os.strerror(errno_), str(b))


def _write(out: Path, tables: dict[str, pa.Table], marker: dict) -> None:
    """Make `out` hold exactly `tables` (as `<name>.parquet`) and the marker, or, on any failure, what it held
    before: written into a hidden sibling folder, then swapped with an earlier output in one step (RENAME_EXCHANGE:
    a kill, SIGKILL included, leaves the earlier output or the new one at `out`, never no folder), or renamed into
    place over an empty folder or none. Where the file system cannot swap, the earlier output is moved aside first
    (and back if the rename fails)."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    aside = None
    try:
        for name, rows in tables.items():
            pq.write_table(rows, staging / f"{name}.parquet")
        (staging / MARKER).write_text(json.dumps(marker, indent=1, sort_keys=True))
        _check_output(out)   # again: the folder may have been filled meanwhile
        if out.is_dir() and any(out.iterdir()):
            if _exchange(staging, out):   # `staging` holds the earlier output now
                shutil.rmtree(staging, ignore_errors=True)
                return
            aside = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
            out.rename(aside)
        os.replace(staging, out)   # over an empty folder or none
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None and not out.exists():
            aside.rename(out)
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def reproduce(as_of: date, run_id: str, output: str | Path, settings: Settings | None = None) -> ReproduceSummary:
    settings = settings or get_settings()
    out = Path(output)
    _check_output(out)   # before the work: a refused folder costs nothing
    record = commits.run_record(get_store(settings), commits.risk_manifest(as_of), run_id)
    missing = [k for k in ("inputs", "params", "reference") if k not in record]
    if missing:
        raise ValidationError(f"risk run {run_id} of {as_of} recorded no {', '.join(missing)} (committed before "
                              "runs recorded what they read): it cannot be recomputed")
    reference = Reference(settings)
    # by file name: the files of that day may sit in another folder now (an archive), same names, same bytes
    then, now = _by_name(record["reference"]), _by_name(reference.digests)
    changed = sorted({name for name, _ in set(then.items()) ^ set(now.items())})
    if changed:
        name = changed[0]
        path = [str(settings.reference_dir / name), *(p for p in reference.digests if Path(p).name == name)][-1]
        raise ValidationError(f"{path}: not the reference file risk run {run_id} read (SHA-256 "
                              f"{then.get(name, 'absent')[:12]} then, {now.get(name, 'absent')[:12]} now): point "
                              "PIPELINE_REFERENCE_DIR (and RISK_STRESS_SCENARIOS) at the files of that day")
    params = dict(record["params"])
    if params.get("stress_file") in record["reference"]:  # the stress file just checked, wherever it is now
        params["stress_file"] = settings.stress_scenarios_file
    # the settings the run read that change its figures (recorded since RUN_SETTINGS; older runs: today's)
    settings = dataclasses.replace(settings, **{k: params.pop(k) for k in RUN_SETTINGS if k in params})
    store = get_store(settings)
    try:
        with pinned(record["inputs"]):
            inputs = load_inputs(as_of, settings, reference, RiskParams(**params))
            tables = compute_tables(inputs.closes, inputs.quote_ccy, inputs.portfolios, inputs.positions,
                                    inputs.params, inputs.bars_5m, inputs.has_bar, settings.max_carried_days)
            # as run_risk: the book's tables (firm, products) get the carried-close rule once the portfolios' are in
            tables = finish_book_tables(inputs, finish_portfolio_tables(inputs, inputs.portfolios, tables, settings),
                                        settings)
        # in the types of the files the run committed
        schemas = [pq.read_schema(store.path(next(iter(entry["files"]))), filesystem=store.fs)
                   for entry in record["files"].values()]
    except VersionGone as exc:   # the log retention deleted the version's log entries
        raise ValidationError(f"risk run {run_id} of {as_of} cannot be recomputed: {exc}; nothing was written. "
                              f"`python -m etl risk --as-of {as_of}` computes a new run from the current data") from exc
    except FileNotFoundError as exc:  # the log still names the version, `vacuum` deleted its files
        raise ValidationError(f"risk run {run_id} of {as_of} cannot be recomputed: {exc.filename or exc}, a file "
                              "of a table version it read or committed, was vacuumed (superseded longer than "
                              "PIPELINE_LAKE_RETENTION_DAYS ago); nothing was written. `python -m etl risk "
                              f"--as-of {as_of}` computes a new run from the current data") from exc
    tables["risk_metrics"]["risk_run_id"] = run_id
    summary = ReproduceSummary(run_id, as_of, str(out), dict(record["inputs"]))
    written = {}
    for entry, committed in zip(record["files"].values(), schemas, strict=True):
        name = entry["table"]
        written[name] = conform(to_arrow(tables.pop(name))).select(committed.names).cast(committed)
        summary.rows[name] = written[name].num_rows
    _write(out, written, {"run_id": run_id, "as_of": as_of.isoformat(), "tables": sorted(written)})
    log.info("%s", summary)
    return summary
