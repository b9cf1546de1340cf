"""Storage addressed by URI: a local path by default, any pyarrow filesystem (s3://, gs://, ...) for scale-out.

All layers (bronze, silver, outputs, run log) go through these helpers so that a multi-host deployment only
changes `PIPELINE_DATA_DIR`. Writes are atomic: a file is written under a hidden temporary name (readers skip
names starting with "." or "_") and then renamed over its final name, so a crash never exposes half a file.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from etl.settings import Settings, get_settings

HIVE = ds.partitioning(flavor="hive")


@dataclass(frozen=True)
class Store:
    """A data root: a pyarrow filesystem plus the root path inside it."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def from_uri(cls, uri: str) -> Store:
        if "://" in uri:
            fs, root = pafs.FileSystem.from_uri(uri)
        else:
            fs, root = pafs.LocalFileSystem(), posixpath.abspath(uri)
        return cls(fs, root.rstrip("/"))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # ---- writing -------------------------------------------------------------------------------------------
    def write_parquet(self, rel_path: str, table: pa.Table) -> str:
        """Write `table` to `rel_path` atomically (temp name, then rename over the final name)."""
        final = self.path(rel_path)
        folder, name = posixpath.split(final)
        self.fs.create_dir(folder, recursive=True)
        tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        self.fs.move(tmp, final)
        return final

    def write_json(self, rel_path: str, obj: Any) -> str:
        final = self.path(rel_path)
        folder, name = posixpath.split(final)
        self.fs.create_dir(folder, recursive=True)
        tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(obj, indent=2, default=str, sort_keys=True).encode())
        self.fs.move(tmp, final)
        return final

    def delete(self, rel_path: str) -> None:
        info = self.fs.get_file_info(self.path(rel_path))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(info.path)
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(info.path)

    # ---- reading -------------------------------------------------------------------------------------------
    def exists(self, rel_path: str) -> bool:
        return self.fs.get_file_info(self.path(rel_path)).type != pafs.FileType.NotFound

    def read_json(self, rel_path: str) -> Any:
        with self.fs.open_input_stream(self.path(rel_path)) as f:
            return json.loads(f.read().decode())

    def read_parquet(self, rel_path: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file (no partition columns added)."""
        return pq.read_table(self.path(rel_path), columns=columns, filesystem=self.fs)

    def _entries(self, rel_dir: str, recursive: bool) -> list[pafs.FileInfo]:
        base = self.path(rel_dir)
        if self.fs.get_file_info(base).type != pafs.FileType.Directory:
            return []
        return self.fs.get_file_info(pafs.FileSelector(base, recursive=recursive))

    def list_dirs(self, rel_dir: str, prefix: str = "") -> list[str]:
        """Names of the visible folders directly under rel_dir that start with `prefix` (prefix removed), sorted."""
        names = (i.base_name for i in self._entries(rel_dir, recursive=False) if i.type == pafs.FileType.Directory)
        return sorted(n[len(prefix):] for n in names if n.startswith(prefix) and not _hidden(n))

    def list_files(self, rel_dir: str, suffix: str = "") -> list[str]:
        """Visible files under rel_dir (recursively), as paths relative to the root, sorted."""
        infos = self._entries(rel_dir, recursive=True)
        out = []
        for info in infos:
            rel = posixpath.relpath(info.path, self.root)
            if info.type == pafs.FileType.File and rel.endswith(suffix) and not _hidden(rel):
                out.append(rel)
        return sorted(out)

    def dataset(self, rel_dir: str, files: Iterable[str] | None = None) -> ds.Dataset | None:
        """A hive-partitioned Parquet dataset of the files under rel_dir, or of only `files` (paths relative to the
        root, inside rel_dir, in the order given); None when there is no file."""
        files = self.list_files(rel_dir, ".parquet") if files is None else list(files)
        if not files:
            return None
        return ds.dataset(
            [self.path(f) for f in files], filesystem=self.fs, format="parquet",
            partitioning=HIVE, partition_base_dir=self.path(rel_dir),
        )

    def read_table(self, rel_dir: str, columns: list[str] | None = None, filter=None) -> pa.Table | None:
        d = self.dataset(rel_dir)
        if d is None:
            return None
        return d.to_table(columns=columns, filter=filter)


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def partition_path(*parts: str, **keys: Any) -> str:
    """`partition_path("silver", "bars_5m", product_id="BTC-USD", date="2026-01-01")` -> hive-style path."""
    return posixpath.join(*parts, *(f"{k}={v}" for k, v in keys.items()))


def get_store(settings: Settings | None = None) -> Store:
    return Store.from_uri((settings or get_settings()).data_dir)
