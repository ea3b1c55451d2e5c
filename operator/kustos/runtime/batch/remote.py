"""An ``s3://bucket/key`` input read in place, with ranged GETs: a seekable binary file.

CSV and JSONL are read front to back in blocks of ``READ_BLOCK`` (one GET each, memory:
one block). Parquet is read where fastparquet seeks: the footer, then each row group it
is asked for, fetched whole with one GET of exactly its columns' bytes (``prefetch``), so
a shard reads only the row groups of its chunks. Transient errors are tried as for the
output's PUTs (sink.S3_ATTEMPTS). A reader is pinned to the version of its first GET:
the later ones send ``If-Match`` with its ETag, and an object overwritten since (412, or
another ETag from a store that ignores If-Match) is an InputError, never bytes of two
versions in one read. A shard's chunk reader starts from the ETag its layout reader saw
(source.Layout.version), so one shard reads one version; two shards that start apart can
still read two. No digest is checked here: the
bytes are not all read, or not before predictions are written; an input with a digest is
fetched whole first (`kustos fetch`), as the operator's Job does.

The reader's settings are the AWS_* variables, or with an :class:`S3Input`'s
``env_prefix`` the variables PREFIX + AWS_* only: the operator's Job gives the input's
Secret that way (envFrom with a prefix), so the input and the output (AWS_*, its own
Secret) each keep their own keys, endpoint and region.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

READ_BLOCK = 8 * 2**20  # a GET while reading front to back
FIRST_BLOCK = 64 * 2**10  # the first GET (also learns the size): a header or a footer


@dataclass(frozen=True)
class S3Input:
    """An ``s3://bucket/key`` input and where its settings come from: the variables
    ``env_prefix`` + AWS_* ("": AWS_*, as the output's)."""

    uri: str
    env_prefix: str = ""
    etag: str = ""  # the version to read (If-Match from the first GET on); "": the current

    def __str__(self) -> str:
        return self.uri


def s3_input(where: object) -> S3Input:
    """An S3Input as given; an ``s3://`` string (or a path-like) reads the AWS_* settings."""
    return where if isinstance(where, S3Input) else S3Input(str(where))


def is_remote(path: object) -> bool:
    return str(path).startswith("s3://")


def name_of(path: object) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


class S3Reader(io.RawIOBase):
    """The object at ``where`` as a seekable raw binary file. Keeps one window of bytes:
    a read inside it costs no request; one outside GETs at least ``block`` bytes from
    there (fewer at the end). ``gets`` and ``fetched`` count the GETs and their bytes."""

    def __init__(self, where: str | S3Input, block: int = READ_BLOCK,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        super().__init__()
        source = s3_input(where)
        self.uri, self._env_prefix = source.uri, source.env_prefix
        self.block, self._sleep = block, sleep
        self.gets = self.fetched = 0
        self._pos = 0
        self._window_start = 0
        self._window = b""
        self._size: int | None = None
        # The version read: given, or the first GET's ETag; sent as If-Match.
        self.etag = source.etag
        self._load(0, FIRST_BLOCK)

    def _load(self, start: int, length: int) -> None:
        from kustos.runtime import s3
        from kustos.runtime.fetch import FetchError, HTTPStatusError

        from .sink import retried
        from .source import InputError

        def once() -> s3.ObjectRange:
            return s3.object_range(self.uri, start, start + max(length, 1) - 1,
                                   env_prefix=self._env_prefix, if_match=self.etag)

        try:
            data, size, etag = retried(once, self._sleep)
        except HTTPStatusError as err:
            if err.status == 412 and self.etag:
                raise InputError(self._changed()) from None
            raise InputError(str(err)) from None
        except FetchError as err:
            raise InputError(str(err)) from None
        if not self.etag:
            self.etag = etag
        elif etag and etag != self.etag:  # a store that ignores If-Match
            raise InputError(self._changed())
        self.gets += 1
        self.fetched += len(data)
        self._size, self._window_start, self._window = size, start, data

    def _changed(self) -> str:
        return (f"{self.uri} changed while being read (ETag {self.etag} when its layout "
                "was read): predictions from two versions would mix; run again on an input "
                "that is not overwritten during the run, or give its digest")

    @property
    def size(self) -> int:
        assert self._size is not None
        return self._size

    def prefetch(self, start: int, end: int) -> None:
        """Bytes [start, end) in one GET, unless the window holds them already."""
        if not (self._window_start <= start and end <= self._window_start + len(self._window)):
            self._load(start, end - start)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self.size - self._pos))
        done = 0
        while done < want:
            at = self._pos + done
            inside = at - self._window_start
            if not 0 <= inside < len(self._window):
                self._load(at, max(self.block, want - done))
                inside = 0
            piece = self._window[inside:inside + want - done]
            if not piece:  # the object shrank under us
                break
            view[done:done + len(piece)] = piece
            done += len(piece)
        self._pos += done
        return done


def open_binary(where: str | S3Input) -> io.BufferedReader:
    """Front to back (CSV, JSONL): the reader behind a buffer."""
    return io.BufferedReader(S3Reader(where), buffer_size=io.DEFAULT_BUFFER_SIZE)


def open_text(where: str | S3Input) -> io.TextIOWrapper:
    return io.TextIOWrapper(open_binary(where), encoding="utf-8", newline="")
