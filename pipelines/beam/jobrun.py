"""What every image job's launcher shares: checks, output preparation, the run itself, the
run record, and the counts read back from the files. (The flags: pipelines/beam/flags.py.)

    args (--retry-failures: the run's recorded settings) -> --device on a local runner's
         machine -> make_job (the job's own) -> prepare_output (--resume / --overwrite /
         --retry-failures; a resume must continue the same run: check_same_run)
         (any UsageError so far: exit 2, one line, nothing written)
         -> run.json "running"
         -> the Beam pipeline (failure -> exit 1, run.json "failed")
         -> the input counted again here, apart from the pipeline (plan.Plan, on disk)
         -> a retry's older failures rows dropped (retry.settle)
         -> counts from the files against that count (and the Beam counters, where the
            runner reports them), reconcile extra copies
         -> run.json "succeeded" | "inconsistent" (exit 1)

pseudo_label.py and extract_features.py build their job, describe their models for
run.json and say what identifies them on --resume; everything else happens here once.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from datetime import datetime, timezone
from typing import Callable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (
    DebugOptions,
    PipelineOptions,
    StandardOptions,
    TestOptions,
)

from pipelines.beam import plan, retry, sinks
from pipelines.beam.flags import HOW_TO_RUN, PER_INVOCATION, RESUME_MAY_CHANGE
from pipelines.beam.handlers import HandlerOptions
from pipelines.beam.imagejob import LOCAL_RUNNERS, JobKind, dedupe_mode, local_workers
from pipelines.cli import EXIT_FAILED, EXIT_USAGE, UsageError, check_device
from pipelines.data import datacard, sources, storage
from schemas import FAILURES, count_rows
from schemas.io import iter_batches

BEAM_COUNTERS = plan.COUNTS  # the selection stage's counters, checked against the launcher's own count
FINISHED = ("succeeded", "inconsistent")  # statuses of a run that went through all its input


# ---- flags (defined in pipelines/beam/flags.py) --------------------------------------

def common_job_fields(args: argparse.Namespace) -> dict:
    """Check the shared flags; returns the ImageJob fields they give. Raises UsageError."""
    try:
        source = sources.SourceSpec(input=args.input, kind=args.input_format, image_root=args.image_root,
                                    path_template=args.image_path_template, limit=args.limit)
        sources.check(source)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    for flag, value, low in (("--decode-size", args.decode_size, 16), ("--max-pixels", args.max_pixels, 1),
                             ("--read-retries", args.read_retries, 0), ("--batch-size", args.batch_size, 1),
                             ("--model-copies", args.model_copies or 1, 1),
                             ("--threads", 1 if args.threads is None else args.threads, 1),
                             ("--rows-per-part", args.rows_per_part, 1)):
        if value < low:
            raise UsageError(f"{flag} must be >= {low}, not {value}")
    check_device(args.device, local=False)  # its spelling; run_job checks a local runner's machine has it
    handler = HandlerOptions(batch_size=args.batch_size, device=args.device, cache_dir=args.cache_dir,
                             trust_remote_code=getattr(args, "trust_remote_code", False),
                             large_model=args.large_model, model_copies=args.model_copies, threads=args.threads)
    retry_mode = getattr(args, "retry_failures", None)
    return dict(source=source, output=args.output.rstrip("/"), handler=handler, decode_size=args.decode_size,
                max_pixels=args.max_pixels, read_retries=args.read_retries, rows_per_part=args.rows_per_part,
                compression=args.compression, dedupe=getattr(args, "dedupe", "auto"), retry=retry_mode,
                quiet=getattr(args, "quiet", False),
                only_retry=retry_mode is not None and not args.resume)


# ---- the output directory -----------------------------------------------------------

def read_record(output: str, why: str) -> dict:
    """The run record in --output, for `why` ("resume", "retry"); UsageError if it is not one."""
    path = storage.join(output, "run.json")
    try:
        record = json.loads(storage.read_text(path))
    except FileNotFoundError as e:
        raise UsageError(f"cannot {why}: --output {output} holds no run (no run.json)") from e
    except ValueError as e:
        raise UsageError(f"cannot {why}: {path} is not valid JSON ({e})") from e
    if not isinstance(record, dict):
        raise UsageError(f"cannot {why}: {path} is not a run record")
    return record


def retry_settings(args: argparse.Namespace, reparse: Callable[[dict], tuple], kind: JobKind) -> argparse.Namespace:
    """--retry-failures: the flags of the run in --output, as its run.json recorded them.

    `reparse(recorded)` parses the command line again over the recorded options, so only
    the flags given now replace them. Those may change how the work runs (HOW_TO_RUN), not
    what a row says: a retried image must be labeled as its neighbours were.
    """
    record = read_record(args.output, "retry")
    if record.get("job") not in (None, kind.name):
        raise UsageError(f"--output {args.output} holds a {record['job']} run, not {kind.name}")
    options = record.get("options")
    if not isinstance(options, dict):
        raise UsageError(f"cannot retry: {args.output}/run.json records no options to rerun with")
    recorded = {k: v for k, v in options.items() if k not in PER_INVOCATION}
    again, _ = reparse(recorded)
    changed = changed_setting(recorded, vars(again), may_change=HOW_TO_RUN)
    if changed is not None:
        key, now, before = changed
        flag = as_flag(key)
        raise UsageError(f"--retry-failures reruns the run with its own settings: {flag} {now} differs from "
                         f"its {before}; leave {flag} out")
    return again


def changed_setting(before: dict, now: dict, may_change=()) -> tuple[str, object, object] | None:
    """The first setting of `before` (a run's) that `now` gives another value: (key, now, before), or
    None. Keys in `may_change`, and keys one side does not know (a flag of another release), are
    not compared. The one comparison behind --retry-failures and --resume: a rerun into a run's
    output must make rows the way the run did."""
    for key, old in before.items():
        if key in may_change or key not in now:
            continue
        if now[key] != old:
            return key, now[key], old
    return None


def as_flag(key: str) -> str:
    """An options key as its flag (num_beams -> --num-beams); other keys (model names) as they are."""
    return "--" + key.replace("_", "-") if key.isidentifier() and key == key.lower() else key


def check_same_run(output: str, previous: dict, args: argparse.Namespace, models: dict,
                   models_of: Callable[[dict], dict] | None) -> None:
    """--resume continues the run in `output`: refuse (UsageError) a setting that would make its
    rows another way: a flag (less how the work runs and which images it reads), or a model that
    resolves to another one (a hub id now at another commit, another TEE). `models` is this job's
    describe(); `models_of` picks from a run record what identifies its models."""
    changed = changed_setting(previous.get("options") or {}, vars(args), may_change=RESUME_MAY_CHANGE)
    if changed is None and models_of is not None:
        changed = changed_setting(models_of(previous), models_of(models))
    if changed is not None:
        key, now, before = changed
        verb = "resume" if args.resume else "retry"
        raise UsageError(f"cannot {verb}: {as_flag(key)} is {now} here but {before} in the run in {output}; "
                         f"{verb} with the run's settings (its run.json options), or use another --output")


def prepare_output(output: str, kind: JobKind, *, overwrite: bool, resume: bool,
                   retry_mode: str | None = None,
                   same_run: Callable[[dict], None] | None = None) -> tuple[tuple[str, ...], list]:
    """Check --output against a previous run. Returns (committed parts to skip, run history).

    --retry-failures needs a previous run, one that finished unless --resume is given too
    (a retry alone would leave the images the run never reached unaccounted for).
    --resume on an output with no run starts a new one, with a note. `same_run(previous
    record)` raises UsageError when a resume or retry would not continue that run; it is
    called before anything in `output` is changed.
    """
    if overwrite and resume:
        raise UsageError("--overwrite and --resume contradict each other: choose one")
    if overwrite and retry_mode:
        raise UsageError("--overwrite and --retry-failures contradict each other: --overwrite deletes the "
                         "failures to retry")
    previous = [p for p in ("run.json", *kind.tables) if storage.exists(storage.join(output, p))]
    if not previous and retry_mode:
        raise UsageError(f"cannot retry: --output {output} holds no run")
    if not previous:
        if resume:  # one meaning for every command: nothing there yet is a run at its start
            print(f"{kind.name}: note: nothing to resume in {output}: starting a new run", file=sys.stderr)
        return (), []
    last = None
    if "run.json" in previous:
        try:
            last = json.loads(storage.read_text(storage.join(output, "run.json")))
        except ValueError as e:
            if resume or retry_mode:
                raise UsageError(f"cannot {'resume' if resume else 'retry'}: {output}/run.json is not valid JSON "
                                 f"({e})") from e
        if (resume or retry_mode) and not isinstance(last, dict):
            raise UsageError(f"cannot {'resume' if resume else 'retry'}: {output}/run.json is not a run record")
        other = last.get("job") if isinstance(last, dict) else None
        if other not in (None, kind.name):
            raise UsageError(f"--output {output} holds a {other} run, not {kind.name}: choose another --output")
    if overwrite:
        for p in previous:
            storage.remove(storage.join(output, p))
        datacard.remove(output)
        return (), []
    if retry_mode:
        status = last.get("status") if last is not None else None
        if status not in FINISHED and not resume:
            raise UsageError(f"--output {output} holds a run that did not finish (status {status}): add --resume "
                             "to finish it and retry its failures")
    elif not resume:
        raise UsageError(f"--output {output} already holds a run ({', '.join(previous)}); pass --resume "
                         "to continue it, --overwrite to replace it, or choose another --output")
    if isinstance(last, dict) and same_run is not None:
        same_run(last)
    history = [*last.pop("history", []), last] if last is not None else []
    for table in kind.tables:
        sinks.remove_in_progress(output, table)
    parts = tuple((table, p) for table in kind.tables for p in sinks.list_parts(output, table))
    return parts, history


def count_input(job, kind: JobKind, scratch: str | None = None) -> dict:
    """The run's input counted on the launcher, apart from the pipeline and its counters.

    The same selection rule as the job's (plan.Plan: rows, duplicates, distinct ids, what
    earlier runs committed), so the files can be checked against it on any runner, one
    that reports no metrics included. Streams the input once more; memory stays flat.
    """
    with plan.Plan(only_retry=job.only_retry, directory=scratch) as selection:
        selection.load(job.done_parts, kind.tables, job.retry)
        for _ in selection.select(sources.iter_refs(job.source)):
            pass
        return selection.counts()


def model_lines(record: dict) -> list[str]:
    """What made the rows, from a run record: the teachers (labeling) or the TEE (features)."""
    lines = [f"- {role}: `{t.get('model')}` (asked for as `{t.get('reference')}`)"
             for role, t in (record.get("teachers") or {}).items() if t]
    tee = record.get("tee")
    if tee:
        lines.append(f"- TEE: `{tee.get('provenance')}`, extractor id `{tee.get('extractor_id')}`")
    return datacard.with_tiny_note(lines)


def card(kind: JobKind, record: dict) -> str:
    """The run folder's dataset card (pipelines/data/datacard.py): its tables as configs, what made them."""
    counts = record.get("counts") or {}
    configs = {kind.table: {"train": f"{kind.table}/*.parquet"}}
    if counts.get("failed"):
        configs["failures"] = {"train": "failures/*.parquet"}
    by_stage = ", ".join(f"{stage} {n}" for stage, n in sorted((counts.get("failed_by_stage") or {}).items()))
    source = (record.get("input") or {}).get("input")
    lines = [
        f"Rows of `{kind.name}` ({record.get('status')}, finished {record.get('finished_at')}, {record.get('runner')}) "
        f"over `{source}`: {counts.get(kind.done, 0)} images {kind.done}, {counts.get('failed', 0)} failed"
        + (f" ({by_stage})" if by_stage else "") + "."
        + (" Every input image is one row of one of the two tables." if record.get("status") == "succeeded" else
           " The counts did not agree when it finished: see run.json."),
        "",
        "Made by:",
        *model_lines(record),
        "",
        f"Tables: `{kind.table}/` (schema `{kind.schema.name}` version {kind.schema.version}) and `failures/` "
        "(image, stage, error type, message); `run.json` holds every option, version and count.",
        "",
        "```python",
        "from datasets import load_dataset",
        f"rows = load_dataset({record.get('output')!r})",
        *([f"failed = load_dataset({record.get('output')!r}, 'failures')"] if "failures" in configs else []),
        "```",
        "",
        datacard.ATTRIBUTION if "license" in {f.name for f in kind.schema.fields} else datacard.NO_ATTRIBUTION,
    ]
    return datacard.render(f"MiniVLM {kind.table}: {record.get('output')}", configs, lines, tags=(kind.name,))


def count_outputs(output: str, kind: JobKind) -> dict:
    """Counts read back from the written files: what the run.json promises agrees with them."""
    done = count_rows(storage.join(output, kind.table), kind.schema)
    stages: Counter = Counter()
    errors: Counter = Counter()
    failed = 0
    for batch in iter_batches(storage.join(output, "failures"), FAILURES, columns=["stage", "error_type"]):
        failed += batch.num_rows
        stages.update(batch.column("stage").to_pylist())
        errors.update(batch.column("error_type").to_pylist())
    return {kind.done: done, "failed": failed, "failed_by_stage": dict(stages), "failed_by_error_type": dict(errors)}


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
    """One Beam counter's total (0 if never incremented), or None where the runner reports no metrics."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace).with_name(name))["counters"]
    except Exception:  # some runners cannot report metrics
        return None
    if not found:
        return 0
    return sum((c.committed if c.committed is not None else c.attempted) or 0 for c in found)


def beam_counters(result, namespace: str) -> dict[str, int] | None:
    """The selection stage's Beam counters, or None where the runner reports no metrics."""
    try:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]
    except Exception:  # some runners cannot report metrics
        return None
    if not any(c.key.metric.name in BEAM_COUNTERS for c in found):  # no selection stage reported (or none ran)
        return None
    totals: Counter = Counter()
    for c in found:
        totals[c.key.metric.name] += (c.committed if c.committed is not None else c.attempted) or 0
    return {name: totals[name] for name in BEAM_COUNTERS}


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
            models_of: Callable[[dict], dict] | None = None,
            reparse: Callable[[dict], tuple] | None = None) -> int:
    """Run an image job from parsed flags; returns the exit code.

    make_job(args) -> the job (an ImageJob), raising UsageError for bad flags;
    build(pipeline, job) attaches it; describe(job) -> its models for run.json;
    models_of(a run record, or describe()'s dict) -> what identifies the models that made its
    rows ({"the TEE": extractor id}), compared on --resume (check_same_run); reparse(recorded
    options) -> (args, beam args), the command line parsed over a run's recorded options (for
    --retry-failures; without it the flag is refused). Every usage error is found before
    anything in --output is written.
    """
    prog = kind.name
    options = PipelineOptions(beam_args)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    scratch = tempfile.mkdtemp(prefix=f"{prog}-")  # the launcher's on-disk id sets, disk mode's spill files
    try:
        try:
            args = settings_for(args, kind, reparse, dry_run)
            # A local runner's workers are this machine: its devices are checked now, before the
            # models load (Dataflow's workers bring their own GPUs).
            check_device(args.device, local=runs_here(runner))
            job = make_job(args)
            job = replace(job, handler=replace(job.handler, callers=model_callers(options, runner)))
            mode = selection_mode(job.dedupe, runner)
            history: list = []
            if not dry_run:  # a dry run writes nothing and must not touch the (remote) output
                def same_run(previous: dict) -> None:
                    check_same_run(job.output, previous, args, describe(job), models_of)

                done_parts, history = prepare_output(job.output, kind, overwrite=args.overwrite, resume=args.resume,
                                                     retry_mode=job.retry, same_run=same_run)
                job = replace(job, done_parts=done_parts)
            job = replace(job, scratch_dir=scratch)
        except UsageError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        return _run(kind, args, job, options, runner=runner, mode=mode, history=history, dry_run=dry_run,
                    build=build, describe=describe)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def model_callers(options: PipelineOptions, runner: str) -> int | None:
    """How many model callers share a worker machine's cores (HandlerOptions.callers): the local
    runner's --direct_num_workers (processes or threads, 0 = one per core); on other runners one
    per core (Dataflow runs one Python SDK process per vCPU), or 1 with the experiment
    no_use_multiple_sdk_containers."""
    if runs_here(runner):
        return local_workers(options)
    experiments = options.view_as(DebugOptions).experiments or []
    return 1 if "no_use_multiple_sdk_containers" in experiments else None


def runner_class(runner: str) -> type:
    """The class the pipeline's runner will be (create_runner: no I/O); UsageError if Beam has none."""
    from apache_beam.runners.runner import create_runner

    try:
        return type(create_runner(runner))
    except ValueError as e:
        raise UsageError(f"--runner {runner}: {e}") from e


def runs_here(runner: str) -> bool:
    """Does `runner` run the work on this machine (the DirectRunner, Prism, ... and their subclasses)?"""
    return any(cls.__name__ in LOCAL_RUNNERS for cls in runner_class(runner).__mro__)


def selection_mode(requested: str, runner: str) -> str:
    """The --dedupe mode the job will run with on `runner` (imagejob.dedupe_mode); UsageError if unusable."""
    name = runner_class(runner).__name__
    mode = dedupe_mode(requested, name)
    if mode == "disk" and name not in LOCAL_RUNNERS:
        raise UsageError(f"--dedupe disk needs a runner on this machine, not {runner}: its workers would not see "
                         "the spill files; use --dedupe shuffle or auto")
    return mode


def settings_for(args: argparse.Namespace, kind: JobKind, reparse: Callable[[dict], tuple] | None,
                 dry_run: bool) -> argparse.Namespace:
    """The flags to run with: the command line's, or with --retry-failures the retried run's."""
    if not getattr(args, "retry_failures", None) or dry_run:
        return args
    if reparse is None:
        raise UsageError("--retry-failures is not supported by this command")
    return retry_settings(args, reparse, kind)


def _run(kind: JobKind, args: argparse.Namespace, job, options: PipelineOptions, *,
         runner: str, mode: str, history: list, dry_run: bool, build, describe) -> int:
    """run.json "running", the pipeline, then the counts checked and recorded; returns the exit code."""
    prog = kind.name
    started = datetime.now(timezone.utc)
    job = replace(job, run_id=started.isoformat())
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
        "dedupe": mode,
        "resumed_from_parts": len(job.done_parts),
        "history": history,  # earlier runs into the same --output (--resume, --retry-failures), oldest first
    }
    if not dry_run:
        sinks.write_run_record(job.output, record)
    t0 = time.monotonic()
    p = beam.Pipeline(options=options)
    build(p, job)
    result, code = execute(p, prog=prog, output=job.output, record=record, dry_run=dry_run, runner=runner)
    if code is not None:
        return code

    try:
        counted = count_input(job, kind, job.scratch_dir)
    except Exception as e:  # e.g. a remote manifest that went away after the job read it
        return failed_after_run(record, job.output, prog, f"cannot count the input again: {root_message(e)}")
    metrics = beam_counters(result, kind.name)
    if job.retry is not None:
        old_parts = {part for _, part in job.done_parts}
        record["retry"] = retry.settle(job.output, kind.tables, old_parts, job.retry, codec=job.compression,
                                       scratch=job.scratch_dir)
    counts = count_outputs(job.output, kind)
    # Every distinct input image, and every image an earlier run committed that this
    # input no longer lists, is one row: the expected total, known without Beam.
    expected = counted["distinct_images"] + counted["done_not_in_input"]
    removed = 0
    if counts[kind.done] + counts["failed"] > expected:
        # More rows than images: a retried bundle committed some twice. Keep one of each.
        removed = sinks.reconcile(job.output, kind.tables, codec=job.compression, scratch=job.scratch_dir)
        counts = count_outputs(job.output, kind)
    counts.update(counted, extra_copies_removed=removed)
    accounted = counts[kind.done] + counts["failed"]
    disagree = {name: (metrics[name], counted[name]) for name in BEAM_COUNTERS
                if metrics is not None and metrics[name] != counted[name]}
    consistent = expected == accounted and not disagree
    record.update(status="succeeded" if consistent else "inconsistent",
                  finished_at=datetime.now(timezone.utc).isoformat(),
                  wall_seconds=round(time.monotonic() - t0, 3), counts=counts,
                  beam_counters=metrics)  # null where the runner reports none
    sinks.write_run_record(job.output, record)
    datacard.write(job.output, card(kind, record))
    report(prog, kind, job, counts, record.get("retry"), time.monotonic() - t0)
    if expected != accounted:
        print(f"{prog}: error: {expected} distinct images but {accounted} output rows", file=sys.stderr)
    if disagree:
        said = ", ".join(f"{name} {beam_n} (counted {n})" for name, (beam_n, n) in disagree.items())
        print(f"{prog}: error: the job's Beam counters disagree with the input: {said}", file=sys.stderr)
    return 0 if consistent else EXIT_FAILED


def failed_after_run(record: dict, output: str, prog: str, reason: str) -> int:
    record.update(status="failed", finished_at=datetime.now(timezone.utc).isoformat(), error=reason)
    sinks.write_run_record(output, record)
    print(f"{prog}: error: {reason}", file=sys.stderr)
    return EXIT_FAILED


def report(prog: str, kind: JobKind, job, counts: dict, retried: dict | None, wall: float) -> None:
    """The job's last lines on stderr: what became of the images, how fast."""
    wall = max(wall, 1e-9)
    new = counts["distinct_images"] - counts["already_done"] - counts["skipped_new"]  # processed by this job
    resumed = f", {counts['already_done']} already done" if job.done_parts else ""
    print(f"{prog}: {counts['distinct_images']} images: {counts[kind.done]} {kind.done}, "
          f"{counts['failed']} failed{resumed}, {counts['duplicates']} duplicate rows skipped; "
          f"{wall:.1f}s ({new / wall:.2f} images/s) -> {job.output}", file=sys.stderr)
    if retried is not None:
        kinds = ", ".join(f"{n} {k}" for k, n in retried["left_alone_by_kind"].items())
        print(f"{prog}: retried {retried['retried']} failures ({retried['mode']}): {retried['recovered']} "
              f"recovered, {retried['failed_again']} failed again; {retried['left_alone']} left alone"
              f"{f' ({kinds})' if kinds else ''}", file=sys.stderr)
