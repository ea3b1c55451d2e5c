"""Bulk label files: CSV, JSONL or Parquet from file:// or s3://, polled on an interval.

A source URI names one file, or a directory / key prefix when it ends with "/" (then every
file in it with the format's extension: a daily file lands next to yesterday's). Each file
is loaded once: it is known by URI + size + mtime (file) or ETag (S3), recorded in the
store, so a restart does not load it again and a rewritten file is loaded anew (labels
replace earlier labels of the same id). Columns: ``id``, ``label``, optional ``row`` (the
row of a multi-row inference); the others are the labels' metadata. A row that cannot be
used is counted and reported, never fatal; an unreadable file is reported in the status
and tried again only once it changes.

S3: the AWS SDKs' provider chain and settings (runtime/aws_credentials.py), SigV4
(runtime/s3.py), objects downloaded with runtime/fetch.py into the monitor's directory.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import tempfile
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from kustos.runtime.truth import parse
from kustos.runtime.truth.config import BulkSource

if TYPE_CHECKING:
    from kustos.runtime.truth.monitor import Monitor

log = logging.getLogger("kustos.truth")
EXTENSIONS = {"csv": (".csv",), "jsonl": (".jsonl", ".ndjson", ".json"),
              "parquet": (".parquet", ".pq")}
MAX_FILES = 1000  # files listed per poll of one source
LABEL_BATCH = 5000
BAD_EXAMPLES = 5  # bad rows named in the status per file


class BulkError(Exception):
    """A source or file that cannot be read; the message carries no secret. A transient
    one (the network) is tried again at the next poll; another waits for the file to
    change."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class Found:
    uri: str
    size: int
    stamp: str  # mtime in ns (file) or ETag (S3)


# ----------------------------------------------------------------------------- listing


def list_files(source: BulkSource) -> list[Found]:
    parts = urllib.parse.urlsplit(source.uri)
    if parts.scheme == "file":
        return _list_local(urllib.parse.unquote(parts.path), source)
    return _list_s3(parts.netloc, parts.path.lstrip("/"), source)


def _matches(name: str, source: BulkSource) -> bool:
    return name.lower().endswith(EXTENSIONS[source.format])


def _list_local(path: str, source: BulkSource) -> list[Found]:
    p = Path(path)
    if source.uri.endswith("/") or p.is_dir():
        if not p.is_dir():
            raise BulkError(f"{source.uri}: no such directory")
        files = sorted(f for f in p.iterdir() if f.is_file() and _matches(f.name, source))
    elif p.is_file():
        files = [p]
    else:
        raise BulkError(f"{source.uri}: no such file")
    out = []
    for f in files[:MAX_FILES]:
        st = f.stat()
        out.append(Found(f.as_uri(), st.st_size, str(st.st_mtime_ns)))
    return out


def _list_s3(bucket: str, key: str, source: BulkSource) -> list[Found]:
    from kustos.runtime import aws_credentials as aws
    from kustos.runtime import s3

    try:
        creds, context, region, endpoint = s3.session()
    except aws.CredentialsError as exc:
        raise BulkError(f"{source.uri}: no credentials: {exc}") from None
    prefix = key  # one object: its own key as the prefix, then the exact match
    out: list[Found] = []
    token: str | None = None
    while len(out) < MAX_FILES:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        url = s3.s3_url(bucket, "", region, endpoint) + "?" + urllib.parse.urlencode(
            query, quote_via=urllib.parse.quote)
        headers = s3.sigv4_headers("GET", url, creds, region)
        status, body = _get(url, headers, context, bool(endpoint))
        if status != 200:
            code = aws._xml_text(body, "Code") or f"HTTP {status}"
            raise BulkError(f"{source.uri}: listing failed: {code}")
        root = ET.fromstring(body)
        for item in root.iter():
            if not item.tag.endswith("Contents"):
                continue
            name = _child(item, "Key")
            if name is None:
                continue
            whole = source.uri.endswith("/") or not key
            if (whole and _matches(name, source)) or (not whole and name == key):
                out.append(Found(f"s3://{bucket}/{name}", int(_child(item, "Size") or 0),
                                 (_child(item, "ETag") or "").strip('"')))
        token = aws._xml_text(body, "NextContinuationToken")
        if aws._xml_text(body, "IsTruncated") != "true" or not token:
            break
    if not out and not source.uri.endswith("/"):
        raise BulkError(f"{source.uri}: no such object")
    return out


def _child(item: ET.Element, name: str) -> str | None:
    for c in item:
        if c.tag.endswith(name):
            return c.text
    return None


def _get(url: str, headers: dict[str, str], context: Any, allow_http: bool
         ) -> tuple[int, bytes]:
    from kustos.runtime.aws_credentials import is_loopback

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(host, parts.port, timeout=30, context=context)
    elif allow_http or is_loopback(host):
        conn = http.client.HTTPConnection(host, parts.port, timeout=30)
    else:
        raise BulkError("refusing plain http to S3")
    try:
        conn.request("GET", parts.path + ("?" + parts.query if parts.query else ""),
                     headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read(16 << 20)
    except (OSError, http.client.HTTPException) as exc:
        raise BulkError(f"S3 unreachable: {getattr(exc, 'strerror', None) or exc}",
                        transient=True) from None
    finally:
        conn.close()


# ----------------------------------------------------------------------------- reading


@dataclass
class Loaded:
    labels: list[parse.LabelIn]
    rows: int
    bad: int
    examples: list[str]


def read_rows(path: Path, fmt: str) -> Iterator[dict[str, Any] | str]:
    """The file's rows as dicts; a row that is not even a record is its problem (str)."""
    if fmt == "jsonl":
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    yield f"line {n}: not JSON"
                    continue
                yield doc if isinstance(doc, dict) else f"line {n}: not a JSON object"
        return
    import pandas as pd

    try:
        if fmt == "csv":
            # Strings throughout: ids keep leading zeros, labels are canonicalised later.
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            frame = pd.read_parquet(path, engine="fastparquet")
    except Exception as exc:  # pandas raises many kinds for a broken file
        raise BulkError(f"cannot read the {fmt} file: {type(exc).__name__}: "
                        f"{str(exc)[:200]}") from None
    missing = [c for c in ("id", "label") if c not in frame.columns]
    if missing:
        raise BulkError(f"the {fmt} file has no column(s) {', '.join(missing)} (columns: "
                        f"{', '.join(map(str, list(frame.columns)[:20]))})")
    columns = [str(c) for c in frame.columns]
    for values in frame.itertuples(index=False, name=None):
        row = {}
        for c, v in zip(columns, values, strict=True):
            if hasattr(v, "item"):
                v = v.item()  # numpy scalar -> Python
            if fmt == "csv" and v == "":
                v = None
            row[c] = v
        yield row


def load_file(path: Path, fmt: str, task: str) -> Loaded:
    labels: list[parse.LabelIn] = []
    bad, rows = 0, 0
    examples: list[str] = []
    for i, row in enumerate(read_rows(path, fmt)):
        rows += 1
        try:
            if isinstance(row, str):
                raise parse.ProtocolError(row)
            labels.append(parse.parse_bulk_row(row, task, f"row {i}"))
        except parse.ProtocolError as exc:
            bad += 1
            if len(examples) < BAD_EXAMPLES:
                examples.append(exc.message)
    return Loaded(labels, rows, bad, examples)


# ----------------------------------------------------------------------------- poller


class BulkLoader:
    """One thread polls every source on its interval."""

    def __init__(self, monitor: Monitor, work_dir: Path) -> None:
        self.monitor = monitor
        self.work_dir = work_dir
        self.sources = monitor.cfg.bulk
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kustos-truth-bulk",
                                        daemon=True)
        for s in self.sources:
            monitor.sources[s.uri] = {"uri": s.uri, "format": s.format, "files": 0,
                                      "rows": 0, "badRows": 0, "lastPoll": None,
                                      "lastError": None, "badExamples": []}

    def start(self) -> None:
        if self.sources:
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        due = dict.fromkeys(range(len(self.sources)), 0.0)
        while not self._stop.is_set():
            now = time.monotonic()
            for i, source in enumerate(self.sources):
                if now >= due[i]:
                    self.poll(source)
                    due[i] = time.monotonic() + source.interval
            self._stop.wait(max(0.05, min(due.values()) - time.monotonic()))

    def poll(self, source: BulkSource) -> None:
        from kustos.runtime.truth.monitor import rfc3339

        state = self.monitor.sources[source.uri]
        state["lastPoll"] = rfc3339(time.time())
        try:
            found = list_files(source)
            state["lastError"] = None
        except BulkError as exc:
            state["lastError"] = str(exc)
            log.warning("bulk labels: %s", exc)
            return
        except Exception as exc:  # never the loader's end
            state["lastError"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.exception("bulk labels: listing %s failed", source.uri)
            return
        store = self.monitor.store
        for f in found:
            if self._stop.is_set() or store.bulk_seen(f.uri, f.size, f.stamp):
                continue
            self.load(source, f, state)

    def load(self, source: BulkSource, f: Found, state: dict[str, Any]) -> None:
        store, metrics = self.monitor.store, self.monitor.metrics
        error = None
        transient = False
        loaded = Loaded([], 0, 0, [])
        try:
            with self._local(f) as path:
                loaded = load_file(path, source.format, self.monitor.cfg.task)
            for start in range(0, len(loaded.labels), LABEL_BATCH):
                self.monitor.labels(loaded.labels[start:start + LABEL_BATCH], "bulk")
        except BulkError as exc:
            error, transient = str(exc), exc.transient
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc)[:200]}"
            log.exception("bulk labels: loading %s failed", f.uri)
        if error is not None:
            log.warning("bulk labels: %s: %s", f.uri, error)
            if transient:
                state["lastError"] = f"{f.uri}: {error}"
                return  # try again next poll
        # Recorded with its error, if any: loaded again only once it changes.
        store.bulk_done(f.uri, f.size, f.stamp, loaded.rows, loaded.bad, error)
        state["files"] += 1
        state["rows"] += loaded.rows
        state["badRows"] += loaded.bad
        state["badExamples"] = (loaded.examples + state["badExamples"])[:BAD_EXAMPLES]
        if loaded.bad:
            metrics.labels.labels("bulk", "invalid").inc(loaded.bad)
            metrics.bulk_bad_rows.inc(loaded.bad)
        log.info("bulk labels: %s: %d rows, %d unusable", f.uri, loaded.rows, loaded.bad)

    @contextlib.contextmanager
    def _local(self, f: Found) -> Iterator[Path]:
        parts = urllib.parse.urlsplit(f.uri)
        if parts.scheme == "file":
            yield Path(urllib.parse.unquote(parts.path))
            return
        from kustos.runtime.fetch import FetchError, fetch

        tmp = Path(tempfile.mkdtemp(prefix="bulk-", dir=self.work_dir))
        try:
            try:
                res = fetch(f.uri, tmp, retries=2, timeout=60)
            except FetchError as exc:
                raise BulkError(str(exc), exc.transient) from None
            yield res.path
        finally:
            for p in tmp.iterdir():
                with contextlib.suppress(OSError):
                    p.unlink()
            with contextlib.suppress(OSError):
                os.rmdir(tmp)
