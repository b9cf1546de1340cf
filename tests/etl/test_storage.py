"""etl/storage.py on a local disk and on a real S3-compatible server (moto's, from conftest): atomic writes that
leave no temporary names behind, what readers see (hidden names, hive partitions), and the one-writer lock."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from etl.storage import Store, get_store, partition_path

TABLE = pa.table({"bucket_start": pa.array([1, 2, 3], pa.int64()), "close": [10.0, 11.0, 12.5]})


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> Store:
    """The same tests on both backends the pipeline runs on."""
    if request.param == "local":
        return Store.from_uri(str(tmp_path / "data"))
    return Store.from_uri(f"{request.getfixturevalue('s3_bucket')}/data")


def test_uris_pick_the_backend():
    local = Store.from_uri("relative/dir/")
    assert local.is_local and local.root == os.path.abspath("relative/dir")
    assert local.path("silver", "x.parquet") == os.path.abspath("relative/dir/silver/x.parquet")
    assert Store.from_uri("file:///tmp/pipeline/").root == "/tmp/pipeline"


def test_get_store_is_the_data_dir_setting(data_dir):
    assert get_store().root == str(data_dir) and get_store().is_local


def test_partition_path_is_hive_style():
    assert partition_path("silver", "bars_5m", product_id="BTC-USD", date="2026-01-01") == \
        "silver/bars_5m/product_id=BTC-USD/date=2026-01-01"


def test_writes_read_back_and_leave_no_temporary_file(store):
    rel = partition_path("silver", "bars_5m", product_id="BTC-USD", date="2026-01-01") + "/part-0.parquet"
    assert store.write_parquet(rel, TABLE) == store.path(rel)
    assert store.read_parquet(rel).equals(TABLE)
    assert store.read_parquet(rel, columns=["close"]).column("close").to_pylist() == [10.0, 11.0, 12.5]
    store.write_json("_manifests/m1.json", {"b": 1, "a": [1, 2]})
    assert store.read_json("_manifests/m1.json") == {"a": [1, 2], "b": 1}
    store.write_bytes("notes/readme.txt", b"hello")
    store.copy("notes/readme.txt", "notes/copy.txt")
    assert store.exists("notes/copy.txt") and not store.exists("notes/missing.txt")
    assert [rel for rel, _ in store.entries("")] == sorted([
        "_manifests/m1.json", "notes/copy.txt", "notes/readme.txt", rel])
    assert dict(store.entries("notes")) == {"notes/copy.txt": 5, "notes/readme.txt": 5}
    store.write_parquet(rel, TABLE.slice(0, 1))  # an overwrite replaces the file whole
    assert store.read_parquet(rel).num_rows == 1


def test_delete_removes_a_file_or_a_folder_and_ignores_what_is_not_there(store):
    for name in ("a/1.txt", "a/b/2.txt", "c.txt"):
        store.write_bytes(name, b"x")
    store.delete("c.txt")
    store.delete("a")
    store.delete("never-written")
    assert store.entries("") == []


def test_readers_skip_hidden_names_and_writes_in_flight(tmp_path):
    store = Store.from_uri(str(tmp_path / "data"))
    part = partition_path("bronze", "candles", product_id="BTC-USD", date="2026-01-01")
    store.write_parquet(f"{part}/batch-1.parquet", TABLE)
    store.write_parquet(f"{part}/_quarantine/bad.parquet", TABLE)
    store.write_bytes(f"{part}/.marker", b"")
    (tmp_path / "data" / part / ".tmp-0123-batch-2.parquet").write_bytes(b"half a file")  # a crashed write
    store.write_bytes("bronze/_locks/silver.lock", b"")
    store.write_bytes("bronze/.hidden/x.parquet", b"")
    assert store.list_files("bronze", ".parquet") == [f"{part}/batch-1.parquet"]
    assert [rel for rel, _ in store.entries("bronze")] == sorted([  # markers count, writes in flight do not
        f"{part}/batch-1.parquet", f"{part}/_quarantine/bad.parquet", f"{part}/.marker", "bronze/_locks/silver.lock",
        "bronze/.hidden/x.parquet"])
    assert store.list_dirs("bronze/candles") == ["product_id=BTC-USD"]
    assert store.list_dirs("bronze/candles", prefix="product_id=") == ["BTC-USD"]
    assert store.list_dirs("bronze/nothing") == [] and store.list_files("bronze/nothing") == []


def test_datasets_carry_the_partition_columns(store):
    for product, day, close in (("BTC-USD", "2026-01-01", 1.0), ("BTC-USD", "2026-01-02", 2.0),
                                ("ETH-USD", "2026-01-01", 3.0)):
        rel = partition_path("silver", "bars_1d", product_id=product, date=day) + "/part-0.parquet"
        store.write_parquet(rel, pa.table({"close": [close]}))
    table = store.read_table("silver/bars_1d").sort_by("close")
    assert table.column("product_id").to_pylist() == ["BTC-USD", "BTC-USD", "ETH-USD"]
    assert [str(d) for d in table.column("date").to_pylist()] == ["2026-01-01", "2026-01-02", "2026-01-01"]
    eth = store.read_table("silver/bars_1d", columns=["close"], filter=ds.field("product_id") == "ETH-USD")
    assert eth.column("close").to_pylist() == [3.0]
    only = [partition_path("silver", "bars_1d", product_id="BTC-USD", date="2026-01-02") + "/part-0.parquet"]
    assert store.dataset("silver/bars_1d", files=only).to_table().column("close").to_pylist() == [2.0]
    assert store.dataset("silver/nothing") is None and store.read_table("silver/nothing") is None


def test_s3_writes_are_one_put_of_the_final_key(s3_bucket):
    store = Store.from_uri(f"{s3_bucket}/data")
    assert not store.is_local and store.root == f"{s3_bucket[len('s3://'):]}/data"
    store.write_parquet("silver/x.parquet", TABLE)
    assert [rel for rel, _ in store.entries("")] == ["silver/x.parquet"]


# ---- one writer at a time ------------------------------------------------------------------------------------
