"""What every image job's command line shares: flags, checks, output preparation, the
run itself, the run record, and the counts read back from the files.

    args -> make_job (the job's own; UsageError -> exit 2, one line)
         -> prepare_output (--resume / --overwrite)  -> run.json "running"
         -> the Beam pipeline (failure -> exit 1, run.json "failed")
         -> counts from the files (+ Beam counters), reconcile extra copies
         -> run.json "succeeded" | "inconsistent" (exit 1)

pseudo_label.py and extract_features.py add their model flags, build their job and
describe their models for run.json; everything else happens here once.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Callable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from pipelines.beam import sinks
from pipelines.beam.handlers import HandlerOptions
from pipelines.beam.imagejob import JobKind
from pipelines.cli import EXIT_FAILED, EXIT_USAGE, SAMPLE_MANIFEST, UsageError  # noqa: F401  (the jobs' CLI API)
from pipelines.data import images, sources, storage
from schemas import FAILURES, count_rows, read_table

BEAM_COUNTERS = ("input_rows", "duplicates", "distinct_images", "already_done", "done_not_in_input")


# ---- flags --------------------------------------------------------------------------

def add_io_args(ap: argparse.ArgumentParser, verb: str = "label") -> None:
    """--input ... --compression: where images come from and where rows go."""
    io_ = ap.add_argument_group("input and output")
    io_.add_argument("--input", default=SAMPLE_MANIFEST,
                     help="Open Images image CSV, a CSV/Parquet table with image_id,uri, or a glob/directory "
                          "of images (local, gs://, s3://, http(s)://). Default: the bundled sample.")
    io_.add_argument("--input-format", default="auto", choices=sources.KINDS)
    io_.add_argument("--image-root", default=None,
                     help="where Open Images CSV images live (default: the 'images' folder beside the CSV)")
    io_.add_argument("--image-path-template", default=sources.DEFAULT_TEMPLATE,
                     help="image path under --image-root from manifest columns; public bucket: {Subset}/{ImageID}.jpg")
    io_.add_argument("--limit", type=int, default=None, help=f"{verb} at most N input rows")
    io_.add_argument("--output", required=True, help="output directory (local, gs://, s3://)")
    io_.add_argument("--overwrite", action="store_true", help="replace a previous run in --output")
    io_.add_argument("--resume", action="store_true",
                     help="continue a previous run in --output: images it committed are skipped")
    io_.add_argument("--rows-per-part", type=int, default=1000,
                     help="rows per committed Parquet part file (also the most work a killed job loses)")
    io_.add_argument("--compression", default="zstd", choices=sinks.CODECS)


def add_inference_args(ap: argparse.ArgumentParser, models: str = "teachers") -> None:
    """--device ... --read-retries: how models run and how images are read and decoded."""
    ru = ap.add_argument_group("inference")
    ru.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ru.add_argument("--batch-size", type=int, default=8, help="images per forward pass (RunInference max_batch_size)")
    ru.add_argument("--large-model", action="store_true",
                    help=f"share one copy of the {models} per worker machine across its processes (GPU workers)")
    ru.add_argument("--model-copies", type=int, default=None,
                    help="with --large-model: copies per machine, e.g. one per GPU")
    ru.add_argument("--decode-size", type=int, default=512,
                    help=f"decode images at about this shorter side (JPEG draft mode); the {models} resize further")
    ru.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                    help="reject images with more pixels than this, before decoding")
    ru.add_argument("--read-retries", type=int, default=3, help="retries for transient read errors")


def common_job_fields(args: argparse.Namespace) -> dict:
    """Check the shared flags; returns the ImageJob fields they give. Raises UsageError."""
    from teachers.common import DEVICES

    try:
        source = sources.SourceSpec(input=args.input, kind=args.input_format, image_root=args.image_root,
                                    path_template=args.image_path_template, limit=args.limit)
        sources.check(source)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    for flag, value, low in (("--decode-size", args.decode_size, 16), ("--max-pixels", args.max_pixels, 1),
                             ("--read-retries", args.read_retries, 0), ("--batch-size", args.batch_size, 1),
                             ("--model-copies", args.model_copies or 1, 1),
                             ("--rows-per-part", args.rows_per_part, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, not {value}")
    if args.device not in DEVICES and not args.device.startswith("cuda:"):
        raise UsageError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, not {args.device!r}")
    handler = HandlerOptions(batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir,
                             trust_remote_code=getattr(args, "trust_remote_code", False),
                             large_model=args.large_model, model_copies=args.model_copies)
    return dict(source=source, output=args.output.rstrip("/"), handler=handler, decode_size=args.decode_size,
                max_pixels=args.max_pixels, read_retries=args.read_retries, rows_per_part=args.rows_per_part,
                compression=args.compression)


# ---- the output directory -----------------------------------------------------------

def prepare_output(output: str, kind: JobKind, *, overwrite: bool, resume: bool) -> tuple[tuple[str, ...], list]:
    """Check --output against a previous run. Returns (committed parts to skip, run history)."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: choose one")
    previous = [p for p in ("run.json", *kind.tables) if storage.exists(storage.join(output, p))]
    if not previous:
        return (), []
    last = None
    if "run.json" in previous:
        try:
            last = json.loads(storage.read_text(storage.join(output, "run.json")))
        except ValueError as e:
            if resume:
                raise UsageError(f"cannot resume: {output}/run.json is not valid JSON ({e})") from e
        if resume and not isinstance(last, dict):
            raise UsageError(f"cannot resume: {output}/run.json is not a run record")
        other = last.get("job") if isinstance(last, dict) else None
        if other not in (None, kind.name):
            raise UsageError(f"--output {output} holds a {other} run, not {kind.name}: choose another --output")
    if overwrite:
        for p in previous:
            storage.remove(storage.join(output, p))
        return (), []
    if not resume:
        raise UsageError(f"--output {output} already holds a run ({', '.join(previous)}); pass --resume "
                         "to continue it, --overwrite to replace it, or choose another --output")
    history = [*last.pop("history", []), last] if last is not None else []
    for table in kind.tables:
        sinks.remove_in_progress(output, table)
    parts = tuple((table, p) for table in kind.tables for p in sinks.list_parts(output, table))
    return parts, history


def count_outputs(output: str, kind: JobKind) -> dict:
    """Counts read back from the written files: what the run.json promises agrees with them."""
    done = count_rows(storage.join(output, kind.table), kind.schema)
    failures = read_table(storage.join(output, "failures"), FAILURES, columns=["stage", "error_type"])
    return {kind.done: done, "failed": failures.num_rows,
            "failed_by_stage": dict(Counter(failures.column("stage").to_pylist())),
            "failed_by_error_type": dict(Counter(failures.column("error_type").to_pylist()))}


# ---- the run ------------------------------------------------------------------------

def versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("minivlm-distill", "apache-beam", "torch", "transformers", "timm", "pyarrow", "pillow", "fsspec"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def counter(result, namespace: str, name: str) -> int | None:
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    except Exception:  # some runners cannot report metrics
        return None
    if not found:
        return 0
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in found)


def root_message(err: BaseException) -> str:
    """The innermost cause of a runner error, on one line (runners wrap it several times)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[-1] if lines else repr(err)
    return f"{type(err).__name__}: {text}"[:1000]


def execute(p, *, prog: str, output: str, record: dict, dry_run: bool, runner: str):
    """Run a built pipeline to the end. Returns (result, None) when it succeeded, else (None, exit code):
    a failed job is recorded in run.json (status failed, the root cause) and reported in one line."""
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:  # the job itself failed (e.g. a remote manifest that is unreadable)
        reason = root_message(e)
        if not dry_run:
            record.update(status="failed", finished_at=datetime.now(timezone.utc).isoformat(), error=reason)
            sinks.write_run_record(output, record)
        print(f"{prog}: error: the job failed: {reason}", file=sys.stderr)
        return None, EXIT_FAILED
    if dry_run:
        print(f"{prog}: dry run: the {runner} job was built and not submitted", file=sys.stderr)
        return None, 0
    return result, None


def run_job(kind: JobKind, args: argparse.Namespace, beam_args: list[str], *,
            make_job: Callable[[argparse.Namespace], object],
            build: Callable[[beam.Pipeline, object], object],
            describe: Callable[[object], dict],
            check_resume: Callable[[object, dict], None] | None = None) -> int:
    """Run an image job from parsed flags; returns the exit code.

    make_job(args) -> the job (an ImageJob), raising UsageError for bad flags;
    build(pipeline, job) attaches it; describe(job) -> its models for run.json;
    check_resume(job, previous run record) raises UsageError if --resume would mix
    incompatible outputs.
    """
    prog = kind.name
    options = PipelineOptions(beam_args)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    try:
        job = make_job(args)
        history: list = []
        if not dry_run:  # a dry run writes nothing and must not touch the (remote) output
            done_parts, history = prepare_output(job.output, kind, overwrite=args.overwrite, resume=args.resume)
            if history and check_resume is not None:
                check_resume(job, history[-1])
            job = replace(job, done_parts=done_parts)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    started = datetime.now(timezone.utc)
    record = {
        "job": kind.name,
        "status": "running",
        "started_at": started.isoformat(),
        "runner": runner,
        "input": asdict(job.source),
        "output": job.output,
        **describe(job),
        "options": dict(vars(args)),
        "pipeline_options": options.get_all_options(drop_default=True),
        "versions": versions(),
        "host": platform.node(),
        "resumed_from_parts": len(job.done_parts),
        "history": history,  # earlier runs into the same --output (with --resume), oldest first
    }
    if not dry_run:
        sinks.write_run_record(job.output, record)
    t0 = time.monotonic()
    p = beam.Pipeline(options=options)
    build(p, job)
    result, code = execute(p, prog=prog, output=job.output, record=record, dry_run=dry_run, runner=runner)
    if code is not None:
        return code

    metrics = {name: counter(result, kind.name, name) for name in BEAM_COUNTERS}
    expected = (None if metrics["distinct_images"] is None
                else metrics["distinct_images"] + (metrics["done_not_in_input"] or 0))
    counts = count_outputs(job.output, kind)
    removed = 0
    if expected is None or counts[kind.done] + counts["failed"] > expected:
        # More rows than images: a retried bundle committed some twice. Keep one of each.
        removed = sinks.reconcile(job.output, kind.tables, codec=job.compression)
        counts = count_outputs(job.output, kind)
    counts.update(metrics, extra_copies_removed=removed)
    accounted = counts[kind.done] + counts["failed"]
    consistent = expected is None or expected == accounted
    record.update(status="succeeded" if consistent else "inconsistent",
                  finished_at=datetime.now(timezone.utc).isoformat(),
                  wall_seconds=round(time.monotonic() - t0, 3), counts=counts)
    sinks.write_run_record(job.output, record)
    wall = max(time.monotonic() - t0, 1e-9)
    new = accounted - (counts["already_done"] or 0) - (counts["done_not_in_input"] or 0)
    resumed = f", {counts['already_done']} already done" if job.done_parts else ""
    print(f"{prog}: {counts['distinct_images']} images: {counts[kind.done]} {kind.done}, "
          f"{counts['failed']} failed{resumed}, {counts['duplicates']} duplicate rows skipped; "
          f"{wall:.1f}s ({new / wall:.2f} images/s) -> {job.output}", file=sys.stderr)
    if not consistent:
        print(f"{prog}: error: {expected} distinct images but {accounted} output rows", file=sys.stderr)
        return EXIT_FAILED
    return 0
