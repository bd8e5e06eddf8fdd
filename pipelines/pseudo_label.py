"""The labeling job's command line: teachers caption and tag images into Parquet.

    python -m pipelines.pseudo_label --runner DirectRunner --captioner tiny --tagger tiny --output OUT

App flags (with dashes) are parsed here; every other flag is a Beam pipeline option,
so the same command runs on the DirectRunner and on Dataflow. The pipeline itself is
built by pipelines.labeling.build.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime, timezone

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

from pipelines import images, sinks, sources, storage
from pipelines.handlers import HandlerOptions
from pipelines.labeling import NAMESPACE, TABLES, LabelJob, Teacher, build
from schemas import FAILURES, LABELS, count_rows, read_table

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_INPUT = os.path.join(REPO_ROOT, "data", "sample", "images.csv")
EXIT_USAGE = 2


class UsageError(ValueError):
    """Bad flags or unusable inputs: one line, exit code 2, before any work starts."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """App flags (dashes) are ours; everything else is a Beam pipeline option."""
    from teachers import DEFAULT_CAPTIONER, DEFAULT_TAGGER, DEFAULT_VOCAB

    ap = argparse.ArgumentParser(
        prog="python -m pipelines.pseudo_label",
        description="Label images with teacher captioner and tagger models into Parquet (Apache Beam).",
        epilog="Unknown flags are Beam pipeline options, e.g. --runner DataflowRunner --project P "
               "--region R --temp_location gs://B/tmp --setup_file ./setup.py.",
    )
    io_ = ap.add_argument_group("input and output")
    io_.add_argument("--input", default=DEFAULT_INPUT,
                     help="Open Images image CSV, a CSV/Parquet table with image_id,uri, or a glob/directory "
                          "of images (local, gs://, s3://, http(s)://). Default: the bundled sample.")
    io_.add_argument("--input-format", default="auto", choices=sources.KINDS)
    io_.add_argument("--image-root", default=None,
                     help="where Open Images CSV images live (default: the 'images' folder beside the CSV)")
    io_.add_argument("--image-path-template", default=sources.DEFAULT_TEMPLATE,
                     help="image path under --image-root from manifest columns; public bucket: {Subset}/{ImageID}.jpg")
    io_.add_argument("--limit", type=int, default=None, help="label at most N input rows")
    io_.add_argument("--output", required=True, help="output directory (local, gs://, s3://)")
    io_.add_argument("--overwrite", action="store_true", help="replace a previous run in --output")
    io_.add_argument("--resume", action="store_true",
                     help="continue a previous run in --output: images it committed are skipped")
    io_.add_argument("--rows-per-part", type=int, default=1000,
                     help="rows per committed Parquet part file (also the most work a killed job loses)")
    io_.add_argument("--compression", default="zstd", choices=sinks.CODECS)

    te = ap.add_argument_group("teachers")
    te.add_argument("--captioner", default=DEFAULT_CAPTIONER,
                    help="hub id[@revision], local dir, gs:// or s3:// dir, 'tiny' / 'tiny-git', or 'none'")
    te.add_argument("--tagger", default=DEFAULT_TAGGER,
                    help="hub id[@revision], local dir, gs:// or s3:// dir, 'tiny' / 'tiny-clip', or 'none'")
    te.add_argument("--num-captions", type=int, default=3)
    te.add_argument("--num-beams", type=int, default=5)
    te.add_argument("--max-new-tokens", type=int, default=30)
    te.add_argument("--caption-prompt", default=None, help="text prompt for conditional captioners")
    te.add_argument("--tag-vocab", default=DEFAULT_VOCAB,
                    help="LabelName,DisplayName CSV (Open Images class descriptions format)")
    te.add_argument("--tag-threshold", type=float, default=0.1)
    te.add_argument("--max-tags", type=int, default=10)
    te.add_argument("--tag-prompt", default="a photo of a {}.")
    te.add_argument("--trust-remote-code", action="store_true",
                    help="allow model code from the hub (off by default: it runs arbitrary code)")
    te.add_argument("--cache-dir", default=None, help="teacher cache (default $MINIVLM_CACHE or ~/.cache/minivlm)")

    ru = ap.add_argument_group("inference")
    ru.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ru.add_argument("--batch-size", type=int, default=8, help="images per teacher forward pass")
    ru.add_argument("--large-model", action="store_true",
                    help="share one copy of each teacher per worker machine across its processes (GPU workers)")
    ru.add_argument("--model-copies", type=int, default=None,
                    help="with --large-model: copies per machine, e.g. one per GPU")
    ru.add_argument("--decode-size", type=int, default=512,
                    help="decode images at about this shorter side (JPEG draft mode); teachers resize further")
    ru.add_argument("--max-pixels", type=int, default=images.DEFAULT_MAX_PIXELS,
                    help="reject images with more pixels than this, before decoding")
    ru.add_argument("--read-retries", type=int, default=3, help="retries for transient read errors")
    return ap.parse_known_args(argv)


def _teacher(stage: str, spec: str, params) -> Teacher | None:
    from teachers import TeacherRef, describe

    if spec.lower() == "none":
        return None
    kind = "captioner" if stage == "caption" else "tagger"
    provenance = describe(TeacherRef(kind, spec))
    pinned = provenance if "@" in provenance and not TeacherRef(kind, spec).is_local_dir else spec
    return Teacher(stage=stage, spec=pinned, reference=spec, provenance=provenance, params=params)


def make_job(args: argparse.Namespace) -> LabelJob:
    """Validate flags and inputs into a LabelJob; raises UsageError with one clear line."""
    from teachers import CaptionParams, TagParams, TeacherUnavailable, load_vocab
    from teachers.common import DEVICES

    try:
        source = sources.SourceSpec(input=args.input, kind=args.input_format, image_root=args.image_root,
                                    path_template=args.image_path_template, limit=args.limit)
        sources.check(source)
        for flag, value, low in (("--decode-size", args.decode_size, 16), ("--max-pixels", args.max_pixels, 1),
                                 ("--read-retries", args.read_retries, 0), ("--batch-size", args.batch_size, 1),
                                 ("--model-copies", args.model_copies or 1, 1),
                                 ("--rows-per-part", args.rows_per_part, 1)):
            if value < low:
                raise UsageError(f"{flag} must be >= {low}, not {value}")
        if args.device not in DEVICES and not args.device.startswith("cuda:"):
            raise UsageError(f"--device must be one of {', '.join(DEVICES)} or cuda:N, not {args.device!r}")
        caption_params = CaptionParams(num_captions=args.num_captions, num_beams=args.num_beams,
                                       max_new_tokens=args.max_new_tokens, prompt=args.caption_prompt)
        tag_params = TagParams(threshold=args.tag_threshold, max_tags=args.max_tags, prompt=args.tag_prompt,
                               vocab=args.tag_vocab)
        captioner = _teacher("caption", args.captioner, caption_params)
        tagger = _teacher("tag", args.tagger, tag_params)
        if captioner is None and tagger is None:
            raise UsageError("--captioner none and --tagger none leave nothing to label")
        vocab = None
        if tagger is not None and not storage.is_remote(args.tag_vocab):
            vocab = tuple(load_vocab(args.tag_vocab))
        handler = HandlerOptions(batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir,
                                 trust_remote_code=args.trust_remote_code, large_model=args.large_model,
                                 model_copies=args.model_copies)
        return LabelJob(source=source, output=args.output.rstrip("/"), captioner=captioner, tagger=tagger,
                        handler=handler, decode_size=args.decode_size, max_pixels=args.max_pixels,
                        read_retries=args.read_retries, rows_per_part=args.rows_per_part,
                        compression=args.compression, vocab=vocab)
    except UsageError:
        raise
    except (ValueError, TeacherUnavailable, FileNotFoundError) as e:
        raise UsageError(str(e)) from e


def _prepare_output(output: str, *, overwrite: bool, resume: bool) -> tuple[tuple[str, ...], list]:
    """Check --output against a previous run. Returns (committed parts to skip, run history)."""
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: choose one")
    previous = [p for p in ("run.json", "labels", "failures") if storage.exists(storage.join(output, p))]
    if not previous:
        return (), []
    if overwrite:
        for p in previous:
            storage.remove(storage.join(output, p))
        return (), []
    if not resume:
        raise UsageError(f"--output {output} already holds a run ({', '.join(previous)}); pass --resume "
                         "to continue it, --overwrite to replace it, or choose another --output")
    history: list = []
    if "run.json" in previous:
        try:
            last = json.loads(storage.read_text(storage.join(output, "run.json")))
        except ValueError as e:
            raise UsageError(f"cannot resume: {output}/run.json is not valid JSON ({e})") from e
        if not isinstance(last, dict):
            raise UsageError(f"cannot resume: {output}/run.json is not a run record")
        history = [*last.pop("history", []), last]
    for table in ("labels", "failures"):
        sinks.remove_in_progress(output, table)
    parts = tuple((table, p) for table in ("labels", "failures") for p in sinks.list_parts(output, table))
    return parts, history


def _versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("minivlm-distill", "apache-beam", "torch", "transformers", "pyarrow", "pillow", "fsspec"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _counter(result, name: str) -> int | None:
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name(name))["counters"]
    except Exception:  # some runners cannot report metrics
        return None
    if not found:
        return 0
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in found)


def count_outputs(output: str) -> dict:
    """Counts read back from the written files: what the run.json promises agrees with them."""
    labeled = count_rows(storage.join(output, "labels"), LABELS)
    failures = read_table(storage.join(output, "failures"), FAILURES, columns=["stage", "error_type"])
    return {"labeled": labeled, "failed": failures.num_rows,
            "failed_by_stage": dict(Counter(failures.column("stage").to_pylist())),
            "failed_by_error_type": dict(Counter(failures.column("error_type").to_pylist()))}


def _root_message(err: BaseException) -> str:
    """The innermost cause of a runner error, on one line (runners wrap it several times)."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    text = lines[-1] if lines else repr(err)
    return f"{type(err).__name__}: {text}"[:1000]


def run(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    options = PipelineOptions(beam_args)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if args.trust_remote_code:
        print("pseudo_label: warning: --trust-remote-code lets model repositories run their own Python code "
              "on every worker; use it only for models you trust", file=sys.stderr)
    try:
        job = make_job(args)
        history: list = []
        if not dry_run:  # a dry run writes nothing and must not touch the (remote) output
            done_parts, history = _prepare_output(job.output, overwrite=args.overwrite, resume=args.resume)
            job = replace(job, done_parts=done_parts)
    except UsageError as e:
        print(f"pseudo_label: error: {e}", file=sys.stderr)
        return EXIT_USAGE

    started = datetime.now(timezone.utc)
    record = {
        "job": "pseudo_label",
        "status": "running",
        "started_at": started.isoformat(),
        "runner": runner,
        "input": asdict(job.source),
        "output": job.output,
        "teachers": {
            kind: (None if t is None else {"reference": t.reference, "model": t.provenance,
                                           "params": t.params.to_dict()})
            for kind, t in (("captioner", job.captioner), ("tagger", job.tagger))
        },
        "options": dict(vars(args)),
        "pipeline_options": options.get_all_options(drop_default=True),
        "versions": _versions(),
        "host": platform.node(),
        "resumed_from_parts": len(job.done_parts),
        "history": history,  # earlier runs into the same --output (with --resume), oldest first
    }
    if not dry_run:
        sinks.write_run_record(job.output, record)
    t0 = time.monotonic()
    p = beam.Pipeline(options=options)
    build(p, job)
    try:
        result = p.run()
        result.wait_until_finish()
    except Exception as e:  # the job itself failed (e.g. a remote manifest that is unreadable)
        reason = _root_message(e)
        if not dry_run:
            record.update(status="failed", finished_at=datetime.now(timezone.utc).isoformat(), error=reason)
            sinks.write_run_record(job.output, record)
        print(f"pseudo_label: error: the job failed: {reason}", file=sys.stderr)
        return 1
    if dry_run:
        print(f"pseudo_label: dry run: the {runner} job was built and not submitted", file=sys.stderr)
        return 0

    metrics = {name: _counter(result, name)
               for name in ("input_rows", "duplicates", "distinct_images", "already_done", "done_not_in_input")}
    expected = (None if metrics["distinct_images"] is None
                else metrics["distinct_images"] + (metrics["done_not_in_input"] or 0))
    counts = count_outputs(job.output)
    removed = 0
    if expected is None or counts["labeled"] + counts["failed"] > expected:
        # More rows than images: a retried bundle committed some twice. Keep one of each.
        removed = sinks.reconcile(job.output, TABLES, codec=job.compression)
        counts = count_outputs(job.output)
    counts.update(metrics, extra_copies_removed=removed)
    accounted = counts["labeled"] + counts["failed"]
    consistent = expected is None or expected == accounted
    record.update(status="succeeded" if consistent else "inconsistent",
                  finished_at=datetime.now(timezone.utc).isoformat(),
                  wall_seconds=round(time.monotonic() - t0, 3), counts=counts)
    sinks.write_run_record(job.output, record)
    wall = max(time.monotonic() - t0, 1e-9)
    new = accounted - (counts["already_done"] or 0) - (counts["done_not_in_input"] or 0)
    resumed = f", {counts['already_done']} already done" if job.done_parts else ""
    print(f"pseudo_label: {counts['distinct_images']} images: {counts['labeled']} labeled, "
          f"{counts['failed']} failed{resumed}, {counts['duplicates']} duplicate rows skipped; "
          f"{wall:.1f}s ({new / wall:.2f} images/s) -> {job.output}", file=sys.stderr)
    if not consistent:
        print(f"pseudo_label: error: {expected} distinct images but {accounted} output rows", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
