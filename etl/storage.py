"""Storage addressed by URI: a local path by default, any pyarrow filesystem (s3://, gs://, ...) for scale-out.

All layers (bronze, silver, outputs, run log) go through these helpers so that a multi-host deployment only
changes `PIPELINE_DATA_DIR`. Every single-file write is atomic, by the means each backend has:
- a local path: written under a hidden temporary name (readers skip names starting with "." or "_") and then
  renamed over its final name (a POSIX rename is atomic), so a crash never exposes half a file;
- an object store (s3://, gs://, ...): one PUT of the final key (a multipart upload is published only when it
  completes), because object stores have no rename (pyarrow's "move" there is copy + delete, not atomic).
A multi-file change is committed by a Delta commit of the files written here (etl/lake.py); readers take what the
table's log names, never a folder listing. See docs/commit_protocol.md.

Integrity (etl/integrity.py): every Parquet file is written with page checksums and read with their verification;
`digest` gives the SHA-256 a commit records, and the readers given `digests` refuse a file whose bytes differ. A
file that does not read whole raises CorruptFileError naming its path and the command that rewrites it.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from etl import permissions
from etl.integrity import CorruptFileError, digest
from etl.settings import Settings, get_settings

log = logging.getLogger(__name__)
HIVE = ds.partitioning(flavor="hive")
PARQUET = ds.ParquetFileFormat(default_fragment_scan_options=ds.ParquetFragmentScanOptions(
    page_checksum_verification=True))


def _write_table(table: pa.Table, where, fs: pafs.FileSystem | None = None) -> None:
    text = [f.name for f in table.schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    pq.write_table(table, where, filesystem=fs, compression="zstd", use_dictionary=text, write_page_checksum=True)


def parquet_bytes(table: pa.Table) -> bytes:
    """The bytes `Store.write_parquet` writes for `table` (the same encoding), e.g. to name a file by its digest."""
    sink = pa.BufferOutputStream()
    _write_table(table, sink)
    return sink.getvalue().to_pybytes()


@dataclass(frozen=True)
class Store:
    """A data root: a pyarrow filesystem plus the root path inside it."""

    fs: pafs.FileSystem
    root: str
    # local folders this process made or found (a silver build writes thousands of files into new folders)
    _folders: set[str] = field(default_factory=set, compare=False, hash=False, repr=False)

    @classmethod
    def from_uri(cls, uri: str) -> Store:
        if "://" in uri:
            fs, root = pafs.FileSystem.from_uri(uri)
        else:
            permissions.owner_only()  # a local data root: every file 0600, every folder 0700
            fs, root = pafs.LocalFileSystem(), posixpath.abspath(uri)
        return cls(fs, root.rstrip("/"))

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    # ---- writing -------------------------------------------------------------------------------------------
    def _write(self, rel_path: str, write: Callable[[str], None]) -> str:
        """Write through `write(path)` atomically (see the module docstring): on a local disk to a hidden temporary
        name beside the target, renamed over it; on an object store to the key itself (one PUT: the object appears
        whole when the upload completes, or not at all). The folder is made once per process (then remembered),
        and again if the write finds it removed since."""
        final = self.path(rel_path)
        if not self.is_local:
            write(final)
            return final
        folder, name = posixpath.split(final)
        tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{name}")
        if folder not in self._folders:
            self.fs.create_dir(folder, recursive=True)
            self._folders.add(folder)
        try:
            write(tmp)
        except FileNotFoundError:  # removed since (a full refresh, retention, another process)
            self.fs.create_dir(folder, recursive=True)
            write(tmp)
        self.fs.move(tmp, final)
        return final

    def write_parquet(self, rel_path: str, table: pa.Table) -> str:
        """Write `table` to `rel_path` atomically. zstd; dictionary pages for the text columns only (prices and
        times are nearly all distinct: a dictionary attempt there costs time and bytes)."""
        return self._write(rel_path, lambda path: _write_table(table, path, self.fs))

    def write_bytes(self, rel_path: str, data: bytes) -> str:
        """Write `data` to `rel_path` atomically (see the module docstring)."""
        def write(path: str) -> None:
            with self.fs.open_output_stream(path) as out:
                out.write(data)
        return self._write(rel_path, write)

    def write_json(self, rel_path: str, obj: Any) -> str:
        return self.write_bytes(rel_path, json.dumps(obj, indent=2, default=str, sort_keys=True).encode())

    def copy(self, src_rel: str, dst_rel: str) -> str:
        """Copy one file (a server-side copy on object stores; local: copy to a temp name, then rename)."""
        return self._write(dst_rel, lambda path: self.fs.copy_file(self.path(src_rel), path))

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

    def read_parquet(self, rel_path: str, columns: list[str] | None = None, use_threads: bool = True,
                     sha256: str | None = None) -> pa.Table:
        """One Parquet file (no partition columns added), its pages verified, and its bytes too when `sha256` (the
        digest its commit recorded) is given. Not pq.read_table: its dataset set-up costs 2x a small file's read
        (the loader reads thousands). Pre-buffering coalesces an object store's range requests; on a local disk it
        only adds a copy. `use_threads=False` for a caller that runs its own threads. Raises CorruptFileError."""
        try:
            with self.fs.open_input_file(self.path(rel_path)) as f:
                data = f.read() if sha256 else None
                table = pq.ParquetFile(f if data is None else pa.BufferReader(data), pre_buffer=not self.is_local,
                                       page_checksum_verification=True).read(columns=columns, use_threads=use_threads)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError) as exc:
            raise self._corrupt(rel_path, exc) from None
        if data is not None:  # after the pages: a flipped byte in a page is reported as such
            self._checked(rel_path, data, sha256)
        return table

    def digest(self, rel_path: str) -> str:
        """SHA-256 of the file's bytes: what a commit records for the file it publishes."""
        with self.fs.open_input_stream(self.path(rel_path)) as f:
            return digest(f.read())

    def verify(self, rel_path: str, sha256: str | None) -> None:
        """Refuse (CorruptFileError) a file whose bytes differ from the digest its commit recorded (None: no
        digest recorded, nothing to compare)."""
        if sha256:
            with self.fs.open_input_stream(self.path(rel_path)) as f:
                self._checked(rel_path, f.read(), sha256)

    def _checked(self, rel_path: str, data: bytes, sha256: str) -> bytes:
        if digest(data) != sha256:
            raise CorruptFileError(rel_path, self.path(rel_path), "content hash differs from its commit")
        return data

    def _corrupt(self, rel_path: str, exc: Exception) -> CorruptFileError:
        reason = str(exc).split("\n")[0]
        if "CRC checksum" in reason:
            reason = f"page checksum mismatch: {reason}"
        return CorruptFileError(rel_path, self.path(rel_path), reason[:200])

    def entries(self, rel_dir: str) -> list[tuple[str, int]]:
        """(path relative to the root, size) of every file under rel_dir, recursively, hidden names included
        (Delta logs) but not the temporary files of writes in flight; sorted."""
        out = []
        for info in self._entries(rel_dir, recursive=True):
            if info.type == pafs.FileType.File and not info.base_name.startswith(".tmp-"):
                out.append((posixpath.relpath(info.path, self.root), info.size or 0))
        return sorted(out)

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
        root, inside rel_dir, in the order given), its pages verified on read; None when there is no file. Read
        it with `read_files`, which names a corrupt file."""
        files = self.list_files(rel_dir, ".parquet") if files is None else list(files)
        if not files:
            return None
        return ds.dataset(
            [self.path(f) for f in files], filesystem=self.fs, format=PARQUET,
            partitioning=HIVE, partition_base_dir=self.path(rel_dir),
        )

    def read_files(self, rel_dir: str, files: Iterable[str] | None = None, columns: list[str] | None = None,
                   filter=None, digests: dict[str, str] | None = None) -> pa.Table | None:
        """`dataset(rel_dir, files).to_table(columns, filter)`, then each file whose digest `digests` records is
        checked against it. A file that does not read whole raises CorruptFileError naming it (pyarrow's own error
        does not)."""
        files = self.list_files(rel_dir, ".parquet") if files is None else list(files)
        digests = digests or {}
        try:
            d = self.dataset(rel_dir, files)
            table = None if d is None else d.to_table(columns=columns, filter=filter)
        except FileNotFoundError:
            raise
        except (pa.ArrowException, OSError):
            for rel in files:  # which one: read them one by one (raises CorruptFileError naming it)
                self.read_parquet(rel, use_threads=False, sha256=digests.get(rel))
            raise  # every file reads whole: not a corrupt file (e.g. schemas that do not unify)
        for rel in files:
            self.verify(rel, digests.get(rel))
        return table

    def read_table(self, rel_dir: str, columns: list[str] | None = None, filter=None) -> pa.Table | None:
        return self.read_files(rel_dir, columns=columns, filter=filter)


def _hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def partition_path(*parts: str, **keys: Any) -> str:
    """`partition_path("silver", "bars_5m", product_id="BTC-USD", date="2026-01-01")` -> hive-style path."""
    return posixpath.join(*parts, *(f"{k}={v}" for k, v in keys.items()))


def get_store(settings: Settings | None = None) -> Store:
    return Store.from_uri((settings or get_settings()).data_dir)
