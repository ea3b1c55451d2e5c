"""`kustos batch`: one shard of a BatchInference (or a whole file, with --shards 1).

In an indexed Job the shard is the pod's completion index ($JOB_COMPLETION_INDEX). It
prints one JSON line per chunk written; the last line, also written to
--termination-log, says what the shard did (the operator reads it from the pod status).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import orjson

from kustos.runtime.server.formats import FORMATS

from . import remote

TERMINATION_LOG = "/dev/termination-log"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kustos batch", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, metavar="PATH", help="the model file")
    p.add_argument("--name", default="model", help="model name (in errors)")
    p.add_argument("--model-version", default="1")
    p.add_argument("--format", choices=FORMATS,
                   help="model format (default: from the file name)")
    p.add_argument("--digest", help="sha256:<hex> the model file must match")
    p.add_argument("--trust-type", action="append", default=[], metavar="TYPE",
                   help="a type a .skops file may contain beyond the defaults (repeatable)")
    p.add_argument("--onnx-threads", type=int, default=1)
    p.add_argument("--input", required=True, type=_input, metavar="FILE|s3://BUCKET/KEY",
                   help="a file, or an S3 object read in place with ranged GETs "
                        "(credentials: AWS_* as for --output, or --input-env-prefix; no digest "
                        "is checked)")
    p.add_argument("--input-env-prefix", metavar="PREFIX", default="",
                   help="an s3:// input's settings are the variables PREFIX + AWS_* only "
                        "(the operator's Job: KUSTOS_INPUT_, the input's Secret), so AWS_* "
                        "stay the output's")
    p.add_argument("--input-format", choices=("csv", "jsonl", "parquet"), default="csv")
    p.add_argument("--feature", action="append", default=[], metavar="COLUMN",
                   help="a feature column, in model order (repeatable; default: all but the id)")
    p.add_argument("--id-field", metavar="COLUMN",
                   help="input column with each row's inference id (default: the row number)")
    p.add_argument("--output", required=True, metavar="DIR|s3://BUCKET/PREFIX",
                   help="a directory, or an S3 prefix (credentials: AWS_* as for kustos fetch)")
    p.add_argument("--output-format", choices=("csv", "jsonl", "parquet"), default="csv")
    p.add_argument("--id-column", default="inference_id", help="output id column name")
    p.add_argument("--prediction", action="append", default=[], metavar="OUTPUT",
                   help="model output to write (repeatable; default: the model's default)")
    p.add_argument("--chunk-size", type=int, default=10000)
    p.add_argument("--shard", type=int, default=None,
                   help="this shard (default: $JOB_COMPLETION_INDEX, else 0)")
    p.add_argument("--shards", type=int, default=1)
    p.add_argument("--termination-log", default=None,
                   help=f"write the final report here (default {TERMINATION_LOG} if it exists)")
    p.add_argument("--quiet", action="store_true", help="no line per chunk")
    return p


def _input(arg: str) -> Path | str:
    return arg if arg.startswith("s3://") else Path(arg)


def _termination_log(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    default = Path(TERMINATION_LOG)
    return default if default.exists() and os.access(default, os.W_OK) else None


def _finish(log: Path | None, line: bytes) -> None:
    sys.stdout.buffer.write(line + b"\n")
    sys.stdout.flush()
    if log is not None:
        log.write_bytes(line)


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.input_env_prefix and not remote.is_remote(args.input):
        parser.error("--input-env-prefix is for an s3:// input")
    shard = args.shard if args.shard is not None else int(
        os.environ.get("JOB_COMPLETION_INDEX", "0"))
    if args.chunk_size < 1 or args.shards < 1 or not 0 <= shard < args.shards:
        print("kustos batch: needs --chunk-size >= 1 and 0 <= shard < --shards",
              file=sys.stderr)
        return 2
    from kustos.runtime.server.models import ModelLoadError, load_model
    from kustos.runtime.server.tensors import ProtocolError

    from . import runner, sink, source

    log = _termination_log(args.termination_log)
    job = runner.Job(
        input=(remote.S3Input(args.input, args.input_env_prefix)
               if remote.is_remote(args.input) else args.input),
        input_format=args.input_format, output=args.output,
        output_format=args.output_format, chunk_size=args.chunk_size, shard=shard,
        shards=args.shards, features=tuple(args.feature) or None, id_field=args.id_field,
        id_column=args.id_column, predictions=tuple(args.prediction) or None)

    def progress(report: runner.Report, chunk: int) -> None:
        if not args.quiet:
            sys.stdout.buffer.write(orjson.dumps({"chunk": chunk, **report.wire()}) + b"\n")
            sys.stdout.flush()

    try:
        if "parquet" in (args.input_format, args.output_format):
            # Before the model is loaded: where fastparquet is missing, say so at once; and
            # its import (with pandas, a second or so) is paid here, not by the first chunk.
            source.fastparquet()
        model = load_model(args.model, args.name, args.model_version, args.format,
                           args.digest, args.trust_type, args.onnx_threads)
        report = runner.run(job, model, progress)
    except (ModelLoadError, source.InputError, sink.OutputError, OSError) as err:
        _finish(log, orjson.dumps({"shard": shard, "error": f"kustos batch: {err}"}))
        return 1
    except ProtocolError as err:
        _finish(log, orjson.dumps({"shard": shard, "error": f"kustos batch: {err.message}"}))
        return 1
    _finish(log, orjson.dumps(report.wire()))
    return 0
