"""A table's local Parquet files as Ray Data reads them here: split into read tasks by row
group, so that a large file of several row groups is read by several tasks at once.

Ray Data's V1 Parquet reader gives each file one read task. A table in a single file (the
usual export) was read by one task, and scoring sat waiting for its first 32 MiB block with a
CPU idle: at 1M rows, 0.3 to 0.5 s of a 1.5 s call. Its V2 reader splits files by row group,
but reads their footers on a pool of actors that it starts, and kills, on every read (2.7 s
before the first row here). The footers are read here instead, on the driver, where
`open_source` has just read them: 10 footers of a 1M-row file in milliseconds. Each read task
takes a run of row groups in file order. A file of one row group (pandas writes up to 1Mi rows
so) is still one task. Downstream operators that batch rows (`map_batches(batch_size=...)`)
are not fused into these tasks, so on a cluster the reads stay on the node that has the files
and the work after them goes wherever Ray has CPUs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

# Rows decoded at a time; Ray Data joins them into blocks of its target size.
BATCH_ROWS = 65_536
# The columns pandas writes for an index that is not a plain range (`__index_level_0__`).
PANDAS_INDEX = re.compile(r"__index_level_\d+__")
HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"


def parquet_files(path: Path) -> list[Path]:
    """The Parquet files of a table: the file itself, or every `.parquet` file under a folder
    at any depth (Hive partitions are folders), in name order. As Ray Data and Spark do, a
    name starting with `.` or `_` is not data: a hidden file, or what an unfinished write
    left (`_temporary/`)."""
    if not path.is_dir():
        return [path]
    hidden = (".", "_")
    return [
        file
        for file in sorted(path.rglob("*.parquet"))
        if not any(part.startswith(hidden) for part in file.relative_to(path).parts)
    ]


def partitions(file: Path, root: Path) -> dict[str, str | None]:
    """The Hive partition values a file's folders name between `root` and it (`region=north/`),
    as text, %-escapes decoded as Hive writes them; Hive's, Spark's and pyarrow's marker of a
    null value (`__HIVE_DEFAULT_PARTITION__`) is null."""
    folders = [part.split("=", 1) for part in file.relative_to(root).parts[:-1] if "=" in part]
    return {unquote(key): None if value == HIVE_NULL else unquote(value) for key, value in folders}


def plain(table: pa.Table) -> pa.Table:
    """A Parquet block as its columns, without what pandas wrote for its index. From the file's
    pandas metadata, Ray's and Arrow's `to_pandas` would make an index again: an id written
    with `set_index` would no longer be a column, and a filtered frame's row labels (which
    repeat across files) would be the batch's. A named index stays a column; pandas' unnamed
    index columns (`__index_level_0__`) go."""
    keep = [name for name in table.column_names if not PANDAS_INDEX.fullmatch(name)]
    return table.select(keep).replace_schema_metadata(None)


@dataclass(frozen=True)
class _Group:
    file: str
    index: int
    rows: int
    bytes: int  # uncompressed, of the columns read: about its size in memory
    partitions: tuple[tuple[str, str | None], ...] = ()  # added to its rows as text columns


def _groups(file: Path, root: Path, columns: list[str] | None) -> list[_Group]:
    meta = pq.read_metadata(file)
    names = set(meta.schema.to_arrow_schema().names)
    added = tuple(
        (key, value)
        for key, value in partitions(file, root).items()
        if key not in names and (columns is None or key in columns)
    )
    groups = []
    for index in range(meta.num_row_groups):
        group = meta.row_group(index)
        size = sum(
            group.column(c).total_uncompressed_size
            for c in range(group.num_columns)
            if columns is None or group.column(c).path_in_schema in columns
        )
        if group.num_rows:  # pyarrow writes a table of no rows as one empty group
            groups.append(_Group(str(file), index, group.num_rows, size, added))
    return groups


def _read(groups: list[_Group], columns: list[str] | None) -> Iterator[pa.Table]:
    """A read task: its row groups in batches of `BATCH_ROWS`, as `plain` makes them, decoded
    on the task's one thread; what it holds is a row group's compressed pages and a batch."""
    by_file: dict[str, list[_Group]] = {}
    for group in groups:
        by_file.setdefault(group.file, []).append(group)
    for file, runs in by_file.items():
        added = dict(runs[0].partitions)
        batches = pq.ParquetFile(file).iter_batches(
            BATCH_ROWS,
            row_groups=[group.index for group in runs],
            columns=None if columns is None else [c for c in columns if c not in added],
            use_threads=False,
        )
        for batch in batches:
            table = plain(pa.Table.from_batches([batch]))
            if added:  # built anew: a batch of no columns (only partitions asked for) has rows
                values = [
                    pa.repeat(pa.scalar(v, pa.string()), batch.num_rows) for v in added.values()
                ]
                table = pa.Table.from_arrays(
                    [*table.columns, *values], names=[*table.column_names, *added]
                )
            if columns is not None and len(table.column_names) < len(columns):
                lost = [c for c in columns if c not in table.column_names]
                raise ValueError(f"{file}: no column {lost}; the file changed while read")
            yield table


class RowGroups(Datasource):
    """Local Parquet files (`columns` of them, or all) for `ray.data.read_datasource`, in
    read tasks of contiguous row groups, with the Hive partition values of their folders
    under `root` as columns. A file without rows gives no task. Reads every footer:
    pyarrow's error for one that cannot be read."""

    def __init__(
        self, files: list[Path], columns: list[str] | None = None, root: Path | None = None
    ) -> None:
        super().__init__()
        self.columns = columns
        self.groups = [
            group for file in files for group in _groups(file, root or file.parent, columns)
        ]

    @property
    def supports_distributed_reads(self) -> bool:
        """False: Ray Data runs the read tasks on the driver's node, which has the files."""
        return False

    def estimate_inmemory_data_size(self) -> int:
        return sum(group.bytes for group in self.groups)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context=None
    ) -> list[ReadTask]:
        tasks = []
        for run in np.array_split(np.arange(len(self.groups)), max(1, parallelism)):
            groups = [self.groups[i] for i in run]
            if not groups:
                continue
            meta = BlockMetadata(
                num_rows=sum(g.rows for g in groups),
                size_bytes=sum(g.bytes for g in groups),
                input_files=list(dict.fromkeys(g.file for g in groups)),
                exec_stats=None,
            )
            read = partial(_read, groups, self.columns)
            tasks.append(ReadTask(read, meta, per_task_row_limit=per_task_row_limit))
        return tasks
