"""Where snapshots live: a folder on any pyarrow filesystem (a local path, `file://`, `s3://`,
`gs://`, `hdfs://`), named by one URI in the config.

Object stores have no atomic folder rename, so commits are single-object writes: a writer
puts its files under a fresh attempt folder and then writes one small marker file naming it.
Readers trust only what a marker names; a crashed writer leaves at most an unnamed attempt
folder, which the next writer of that version removes.
"""

from __future__ import annotations

import posixpath
import uuid
from pathlib import Path

import pyarrow.fs as pafs

from ray_app.config import default_store, redact_url


class DataStore:
    """A root folder on a pyarrow filesystem, with the few operations snapshots need."""

    def __init__(self, uri: str | Path):
        text = str(uri)
        if "://" in text:
            self.fs, self.root = pafs.FileSystem.from_uri(text)
            # Query parameters (endpoint, region, credentials) and any password in the URI
            # stay out of what is displayed and recorded as lineage.
            self.uri = redact_url(text.split("?", 1)[0])
        else:
            local = Path(text).expanduser().resolve()
            self.fs, self.root, self.uri = pafs.LocalFileSystem(), local.as_posix(), str(local)
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def path(self, *parts: str) -> str:
        """The filesystem path (no scheme) of a location inside the store."""
        return posixpath.join(self.root, *parts)

    def url(self, *parts: str) -> str:
        """The location as a person would type it, for messages and lineage."""
        return posixpath.join(self.uri, *parts)

    def is_file(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type == pafs.FileType.File

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.read().decode()

    def write_text(self, text: str, *parts: str) -> None:
        """Write a small file so that readers see the old content or the new, never half."""
        target = self.path(*parts)
        self.fs.create_dir(posixpath.dirname(target), recursive=True)
        if not self.local:  # an object PUT is atomic on its own
            with self.fs.open_output_stream(target) as f:
                f.write(text.encode())
            return
        tmp = f"{target}.{uuid.uuid4().hex[:8]}.tmp"
        with self.fs.open_output_stream(tmp) as f:
            f.write(text.encode())
        self.fs.move(tmp, target)

    def folders(self, *parts: str) -> list[str]:
        """Names of the folders directly under a location (none if it does not exist)."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True)
        return [
            info.base_name
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.Directory
        ]

    def delete(self, *parts: str) -> None:
        path = self.path(*parts)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)


def open_store(uri: str | Path | None) -> DataStore:
    """The configured store, else `default_store()`: `$RAYAPP_DATA_STORE` (on a cluster, the
    one store every node shares), else `$RAYAPP_HOME/data`."""
    return DataStore(uri or default_store())
