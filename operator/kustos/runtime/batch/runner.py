"""One shard of a batch run: its chunks predicted and written, those already written
skipped (a restarted pod resumes where the killed one stopped)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kustos.runtime.server.models import Model

from . import parquet_part, sink, source


@dataclass(frozen=True)
class Job:
    """What one shard does."""

    input: source.Input  # a file, or s3://bucket/key (remote.S3Input: its own settings)
    input_format: str
    output: Path | str  # a directory, or s3://bucket/prefix
    output_format: str
    chunk_size: int
    shard: int
    shards: int
    features: tuple[str, ...] | None = None
    id_field: str | None = None
    id_column: str = "inference_id"
    predictions: tuple[str, ...] | None = None


@dataclass
class Report:
    """What the shard did; the pod's termination message (the operator sums them)."""

    shard: int
    rows: int = 0  # rows of this shard, written now or by an earlier pod
    rows_total: int = 0  # data rows in the input
    chunks: int = 0
    chunks_resumed: int = 0  # already written when this pod started
    seconds: float = 0.0

    def wire(self) -> dict[str, Any]:
        out = asdict(self)
        out["rowsTotal"] = out.pop("rows_total")
        out["chunksResumed"] = out.pop("chunks_resumed")
        out["seconds"] = round(self.seconds, 3)
        return out


Progress = Callable[[Report, int], None]


def outputs_of(model: Model, asked: Sequence[str] | None) -> tuple[str, ...]:
    if not asked:
        return tuple(model.default_outputs) or tuple(o.name for o in model.outputs[:1])
    known = model.output_names
    unknown = [o for o in asked if known and o not in known]
    if unknown:
        raise source.InputError(f"model {model.name!r} has no output {', '.join(unknown)} "
                                f"(it has {', '.join(sorted(known))})")
    return tuple(asked)


def run(job: Job, model: Model, progress: Progress | None = None) -> Report:
    """Predict and write every chunk of ``job.shard`` not written yet."""
    started = time.perf_counter()
    outputs = outputs_of(model, job.predictions)
    lay = source.layout(job.input, job.input_format, job.features, job.id_field)
    out = sink.open_output(job.output, job.output_format)
    # An s3:// input read in place: the version this shard read is the run's (sink.
    # check_manifest), so shards and resumed pods never mix two versions' rows.
    out.prepare({
        "chunkSize": job.chunk_size, "format": job.output_format, "idColumn": job.id_column,
        "predictions": list(outputs), "features": list(lay.features),
        **({sink.INPUT_VERSION: lay.version} if lay.version else {})})
    report = Report(job.shard)
    mine: set[int] = set()
    name = source.name_of(job.input)
    input_name = model.inputs[0].name

    def wanted(index: int) -> bool:
        # Asked once per chunk, in order: ours and not written yet (by an earlier pod).
        if index % job.shards != job.shard:
            return False
        mine.add(index)
        return not out.done(index)

    # Chunk k is encoded and written by one writer thread while chunk k+1 is read and
    # predicted: at most one chunk in flight, written in chunk order, its error raised
    # here. A chunk counts (in the report and to `progress`) only once its part exists:
    # written, synced and renamed. Leaving the `with` waits for a write under way, so a
    # failing run never leaves a half-written part behind (a temporary file at most).
    pending: tuple[Future[None], int, int] | None = None

    def wait_written() -> None:
        nonlocal pending
        if pending is None:
            return
        future, index, rows = pending
        pending = None
        future.result()
        report.chunks += 1
        report.rows += rows
        if progress is not None:
            progress(report, index)

    # Parquet parts keep their schema across chunks (see parquet_part).
    parts = parquet_part.PartWriter(job.id_column) if job.output_format == "parquet" else None

    def write(index: int, ids: Sequence[str], columns: dict[str, Any]) -> None:
        out.write(index, sink.encode(job.id_column, ids, columns, job.output_format, parts))

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-writer") as writer:
        for chunk in source.chunks(job.input, job.input_format, job.chunk_size, wanted, lay):
            report.rows_total += chunk.rows
            if chunk.index not in mine:
                continue
            if not chunk.wanted:
                report.chunks += 1
                report.rows += chunk.rows
                report.chunks_resumed += 1
                continue
            parsed = source.parse(chunk, job.input_format, lay, name)
            # The same preparation and prediction as a request to `kustos serve`.
            inputs = model.prepare({input_name: parsed.x})
            predicted = model.predict(inputs, outputs)
            columns = sink.flatten(predicted, model.classes)
            wait_written()
            pending = (writer.submit(write, chunk.index, parsed.ids, columns),
                       chunk.index, chunk.rows)
        wait_written()
    out.finish(mine)
    report.seconds = time.perf_counter() - started
    return report
