"""Arrow tables as PostgreSQL's binary COPY format, built column-wise (no per-row Python, no text round trip).

The format (PostgreSQL docs, "COPY ... Binary Format"): a header, then per row an int16 field count and per field
an int32 byte length (-1 = NULL) followed by the value in the type's binary send format, big-endian; then an int16
-1 trailer. Against CSV, the server skips parsing text into floats and timestamps, and the client skips printing
them: both sides of the load get cheaper.

How a chunk is built: each column becomes an Arrow binary array whose values are its whole fields (length prefix +
value, NULLs as the 4-byte -1), made from numpy buffers with uniform offsets for the fixed-width types; one
`binary_join_element_wise` then concatenates the fields of each row, and the joined array's data buffer is the rows
in COPY order. The columns must already have the Arrow types of the target's columns
(`etl.warehouse.schema.ARROW_TYPES`): binary COPY does not convert, the server checks each field's length.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")  # signature, flags, extension
TRAILER = (-1).to_bytes(2, "big", signed=True)
NULL_FIELD = (-1).to_bytes(4, "big", signed=True)
PG_EPOCH_DAYS = 10_957                       # 2000-01-01, PostgreSQL's epoch, in days since 1970-01-01
PG_EPOCH_US = PG_EPOCH_DAYS * 86_400 * 1_000_000


def _fixed_fields(values: np.ndarray, be_dtype: str) -> np.ndarray:
    """Each value as a field: int32 length + the value big-endian (one record per row)."""
    width = np.dtype(be_dtype).itemsize
    rec = np.empty(len(values), np.dtype([("len", ">i4"), ("v", be_dtype)]))
    rec["len"] = width
    rec["v"] = values
    return rec


def _binary(records: np.ndarray, n: int, width: int) -> pa.Array:
    offsets = pa.py_buffer(np.arange(0, (n + 1) * width, width, dtype=np.int32))
    return pa.Array.from_buffers(pa.binary(), n, [None, offsets, pa.py_buffer(records.view(np.uint8))])


# Arrow type -> (the numpy dtype of its values buffer, the big-endian dtype PostgreSQL receives, offset to subtract)
def _wire(t: pa.DataType) -> tuple[str, str, int]:
    if pa.types.is_float64(t):
        return "<f8", ">f8", 0
    if pa.types.is_int64(t):
        return "<i8", ">i8", 0
    if pa.types.is_int32(t):
        return "<i4", ">i4", 0
    if pa.types.is_date32(t):
        return "<i4", ">i4", PG_EPOCH_DAYS
    if pa.types.is_timestamp(t) and t.unit == "us":
        return "<i8", ">i8", PG_EPOCH_US
    raise TypeError(f"no binary COPY encoding for Arrow type {t}")


def _field_array(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    """One column's fields (length prefix + value; NULL -> -1) as a binary array."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        data = arr.cast(pa.binary())
        lengths = pc.binary_length(data).fill_null(0).to_numpy(zero_copy_only=False).astype(">i4")
        fields = pc.binary_join_element_wise(_binary(lengths, n, 4), data, b"")
    elif pa.types.is_boolean(arr.type):  # bit-packed in Arrow: one byte on the wire
        fields = _binary(_fixed_fields(arr.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8), "u1"),
                         n, 5)
    else:  # the values buffer as it is (slots under NULLs hold anything: replaced below)
        native, be, epoch = _wire(arr.type)
        values = np.frombuffer(arr.buffers()[1], native, n, arr.offset * np.dtype(native).itemsize)
        fields = _binary(_fixed_fields(values - epoch if epoch else values, be), n, 4 + np.dtype(be).itemsize)
    if arr.null_count:
        fields = pc.if_else(arr.is_valid(), fields, pa.scalar(NULL_FIELD, pa.binary()))
    return fields


def encode(table: pa.Table) -> bytes:
    """The rows of `table` as binary COPY tuples (no header or trailer), its columns in table order."""
    n = table.num_rows
    if n == 0:
        return b""
    count = np.full(n, table.num_columns, ">i2")
    joined = pc.binary_join_element_wise(_binary(count, n, 2), *(_field_array(c) for c in table.columns), b"")
    offsets = np.frombuffer(joined.buffers()[1], np.int32, n + 1, joined.offset * 4)
    return joined.buffers()[2][offsets[0]:offsets[-1]].to_pybytes()
