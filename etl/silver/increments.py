"""Silver tables built from a bronze stream table (trade bars from `bronze/trades`, liquidity from
`bronze/order_book`), both Delta tables partitioned by product_id/date (docs/lake.md).

A build reads the bronze table at one version and takes only the files it gained since the version the previous
build read; that version is recorded in the previous build's own commit of the silver table (`bronze_version` in
the commit's metadata), so it moves atomically with the silver data and there is no state file. The build writes
one new file per touched partition and commits them in ONE commit that also removes the partitions' previous files
(kept for time travel until vacuum) and records the bronze version it read. A crash before that commit leaves the
previous silver version and bronze version: the next build redoes the same partitions.
"""

from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import dataclass
from datetime import date

import pyarrow as pa

from etl.commits import new_run_id
from etl.errors import ValidationError
from etl.lake import DataFile, Lake
from etl.storage import Store, partition_path
from etl.stream.validate import PRODUCT

log = logging.getLogger(__name__)
BRONZE_VERSION = "bronze_version"   # the commit metadata naming the bronze version a build read
KEYS = ["product_id", "date"]
_PARTITION = re.compile(rf"product_id=({PRODUCT.pattern})/date=(\d{{4}}-\d{{2}}-\d{{2}})/")


@dataclass
class Increment:
    version: int | None   # the bronze table's version this build reads (None: no bronze table)
    files: list[str]      # every bronze file at that version (paths relative to the data root)
    new: list[str]        # those added since the version the silver table's last build recorded
    removed: list[str]    # files of that version not there any more (compacted, quarantined)
    since: int | None     # that version (None: every file is new)


def increment(lake: Lake, bronze_dir: str, silver_dir: str, full_refresh: bool) -> Increment:
    """What a build of `silver_dir` reads from `bronze_dir` (everything on a full refresh, a first build, or when
    the recorded version is past the retention)."""
    last = None if full_refresh else lake.metadata(silver_dir, BRONZE_VERSION)
    return since(lake, bronze_dir, None if last is None else int(last[1]))


def since(lake: Lake, bronze_dir: str, last: int | None) -> Increment:
    """The files of `bronze_dir` at its latest version, and how they differ from version `last`."""
    version = lake.version(bronze_dir)
    files = lake.files(bronze_dir, version) or []
    before: set[str] = set()
    if last is not None:
        try:
            before = set(lake.files(bronze_dir, last) or [])
        except ValidationError as exc:
            log.warning("silver from %s: %s; rebuilding every partition", bronze_dir, exc)
            last = None
    now = set(files)
    return Increment(version, files, [f for f in files if f not in before], sorted(before - now), last)


def touched(new: list[str], bronze_dir: str) -> list[tuple[str, str]]:
    """The sorted (product_id, date) partitions the new files touch. A file outside a valid partition (written
    before the collector validated its fields) is never a silver partition: skipped with a warning."""
    partitions = {f: p for f in new if (p := partition_of(f))}
    if len(partitions) < len(new):
        log.warning("silver: %d bronze file(s) outside a valid product_id=/date= partition skipped, e.g. %r: "
                    "move them out of %s", len(new) - len(partitions), sorted(set(new) - set(partitions))[0],
                    bronze_dir)
    return sorted(set(partitions.values()))


def partition_of(path: str) -> tuple[str, str] | None:
    """(product_id, date) of a streamed bronze file's hive partition, None when either fails the stream's field
    rules (a partition written before they existed)."""
    m = _PARTITION.search(path)
    if m is None:
        return None
    try:
        date.fromisoformat(m.group(2))
    except ValueError:
        return None
    return m.group(1), m.group(2)


def files_of(files: list[str], bronze_dir: str, product: str, day: str) -> list[str]:
    """The files of one (product, date) partition."""
    prefix = partition_path(bronze_dir, product_id=product, date=day) + "/"
    return [f for f in files if f.startswith(prefix)]


def commit(store: Store, lake: Lake, silver_dir: str, schema: pa.Schema, parts: dict[tuple[str, str], pa.Table],
           bronze_version: int | None, metadata: dict[str, str] | None = None) -> None:
    """Write each (product, date) partition's rows as one new file and commit them, replacing the partitions'
    previous files, with the bronze version read (and `metadata`; see the module docstring)."""
    build, written = new_run_id(), []
    for (product, day), rows in sorted(parts.items()):
        name = posixpath.join(partition_path("", product_id=product, date=day), f"part-{build}.parquet")
        path = store.write_parquet(posixpath.join(silver_dir, name), rows)
        written.append(DataFile(name, store.fs.get_file_info(path).size, {"product_id": product, "date": day},
                                rows.num_rows))
    folders = {partition_path(silver_dir, product_id=p, date=d) + "/" for p, d in parts}
    table = lake.table(silver_dir)
    current = [] if table is None else lake.files(silver_dir, table.version()) or []
    old = [f for f in current if f[:f.rindex("/") + 1] in folders]
    # guarded: a concurrent build that committed one of these partitions since `table` (both adding a file to a
    # partition new to silver) fails this one, LakeConflict, instead of leaving two files
    lake.commit_files(silver_dir, written, pa.schema([*schema, *(pa.field(k, pa.string()) for k in KEYS)]), KEYS,
                      remove=old, metadata={BRONZE_VERSION: bronze_version, **(metadata or {})}, table=table,
                      partitions=[{"product_id": p, "date": d} for p, d in parts])


def partition_file(lake: Lake, silver_dir: str, product: str, day: str) -> str | None:
    """The current file of one partition of a silver table built here, or None."""
    return next(iter(files_of(lake.files(silver_dir) or [], silver_dir, product, day)), None)
