"""Lake tables: Delta Lake tables (delta-rs) under the data root, addressed like the Store (docs/lake.md).

A table is a folder `{data}/<rel>` holding Parquet files (hive partitions, as before) plus its transaction log
`_delta_log/`: the log, not a folder listing, says which files are the table at each version, so any Delta reader
(DuckDB, Spark, Polars, Trino) sees exactly our rows. Each commit is atomic (a new log entry written with
put-if-absent: a create-if-absent locally, a conditional PUT on S3), so there is no lock service and no manifest of
our own: two writers of one table race on the next version number and the loser retries on top of the winner, or
fails with a conflict when the winner changed what it replaces (optimistic concurrency).

Commits carry our metadata (run id, commit name) in the log's `commitInfo` (`DeltaTable.history()`). Old versions
stay readable (time travel) until `vacuum` removes the files no version younger than the retention needs
(PIPELINE_LAKE_RETENTION_DAYS, default 90; a table also keeps its log that long, its retention properties following
the setting: Lake.follow_retention).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, PostCommitHookProperties, Schema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, RemoveAction, Transaction, create_table_with_add_actions

from etl.errors import PipelineError, ValidationError
from etl.settings import Settings, get_settings
from etl.storage import Store

log = logging.getLogger(__name__)
P, T = ParamSpec("P"), TypeVar("T")
_READS: ContextVar[dict[str, int] | None] = ContextVar("lake_reads", default=None)
_PINNED: ContextVar[dict[str, int] | None] = ContextVar("lake_pinned", default=None)
_VERIFY = ds.ParquetFragmentScanOptions(page_checksum_verification=True)   # reads check each page's CRC32
COMMIT_RETRIES = 15   # a put-if-absent lost to a concurrent writer is retried this often (delta-rs rebases it)
CHECKPOINT_INTERVAL = 10  # commits between log checkpoints (see Lake._configuration)
ABSENT = -1   # the version a run records for a table it found absent; pinned, the table reads as absent again
# the table properties that follow PIPELINE_LAKE_RETENTION_DAYS (Lake._configuration), also for tables made before
RETENTION_PROPERTIES = ("delta.logRetentionDuration", "delta.deletedFileRetentionDuration",
                        "delta.setTransactionRetentionDuration")
# the post-commit hooks of a commit on a table whose retention properties are not the setting's yet: no checkpoint
# (it drops removed files older than the table's deletedFileRetentionDuration) and no log cleanup (it deletes log
# entries older than its logRetentionDuration); Lake.follow_retention then sets them, in a commit of its own
_STALE_HOOKS = PostCommitHookProperties(create_checkpoint=False, cleanup_expired_logs=False)


def records_reads(run: Callable[P, T]) -> Callable[P, T]:
    """Make `run` (a stage's run) record the versions of the Delta tables it reads (by `Lake.read`/`Lake.files`,
    and `note_read`; ABSENT for a table that is not there): `recorded_reads()` gives them to its commit as the run's inputs."""
    @functools.wraps(run)
    def recording(*args: P.args, **kwargs: P.kwargs) -> T:
        token = _READS.set({})
        try:
            return run(*args, **kwargs)
        finally:
            _READS.reset(token)
    return recording


def recorded_reads() -> dict[str, int] | None:
    """{table or table/partition: the version read} so far in the running `records_reads` run (None outside one).
    A table the run reads again by `Lake.read`/`Lake.files` is read at the version it first read (`_run_version`);
    a table or partition read at several explicit versions: the latest."""
    reads = _READS.get()
    return None if reads is None else dict(reads)


def note_read(key: str, version: int) -> None:
    """Record that `key` (a table, or table/partition) was read at `version`, inside a `records_reads` run."""
    if (reads := _READS.get()) is not None:
        reads[key] = max(version, reads.get(key, version))


def _run_version(rel: str, version: int | None) -> int | None:
    """The version a read of table `rel` asking for `version` reads: inside a `records_reads` run, a table it already
    read (and that is not `pinned`) is read at that version again, so the run reads one version of each table, the
    one its record names (a replay pinned to the record reads what the run read; a commit landing mid-run is the
    next run's), else `version`."""
    reads = _READS.get()
    if version is None and reads and rel in reads and rel not in (_PINNED.get() or {}):
        return reads[rel]
    return version


@contextmanager
def pinned(versions: dict[str, int]) -> Iterator[None]:
    """Within the block, a read of a table named in `versions` ({table: version}, e.g. the inputs a run recorded)
    reads that version instead of the latest: the reads of a past run, replayed (`risk --reproduce`)."""
    token = _PINNED.set({**(_PINNED.get() or {}), **versions})
    try:
        yield
    finally:
        _PINNED.reset(token)


class VersionGone(ValidationError):
    """A version asked for is not in the table's log any more (past the log retention) while the table is there."""


class LakeConflict(PipelineError):
    """A concurrent writer changed what this commit replaces (delta-rs' conflict check): rerun the command."""


@dataclass(frozen=True)
class DataFile:
    """A Parquet file written under a table's folder, to commit: its path relative to the table, its size in
    bytes, its partition values and its row count."""

    path: str
    size: int
    partition: dict[str, str]
    rows: int


@dataclass(frozen=True)
class Lake:
    """The data root's Delta tables: `root` a local path or an object-store URI, with the store's options."""

    root: str
    storage_options: dict[str, str] | None = None
    retention_days: float = 90.0   # history a new table keeps (its log and its superseded files), for time travel

    @classmethod
    def of(cls, store: Store, settings: Settings | None = None) -> Lake:
        """The Delta tables under the Store's root (same place, the settings' object-store options)."""
        settings = settings or get_settings()
        root = store.root if store.is_local else f"{store.fs.type_name}://{store.root}"
        return cls(root, settings.lake_storage_options or None, settings.lake_retention_days)

    def uri(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    # ---- reading -------------------------------------------------------------------------------------------
    def table(self, rel: str, version: int | None = None) -> DeltaTable | None:
        """The table `rel` (at `version`, default the latest or the version `pinned`), or None when no table is
        there (or the version is ABSENT: a recorded run found no table there)."""
        version = (_PINNED.get() or {}).get(rel) if version is None else version
        if version is not None and version <= ABSENT:
            return None
        try:
            return DeltaTable(self.uri(rel), version=version, storage_options=self.storage_options)
        except (TableNotFoundError, OverflowError) as exc:  # OverflowError: its log folder is there, its first commit not yet
            # a past version whose log entries the log retention deleted is "no table" to delta-rs: not an absent
            # table (which a pinned read would replay as absent) when the table is there
            if version is not None and self._exists(rel):
                raise self._version_gone(rel, version, exc) from exc
            return None
        except DeltaError as exc:
            if version is None:  # a damaged log (a torn copy or restore of the data folder): one line, not a trace
                raise ValidationError(f"{self.uri(rel)}: the table's log cannot be read ({_cause(exc)[:200]}): "
                                      "restore its _delta_log entries from a backup, or rerun the stage that writes "
                                      "the table") from exc
            raise self._version_gone(rel, version, exc) from exc

    def _exists(self, rel: str) -> bool:
        """Whether a table is at `rel` (its latest version loads, or its log is there but damaged)."""
        try:
            DeltaTable(self.uri(rel), storage_options=self.storage_options)
        except (TableNotFoundError, OverflowError):
            return False
        except DeltaError:
            return True
        return True

    def _version_gone(self, rel: str, version: int, exc: Exception) -> VersionGone:
        return VersionGone(f"{self.uri(rel)}: version {version} is not in the table's log any more (older than "
                               "PIPELINE_LAKE_RETENTION_DAYS, never made, or its log entry damaged): rerun the stage "
                               f"that wrote it ({_cause(exc)[:200]})")

    def version(self, rel: str) -> int | None:
        t = self.table(rel)
        return None if t is None else t.version()

    def read(self, rel: str, columns: Sequence[str] | None = None, partition: dict[str, str] | None = None,
             version: int | None = None) -> pa.Table | None:
        """The rows of table `rel` (at `version`) with `columns`, of the partition `partition` ({column: value},
        chosen from the log before any file is opened); None when there is no table."""
        t = self.table(rel, _run_version(rel, version))
        if t is None:
            note_read(rel, ABSENT)
            return None
        note_read(rel, t.version())
        return self._rows(t, rel, partition, columns)

    def _rows(self, t: DeltaTable, rel: str, partition: dict[str, str] | None = None,
              columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of table version `t` (of `partition`), their pages' CRC32 verified as every read of the Store
        verifies them (delta-rs' dataset does not: a flipped byte would decode into other values); CorruptFileError
        naming the file that does not read whole (FileNotFoundError naming one that is gone)."""
        dataset = t.to_pyarrow_dataset(partitions=[(k, "=", v) for k, v in partition.items()] if partition else None)
        try:
            return dataset.to_table(columns=list(columns) if columns else None, fragment_scan_options=_VERIFY)
        except (pa.ArrowException, OSError):
            store = Store.from_uri(self.root)
            for a in _actions(t, flatten=True).to_pylist():   # which one: read them one by one
                if all(a.get(f"partition.{k}") == v for k, v in (partition or {}).items()):
                    store.read_parquet(posixpath.join(rel, unquote(a["path"])), use_threads=False)
            raise

    # ---- writing -------------------------------------------------------------------------------------------
    def write(self, rel: str, data: pa.Table, partition_by: Sequence[str] | None = None,
              metadata: dict[str, Any] | None = None, guard: bool = False, table: DeltaTable | None = None) -> int:
        """Append `data` to table `rel` (made on the first write, partitioned by `partition_by`: string columns) in
        one commit carrying `metadata`; returns the version it made. Its files are written by the Store (page
        checksums, as every lake file: a flipped byte fails the read instead of decoding into other values), one
        per partition, then committed (`commit_files`; the table's first write is its version 0). `guard`: commit
        only on top of `table` (the version the caller read, None: it found no table), or of later versions when
        the partitions it appends to are as in `table`; else LakeConflict, and its files are deleted."""
        store, keys = Store.from_uri(self.root), list(partition_by or [])
        files = []
        for values in sorted({tuple(r.values()) for r in data.select(keys).to_pylist()}) if keys else [()]:
            values = dict(zip(keys, values, strict=True))
            rows = data.filter(functools.reduce(pc.and_, [pc.equal(data[k], v) for k, v in values.items()])) \
                if keys else data
            inside = posixpath.join(*(f"{k}={quote(str(v), safe='')}" for k, v in values.items()),
                                    f"part-{uuid.uuid4().hex}.parquet")
            path = store.write_parquet(posixpath.join(rel, inside), rows.drop_columns(keys))
            files.append(DataFile(inside, store.fs.get_file_info(path).size, values, rows.num_rows))
        try:
            if (table if guard else self.table(rel)) is None:
                try:   # the first write makes the table with its files: version 0 (put-if-absent)
                    create_table_with_add_actions(self.uri(rel), Schema.from_arrow(data.schema), _adds(files),
                                                  mode="error", partition_by=keys or None,
                                                  configuration=self._configuration(),
                                                  storage_options=self.storage_options,
                                                  commit_properties=_props(metadata, retries=0))
                    return 0
                except (CommitFailedError, DeltaError) as exc:   # another first writer made it: append to it
                    if not isinstance(exc, CommitFailedError) and "already exists" not in str(exc):
                        raise
                    if guard:
                        raise LakeConflict(f"{self.uri(rel)}: another writer made the table meanwhile; nothing was "
                                           "committed") from exc
            return self.commit_files(rel, files, data.schema, keys, metadata=metadata, table=table if guard else None,
                                     partitions=[f.partition for f in files] if guard else ())
        except LakeConflict:
            for f in files:   # never committed: not a file of any version
                store.delete(posixpath.join(rel, f.path))
            raise

    def files(self, rel: str, version: int | None = None) -> list[str] | None:
        """The data files of table `rel` at `version` (default the latest), as paths relative to the data root,
        sorted; None when there is no table. What a reader reads instead of listing the folder. (The log holds the
        paths URL-encoded: decoded here, so a partition value like `risk/as_of_date=D` names the file that is there.)"""
        t = self.table(rel, _run_version(rel, version))
        if t is None:
            note_read(rel, ABSENT)
            return None
        note_read(rel, t.version())
        return sorted(posixpath.join(rel, unquote(p)) for p in _actions(t)["path"].to_pylist())

    def ever_added(self, rel: str) -> set[str]:
        """Every data file table `rel` holds or held (paths as `files` gives them): its latest version's files and
        those each entry of its log adds, also files removed since (e.g. compacted away), as far back as the log
        reaches (entries past the log retention are gone)."""
        fs, path = pafs.FileSystem.from_uri(self.uri(posixpath.join(rel, "_delta_log")))
        out = set(self.files(rel) or [])
        for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
            if info.base_name.endswith(".json") and info.base_name[:-len(".json")].isdigit():
                with fs.open_input_stream(info.path) as f:
                    actions = [json.loads(line) for line in f.read().splitlines()]
                out.update(posixpath.join(rel, unquote(a["add"]["path"])) for a in actions if "add" in a)
        return out

    def metadata(self, rel: str, key: str) -> tuple[int, str] | None:
        """(version, value) of the latest commit of table `rel` whose metadata has `key` (a writer's own record, e.g.
        the bronze version a silver build read), or None."""
        t = self.table(rel)
        commit = next((c for c in ([] if t is None else t.history()) if key in c), None)
        return None if commit is None else (commit["version"], commit[key])

    def commit_files(self, rel: str, files: Sequence[DataFile], schema: pa.Schema, partition_by: Sequence[str],
                     replace: dict[str, str] | None = None, metadata: dict[str, Any] | None = None,
                     table: DeltaTable | None = None, remove: Sequence[str] = (), retries: int = COMMIT_RETRIES,
                     app_id: str | None = None, partitions: Sequence[dict[str, str]] = ()) -> int:
        """Commit Parquet files already written under table `rel` (by the Store: page checksums, atomic writes) in
        one Delta commit: appended, or replacing the partition `replace` ({column: value}), and removing the
        files `remove` (paths relative to the data root; LakeConflict when one is not in the version the commit builds
        on: a concurrent writer removed it). `schema` is the table's: the files' columns plus the
        partition columns (strings); `table` the table as the caller loaded it, if it did (the commit goes on top
        of that version, rebased over concurrent commits at most `retries` times: 0 = only on that version);
        `app_id` a writer's idempotency key, recorded in the table's state with the commit's time
        (`DeltaTable.transaction_version`): LakeConflict when the table already holds it, also when a concurrent
        commit of the same id won the race. `partitions` ({column: value} each): the partitions this commit
        rewrites whole (its files and `remove` lie in them), guarded as `replace` guards its own: the commit goes on
        top of concurrent commits only when those partitions' files are as in `table`, else LakeConflict.
        Returns the version it made."""
        now = int(time.time() * 1000)
        actions = _adds(files, now)
        txn = uuid.uuid4().hex   # finds this commit's version in the log afterwards, whoever committed meanwhile
        # a replace, a commit with an app id or with guarded partitions is rebased here, not by delta-rs: its
        # conflict check passes two writes of a partition that was empty (they only add files), and two commits of
        # the same app id
        guarded = [replace] if replace else list(partitions)
        own_rebase = (bool(replace) or app_id is not None) and not remove or bool(partitions)
        props = _props({**(metadata or {}), "txn": txn}, 0 if own_rebase else retries)
        if app_id is not None:
            props.app_transactions = [Transaction(app_id, now, now)]
        t = table or self.table(rel) or self._create(rel, schema, partition_by)
        if remove:
            gone = {posixpath.relpath(p, rel) for p in remove}
            removed = [a for a in _actions(t, flatten=True).to_pylist() if unquote(a["path"]) in gone]
            if missing := sorted(gone - {unquote(a["path"]) for a in removed}):
                # another writer removed them since the caller read the table (e.g. a compaction of the same files)
                raise LakeConflict(f"{self.uri(rel)}: {len(missing)} file(s) this commit replaces are not in version "
                                   f"{t.version()} any more (first: {missing[0]}): a concurrent writer replaced them; "
                                   "nothing was committed: rerun the command")
            # the log's paths are URL-encoded and a RemoveAction encodes its path again: give it the decoded one
            actions += [RemoveAction(unquote(a["path"]), True, now, a["size_bytes"],
                                     {k.removeprefix("partition."): v for k, v in a.items() if k.startswith("partition.")})
                        for a in removed]
        filters = [(k, "=", v) for k, v in replace.items()] if replace else None
        base = _partition_files(t, guarded)
        for attempt in range(retries + 1):
            if app_id is not None and t.transaction_version(app_id) is not None:
                raise LakeConflict(f"{self.uri(rel)}: {app_id} is already committed (version {t.version()} holds it: "
                                   "a concurrent writer of the same id); nothing was committed again")
            try:
                t.create_write_transaction(actions, "overwrite" if replace else "append", Schema.from_arrow(schema),
                                           list(partition_by), filters, commit_properties=props,
                                           post_commithook_properties=self._hooks(t))
                break
            except CommitFailedError as exc:
                latest = self.table(rel) if own_rebase and attempt < retries else None
                if latest is None or _partition_files(latest, guarded) != base:
                    raise LakeConflict(f"{self.uri(rel)}: a concurrent writer changed the rows this commit replaces "
                                       f"({_cause(exc)}); nothing was committed: rerun the command") from exc
                t = latest   # only other partitions (or other ids) changed meanwhile: commit on top of them
        version = self._version_of(rel, txn, after=t.version())
        self.follow_retention(rel, t)
        return version

    def commits(self, rel: str, after: int | None, upto: int) -> list[dict[str, Any]]:
        """The `commitInfo` (with our metadata) of each version of table `rel` in (after, upto] (after None: from
        version 0), read from the log entries themselves: O(versions asked), not O(history). Entries the log
        retention already removed are skipped."""
        fs, path = pafs.FileSystem.from_uri(self.uri(posixpath.join(rel, "_delta_log")))
        out = []
        for version in range(0 if after is None else after + 1, upto + 1):
            try:
                with fs.open_input_stream(posixpath.join(path, f"{version:020d}.json")) as f:
                    lines = f.read().decode().splitlines()
            except FileNotFoundError:
                continue
            info = next((a["commitInfo"] for a in map(json.loads, lines) if "commitInfo" in a), {})
            out.append({**info, "version": version})
        return out

    def commits_since(self, rel: str, since_ms: int) -> list[dict[str, Any]]:
        """The `commitInfo` of each version of table `rel` stamped at or after `since_ms` (ms since the epoch, the
        committing host's clock), oldest first: read newest first back to that time, O(versions since then)."""
        out: list[dict[str, Any]] = []
        for version in range(self.version(rel) or 0, -1, -1):
            info = next(iter(self.commits(rel, version - 1, version)), None)
            if info is None or info.get("timestamp", since_ms) < since_ms:  # older, or gone with the log retention
                break
            out.append(info)
        return out[::-1]

    def added_at(self, rel: str) -> dict[str, int]:
        """{data file of table `rel`'s latest version (path relative to the data root): when the commit adding it
        was made, ms since the epoch (the committing host's clock)}."""
        t = self.table(rel)
        if t is None:
            return {}
        actions = _actions(t)
        return {posixpath.join(rel, unquote(p)): m for p, m in zip(actions["path"].to_pylist(),
                                                          actions["modification_time"].to_pylist(), strict=True)}

    def _version_of(self, rel: str, txn: str, after: int) -> int:
        """The version whose log entry carries `txn`: the first after `after` (versions are dense, and a commit
        lands after the version it started from, past the ones concurrent writers took first)."""
        fs, path = pafs.FileSystem.from_uri(self.uri(posixpath.join(rel, "_delta_log")))
        version = after
        while True:
            version += 1
            with fs.open_input_stream(posixpath.join(path, f"{version:020d}.json")) as f:
                if txn.encode() in f.read():
                    return version

    def _create(self, rel: str, schema: pa.Schema, partition_by: Sequence[str]) -> DeltaTable:
        """Make table `rel` (version 0: schema, partitioning, properties), or take the one a concurrent writer made
        first: version 0 is written once (put-if-absent, no retry), the losers read it."""
        try:
            create_table_with_add_actions(self.uri(rel), Schema.from_arrow(schema), [], mode="error",
                                          partition_by=list(partition_by), configuration=self._configuration(),
                                          storage_options=self.storage_options,
                                          commit_properties=CommitProperties(max_commit_retries=0))
        except (CommitFailedError, DeltaError) as exc:
            if not isinstance(exc, CommitFailedError) and "already exists" not in str(exc):
                raise
        for _ in range(50):  # the winner's version 0 is visible at once locally, within moments on a store
            if (t := self.table(rel)) is not None:
                return t
            time.sleep(0.1)
        raise LakeConflict(f"{self.uri(rel)}: the table was being made by another writer and did not appear: "
                           "rerun the command")

    def _configuration(self) -> dict[str, str]:
        """Table properties a new table gets (the retention ones also an existing table, follow_retention): keep the
        log and the superseded files for the retention; a checkpoint every CHECKPOINT_INTERVAL commits, so opening a
        table replays at most that many log entries (with Delta's default of 100, a risk output table committed once a
        day costs ~0.4 ms more to open each day, for months)."""
        # log, app ids: whole hours, rounded up (never less than the retention), an hour at least
        interval = f"interval {max(1, math.ceil(round(self.retention_days * 24, 9)))} hours"
        # a removed file leaves the table's state when `vacuum` may delete it, not later: every vacuum goes through
        # the state's removed files, including those already deleted
        removed = f"interval {round(self.retention_days * 86400)} seconds"
        return {"delta.logRetentionDuration": interval, "delta.deletedFileRetentionDuration": removed,
                "delta.setTransactionRetentionDuration": interval,
                "delta.checkpointInterval": str(CHECKPOINT_INTERVAL)}

    def _stale(self, t: DeltaTable | None) -> bool:
        """Whether table version `t`'s retention properties are not the ones the setting gives (the table was made
        under another PIPELINE_LAKE_RETENTION_DAYS, or before a property was set)."""
        if t is None:
            return False
        have, want = t.metadata().configuration, self._configuration()
        return any(have.get(k) != want[k] for k in RETENTION_PROPERTIES)

    def _hooks(self, t: DeltaTable | None) -> PostCommitHookProperties | None:
        """The post-commit hooks of a commit on top of `t`: delta-rs' own, unless `t`'s retention is stale."""
        return _STALE_HOOKS if self._stale(t) else None

    def follow_retention(self, rel: str, t: DeltaTable | None = None) -> None:
        """Make table `rel`'s retention properties those of PIPELINE_LAKE_RETENTION_DAYS when they are not (the
        setting changed since the table was made): one commit through delta-rs' `set_table_properties`, after which
        its checkpoints and log cleanup keep the history the setting promises. `t`: the version the caller last
        loaded (nothing to do when its properties are already the setting's). Every writer and `vacuum` call it; when
        concurrent writers keep it from committing, the next commit tries again (its hooks wait meanwhile)."""
        if t is not None and not self._stale(t):
            return
        t = self.table(rel)
        if not self._stale(t):
            return
        want = self._configuration()
        try:
            t.alter.set_table_properties({k: want[k] for k in RETENTION_PROPERTIES},
                                         commit_properties=_props({"retention_days": self.retention_days}))
        except CommitFailedError as exc:
            log.warning("%s: retention properties not updated yet (%s); the next commit tries again", self.uri(rel),
                        _cause(exc))
            return
        log.info("%s: retention properties set for PIPELINE_LAKE_RETENTION_DAYS=%s", self.uri(rel), self.retention_days)

    def delete(self, rel: str, predicate: str, metadata: dict[str, Any] | None = None) -> int | None:
        """Delete the rows matching `predicate` (SQL) in one commit (files whose rows all match are dropped
        whole); returns the new version, or None when there is no table."""
        t = self.table(rel)
        if t is None:
            return None
        t.delete(predicate, commit_properties=_props(metadata), post_commithook_properties=self._hooks(t))
        version = t.version()
        self.follow_retention(rel, t)
        return version

    # ---- maintenance ---------------------------------------------------------------------------------------
    def optimize(self, rel: str, partition: list[tuple[str, str, Any]] | None = None,
                 metadata: dict[str, Any] | None = None) -> dict:
        """Compact table `rel`: each partition (of those `partition` selects, e.g. [("date", "<", "2026-01-31")])
        holding two or more files gets one file of the same rows, all in one commit; the replaced files stay for
        time travel until `vacuum`. Returns {"numFilesAdded", "numFilesRemoved", "partitionsOptimized"}.

        Not delta-rs' `optimize.compact`: its commit goes on top of a concurrent optimize of the same files (its
        removes are not data changes, which its conflict check passes), so two compactions at once left every row
        twice. Here the commit is guarded like any rewrite (`commit_files`: the partitions' files as this
        compaction read them): a concurrent writer that changed them first makes it plan again on the new version
        (a partition the other compaction already did has one file: nothing to do)."""
        for attempt in range(COMMIT_RETRIES + 1):
            t = self.table(rel)
            if t is None:
                return {}
            partition_by = t.metadata().partition_columns
            groups: dict[tuple, list[dict]] = {}
            for a in _actions(t, flatten=True).to_pylist():
                values = {k: a.get(f"partition.{k}") for k in partition_by}
                if all(_OPS[op](values.get(k), str(v)) for k, op, v in partition or []):
                    groups.setdefault(tuple(values.items()), []).append(a)
            groups = {key: actions for key, actions in groups.items() if len(actions) > 1}
            if not groups:
                return {"numFilesAdded": 0, "numFilesRemoved": 0, "partitionsOptimized": 0}
            store, schema = Store.from_uri(self.root), pa.schema(t.schema().to_arrow())
            files, removed = [], []
            for key, actions in groups.items():
                values = dict(key)
                rows = self._rows(t, rel, values)
                rows = rows.drop_columns([k for k in partition_by if k in rows.column_names])
                # beside the partition's files (the log holds paths URL-encoded: a value like `risk/as_of_date=D`)
                inside = posixpath.join(posixpath.dirname(unquote(actions[0]["path"])), f"part-{uuid.uuid4().hex}.parquet")
                path = store.write_parquet(posixpath.join(rel, inside), rows)
                files.append(DataFile(inside, store.fs.get_file_info(path).size, values, rows.num_rows))
                removed += [posixpath.join(rel, unquote(a["path"])) for a in actions]
            try:
                self.commit_files(rel, files, schema, partition_by, remove=removed, table=t,
                                  metadata={**(metadata or {}), "compacted": "optimize"},
                                  partitions=[dict(key) for key in groups])
            except LakeConflict:
                for f in files:   # never committed: not a file of any version
                    store.delete(posixpath.join(rel, f.path))
                if attempt == COMMIT_RETRIES:
                    raise
                continue
            return {"numFilesAdded": len(files), "numFilesRemoved": len(removed), "partitionsOptimized": len(files)}
        raise AssertionError("unreachable")

    def vacuum(self, rel: str, retention_hours: float | None = None, dry_run: bool = False) -> list[str]:
        """Delete the files no version younger than `retention_hours` (default the lake's retention) needs, and
        uncommitted files that old; returns their paths relative to the table. `dry_run`: only list them."""
        self.follow_retention(rel)
        t = self.table(rel)
        if t is None:
            return []
        hours = self.retention_days * 24 if retention_hours is None else retention_hours
        # full: list the folder, so files no commit ever named (a writer killed before its commit) go too. delta-rs
        # takes whole hours: rounded up, never down (a retention of 0.02 days is not 0 hours: files kept, not lost)
        return t.vacuum(retention_hours=math.ceil(hours), dry_run=dry_run, enforce_retention_duration=False,
                        full=True)


_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a is not None and a < b,
    "<=": lambda a, b: a is not None and a <= b, ">": lambda a, b: a is not None and a > b,
    ">=": lambda a, b: a is not None and a >= b}


def _adds(files: Sequence[DataFile], now: int | None = None) -> list[AddAction]:
    """The add actions committing `files` (modification time `now`, ms since the epoch; default the clock's)."""
    now = int(time.time() * 1000) if now is None else now
    return [AddAction(f.path, f.size, f.partition, now, True, json.dumps({"numRecords": f.rows})) for f in files]


def _cause(exc: Exception) -> str:
    """delta-rs' error in one line: its first (its next lines give advice for delta-rs' own users, e.g. to lower
    the isolation level), so the CLI's `error:` line stays one line."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _actions(t: DeltaTable, flatten: bool = False) -> pa.Table:
    """The add actions of a table version (its data files) as an Arrow table."""
    return pa.table(t.get_add_actions(flatten=flatten))


def _partition_files(t: DeltaTable, partitions: list[dict[str, str]]) -> list[set[str]]:
    """The data files of each partition ({column: value}) of a table version."""
    actions = _actions(t, flatten=True).to_pylist() if partitions else []
    return [{a["path"] for a in actions if all(a.get(f"partition.{k}") == v for k, v in partition.items())}
            for partition in partitions]


def conform(table: pa.Table) -> pa.Table:
    """`table` in the types a Delta table holds: timestamps in microseconds (UTC when zoned), a column of only
    nulls as strings. A timestamp with sub-microsecond digits is refused (pyarrow's safe cast), never truncated."""
    fields = []
    for f in table.schema:
        if pa.types.is_timestamp(f.type) and (f.type.unit != "us" or f.type.tz not in (None, "UTC")):
            f = f.with_type(pa.timestamp("us", tz="UTC" if f.type.tz else None))
        elif pa.types.is_null(f.type):
            f = f.with_type(pa.string())
        fields.append(f)
    schema = pa.schema(fields)
    return table if schema == table.schema else table.cast(schema)


def _props(metadata: dict[str, Any] | None, retries: int = COMMIT_RETRIES) -> CommitProperties:
    return CommitProperties(custom_metadata={k: str(v) for k, v in (metadata or {}).items()},
                            max_commit_retries=retries)
