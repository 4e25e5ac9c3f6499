"""A table's Parquet files read by row groups: one file splits across read tasks, every row
read once, as written, with only the columns asked for, and a partitioned table's folder
names as columns."""

from __future__ import annotations

from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from ray_app.data.ingest import DataError, open_source
from ray_app.data.parquet_files import RowGroups, parquet_files, partitions


@pytest.fixture
def one_file(tmp_path):
    """One file of 10 row groups of 1,000 rows, with the index pandas writes for a frame
    whose rows are not numbered 0..n."""
    frame = pd.DataFrame(
        {"id": range(10_000), "text": [f"v{i}" for i in range(10_000)], "x": 0.5},
        index=range(5, 10_005),
    )
    path = tmp_path / "one.parquet"
    pq.write_table(pa.Table.from_pandas(frame), path, row_group_size=1_000)
    return path, frame.reset_index(drop=True)


def test_one_file_is_read_by_several_tasks_each_a_run_of_its_row_groups(one_file):
    path, _ = one_file
    tasks = RowGroups([path]).get_read_tasks(4)
    assert len(tasks) == 4
    assert [t.metadata.num_rows for t in tasks] == [3_000, 3_000, 2_000, 2_000]
    ids = [table["id"].to_pylist() for task in tasks for table in task()]
    assert sum(ids, []) == list(range(10_000))  # in file order, each row once
    assert RowGroups([path]).supports_distributed_reads is False  # read where the files are


def test_rows_come_out_as_written_without_pandas_index(one_file, ray_session):
    path, frame = one_file
    read = ray_session.data.read_datasource(RowGroups(parquet_files(path))).to_pandas()
    assert list(read.columns) == ["id", "text", "x"]
    assert read.sort_values("id").to_dict("list") == frame.to_dict("list")


def test_only_the_columns_asked_for_are_read_and_sized(one_file):
    path, _ = one_file
    everything, some = RowGroups([path]), RowGroups([path], ["id"])
    assert some.estimate_inmemory_data_size() < everything.estimate_inmemory_data_size()
    [table, *_] = some.get_read_tasks(1)[0]()
    assert table.column_names == ["id"]


def test_a_folder_is_its_parquet_files_at_any_depth_and_a_file_without_rows_no_task(tmp_path):
    (tmp_path / "day=1").mkdir()
    (tmp_path / "_temporary" / "0").mkdir(parents=True)
    one = pa.table({"id": [1, 2]})
    pq.write_table(one, tmp_path / "day=1" / "a.parquet")
    pq.write_table(pa.table({"id": pa.array([], pa.int64())}), tmp_path / "b.parquet")
    # Not data, as Ray Data and Spark see it: an unfinished write's leftovers, hidden files.
    pq.write_table(one, tmp_path / "_temporary" / "0" / "part-0.parquet")
    pq.write_table(one, tmp_path / ".c.parquet.crc.parquet")
    (tmp_path / "_SUCCESS").write_text("")
    files = parquet_files(tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["b.parquet", "day=1/a.parquet"]
    tasks = RowGroups(files).get_read_tasks(8)
    assert [t.metadata.num_rows for t in tasks] == [2]


def test_a_file_that_lost_a_column_since_it_was_opened_says_so(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1], "x": [0.5]}), path)
    reader = RowGroups([path], ["id", "x"])
    pq.write_table(pa.table({"id": [1]}), path)  # rewritten between the footer and the read
    with pytest.raises(ValueError, match=r"t.parquet: no column \['x'\]"):
        list(reader.get_read_tasks(1)[0]())


def test_hive_partition_folders_are_text_columns_after_the_files_own(tmp_path, ray_session):
    """As Ray Data and Spark read a partitioned table: `key=value` folders add a text column
    (%-escapes decoded), asked for or not like any other."""
    for region, day in (("north", "1"), ("south/east", "2")):
        folder = tmp_path / f"region={quote(region, safe='')}" / f"day={day}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": [int(day)], "x": [int(day) * 10]}), folder / "p.parquet")
    files = parquet_files(tmp_path)
    assert partitions(files[1], tmp_path) == {"region": "south/east", "day": "2"}
    read = ray_session.data.read_datasource(RowGroups(files, root=tmp_path)).take_all()
    assert sorted(read, key=lambda row: row["id"]) == [
        {"id": 1, "x": 10, "region": "north", "day": "1"},
        {"id": 2, "x": 20, "region": "south/east", "day": "2"},
    ]
    [table, *_] = RowGroups(files, ["region"], root=tmp_path).get_read_tasks(1)[0]()
    assert table.column_names == ["region"] and table.num_rows == 1
    [table, *_] = RowGroups(files, ["id"], root=tmp_path).get_read_tasks(1)[0]()
    assert table.column_names == ["id"]
    assert open_source(tmp_path).columns == ["id", "x", "region", "day"]
    assert open_source(tmp_path).partitioned == ("region", "day")


def test_a_file_outside_the_partition_folders_lacks_their_column(tmp_path):
    (tmp_path / "region=north").mkdir()
    pq.write_table(pa.table({"id": [1]}), tmp_path / "region=north" / "a.parquet")
    pq.write_table(pa.table({"id": [2]}), tmp_path / "b.parquet")
    with pytest.raises(DataError, match=r"a.parquet: adds \['region'\] against .*b.parquet"):
        open_source(tmp_path)


def test_partitions_written_by_pyarrow_read_as_pyarrow_reads_them(tmp_path, ray_session):
    """`write_to_dataset` (pandas' `partition_cols`, Spark alike) names a null value
    `__HIVE_DEFAULT_PARTITION__` and %-escapes the rest: read back as null and as written."""
    table = pa.table({"id": [1, 2, 3], "region": ["north", None, "a/b c"]})
    pq.write_to_dataset(table, tmp_path, partition_cols=["region"])
    read = ray_session.data.read_datasource(RowGroups(parquet_files(tmp_path), root=tmp_path))
    expected = pads.dataset(tmp_path, partitioning="hive").to_table().to_pylist()
    got = sorted(read.take_all(), key=lambda row: row["id"])
    assert got == sorted(expected, key=lambda row: row["id"])
    assert [row["region"] for row in got] == ["north", None, "a/b c"]
