"""The corpus join's command line: labels + features -> shuffled training shards.

    python -m pipelines.build_corpus --labels LABELED/labels --features EXTRACTED/features --output CORPUS

Writes CORPUS/shards/train-*-of-*.parquet, CORPUS/val/val-*-of-*.parquet (schemas.CORPUS)
and CORPUS/run.json (options, counts, extractor and teacher ids seen, versions, times).
The flags are pipelines.beam.flags.corpus_parser's; the pipeline is pipelines.beam.corpus.build;
every other flag must be a Beam pipeline option (checked), so the same command runs on the
DirectRunner and on Dataflow. The join is one-shot: --resume is refused (rerun with --overwrite).
Exit codes: 0 done, 1 the job failed or its files disagree with its counters, 2 usage
(bad flags, missing or wrong-kind inputs, a table of a schema version this release cannot
read), reported before anything is written.

Beam is imported inside run(), so that `--help` and a mistyped flag answer at once.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from pipelines.beam import flags
from pipelines.cli import EXIT_FAILED, EXIT_USAGE, UsageError, usage_error  # noqa: F401  (this CLI's API)
from pipelines.data import datacard

if TYPE_CHECKING:
    from pipelines.beam.corpus import CorpusJob

PROG = "build_corpus"  # = corpus.NAMESPACE, the prefix of every line it prints
OUTPUT_ENTRIES = ("run.json", "shards", "val")  # = ("run.json", *corpus.SPLIT_DIRS.values())
SIDES = {"labels": "pseudo_label", "features": "extract_features"}  # input flag -> the job that writes it


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(our flags, Beam pipeline flags); UsageError for anything else, and for --resume."""
    args, beam_args = flags.corpus_parser().parse_with_beam(argv)
    if args.resume:
        raise UsageError("--resume: the join is one-shot (every shard holds rows of every input), there is no run "
                         "to continue; rerun it with --overwrite")
    return args, beam_args


def wrong_kind(path: str, side: str) -> str | None:
    """The line refusing --labels/--features `path` when it is another of the project's kinds
    (a labeling run given as --features, a corpus, a TEE ...), else None."""
    from pipelines.data.kinds import RUNS, TABLES, what_is

    kind = what_is(path)
    own_run, _ = RUNS[SIDES[side]]
    if kind is None or kind in (own_run, TABLES[side]):
        return None  # its own run folder gets the "did you mean" hint of check_input
    runs = {description for description, _ in RUNS.values()}
    wanted = own_run if kind in runs else TABLES[side]
    return f"--{side} {path} is {kind}, not {wanted}"


def check_input(path: str, side: str) -> tuple[str, ...]:
    """The Parquet files of an input table, each footer checked (name, version, columns)."""
    from pipelines.beam import corpus
    from pipelines.data import storage
    from schemas import SchemaVersionError
    from schemas.io import file_schema, parquet_files

    schema, columns = corpus.INPUTS[side]
    flag = f"--{side}"
    wrong = wrong_kind(path, side)
    if wrong is not None:
        raise UsageError(wrong)
    try:
        files = parquet_files(path)
    except Exception as e:  # unreadable bucket, bad URL
        raise UsageError(f"{flag} {path}: cannot list it ({type(e).__name__}: {e})") from e
    if not files:
        hint = ""
        nested = storage.join(path, side)
        try:
            if parquet_files(nested):
                hint = f" (did you mean {flag} {nested}?)"
        except Exception:
            pass
        raise UsageError(f"{flag} {path}: no Parquet files there{hint}")
    for file in files:
        try:
            found = file_schema(file)
            schema.check(found, where=file)
            corpus.check_columns(found, columns, file, schema)
        except (SchemaVersionError, ValueError) as e:
            raise UsageError(f"{flag}: {e}") from e
        except Exception as e:  # not Parquet, unreadable
            raise UsageError(f"{flag}: cannot read {file} ({type(e).__name__}: {e})") from e
    return tuple(files)


def make_job(args: argparse.Namespace) -> CorpusJob:
    """Validate flags and inputs into a CorpusJob; raises UsageError with one clear line."""
    from pipelines.beam import corpus

    if args.shard_rows < 1:
        raise UsageError(f"--shard-rows must be >= 1, not {args.shard_rows}")
    if not 0.0 <= args.val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), not {args.val_fraction}")
    return corpus.CorpusJob(labels_files=check_input(args.labels, "labels"),
                            features_files=check_input(args.features, "features"),
                            output=args.output.rstrip("/"), shard_rows=args.shard_rows,
                            val_fraction=args.val_fraction, seed=args.seed, compression=args.compression)


def prepare_output(output: str, *, overwrite: bool) -> None:
    """Refuse an --output that holds a run, unless --overwrite (and never another job's run)."""
    from pipelines.data import storage

    previous = [p for p in OUTPUT_ENTRIES if storage.exists(storage.join(output, p))]
    if not previous:
        return
    if "run.json" in previous:
        try:
            other = json.loads(storage.read_text(storage.join(output, "run.json"))).get("job")
        except (ValueError, AttributeError):
            other = None
        if other not in (None, PROG):
            raise UsageError(f"--output {output} holds a {other} run, not {PROG}: choose another --output")
    if not overwrite:
        raise UsageError(f"--output {output} already holds a corpus ({', '.join(previous)}); pass --overwrite "
                         "to replace it, or choose another --output")
    for p in previous:
        storage.remove(storage.join(output, p))
    datacard.remove(output)


def run(argv: list[str] | None = None) -> int:
    try:
        args, beam_args = parse_args(argv)
    except UsageError as e:  # before anything heavy is imported, before --output is looked at
        return usage_error(PROG, e)
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, TestOptions

    from pipelines.beam import corpus, sinks
    from pipelines.beam.jobrun import execute, versions

    options = PipelineOptions(beam_args)
    dry_run = bool(options.view_as(TestOptions).dry_run)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    try:
        job = make_job(args)
        if not dry_run:  # a dry run writes nothing and must not touch the (remote) output
            prepare_output(job.output, overwrite=args.overwrite)
    except UsageError as e:
        return usage_error(PROG, e)

    record = {
        "job": PROG,
        "status": "running",
        "started_at": datetime.now(timezone.utc).isoformat(),
        "runner": runner,
        "inputs": {"labels": args.labels, "features": args.features,
                   "labels_files": len(job.labels_files), "features_files": len(job.features_files)},
        "output": job.output,
        "options": dict(vars(args)),
        "pipeline_options": options.get_all_options(drop_default=True),
        "versions": versions(),
        "host": platform.node(),
    }
    if not dry_run:
        sinks.write_run_record(job.output, record)
    t0 = time.monotonic()
    p = beam.Pipeline(options=options)
    corpus.build(p, job)
    result, code = execute(p, prog=PROG, output=job.output, record=record, dry_run=dry_run, runner=runner)
    if code is not None:
        return code
    return settle(job, result, record, t0)


def settle(job: CorpusJob, result, record: dict, t0: float) -> int:
    """After the pipeline: the counts (Beam's, checked against the files), run.json, the report."""
    from pipelines.beam import corpus, sinks
    from pipelines.beam.jobrun import counter

    c = {name: counter(result, PROG, name) for name in corpus.COUNTERS}
    known = all(v is not None for v in c.values())
    rows_per_split = {s: c[s] or 0 for s in corpus.SPLITS}
    if not known:  # a runner without metrics: trust the files
        rows_per_split = None
    found, problems = corpus.read_back(job.output, rows_per_split or {}, job.shard_rows)
    if rows_per_split is None:
        problems = []
    counts = {**c, **found["counts"]}
    if not known:
        counts.update(train=counts["train_in_files"], val=counts["val_in_files"],
                      joined=counts["train_in_files"] + counts["val_in_files"])
    else:
        counts["malformed_rows"] = c["malformed_labels"] + c["malformed_features"] + c["malformed_pairs"]
        problems += disagreements(c)
    consistent = not problems
    record.update(status="succeeded" if consistent else "inconsistent",
                  finished_at=datetime.now(timezone.utc).isoformat(),
                  wall_seconds=round(time.monotonic() - t0, 3), counts=counts,
                  extractors=found["extractors"], captioners=found["captioners"], taggers=found["taggers"],
                  **({"problems": problems} if problems else {}))
    sinks.write_run_record(job.output, record)
    datacard.write(job.output, card(record))
    report(job, counts, found["extractors"], time.monotonic() - t0)
    if not consistent:
        print(f"{PROG}: error: the written shards disagree with the job's counts: {'; '.join(problems)}",
              file=sys.stderr)
        return EXIT_FAILED
    return 0


def card(record: dict) -> str:
    """The corpus's dataset card: its two splits as `train` and `validation` (pipelines/data/datacard.py)."""
    from pipelines.beam.corpus import SPLIT_DIRS
    from schemas import CORPUS

    counts = record.get("counts") or {}
    splits = {"train": f"{SPLIT_DIRS['train']}/*.parquet"}
    if counts.get("val"):
        splits["validation"] = f"{SPLIT_DIRS['val']}/*.parquet"
    models = [f"- TEE extractor ids: {', '.join(f'`{e}`' for e in record.get('extractors') or []) or 'none'}",
              f"- captioners: {', '.join(f'`{m}`' for m in record.get('captioners') or []) or 'none'}",
              f"- taggers: {', '.join(f'`{m}`' for m in record.get('taggers') or []) or 'none'}"]
    out = record.get("output")
    lines = [
        f"The training corpus `build_corpus` joined ({record.get('status')}, finished {record.get('finished_at')}) "
        f"from labels `{record['inputs']['labels']}` and features `{record['inputs']['features']}`: "
        f"{counts.get('train', 0)} training rows in `shards/`, {counts.get('val', 0)} validation rows in `val/` "
        f"(held out by a hash of image_id). One row per image: the teachers' captions and tags, the TEE's regions.",
        "",
        "Made by:",
        *datacard.with_tiny_note(models),
        "",
        f"Schema `{CORPUS.name}` version {CORPUS.version} (docs/student.md); `run.json` holds every option and count.",
        "",
        "```python",
        "from datasets import load_dataset",
        f"corpus = load_dataset({out!r})   # splits: {', '.join(splits)}",
        "```",
        "",
        datacard.ATTRIBUTION,
    ]
    return datacard.render(f"MiniVLM corpus: {out}", {"corpus": splits}, lines, tags=(PROG,))


def disagreements(c: dict) -> list[str]:
    """Beam's counters against each other: every image id and every input row accounted for once."""
    problems = []
    pairs = c["joined"] + c["hash_mismatches"] + c["malformed_pairs"]
    if c["image_ids"] != pairs + c["labels_without_features"] + c["features_without_labels"]:
        problems.append(f"{c['image_ids']} image ids but {pairs} pairs + {c['labels_without_features']} "
                        f"labels only + {c['features_without_labels']} features only")
    used = (c["malformed_labels"] + c["malformed_features"] + c["duplicate_ids"] + 2 * pairs
            + c["labels_without_features"] + c["features_without_labels"])
    if c["labels_rows"] + c["features_rows"] != used:
        problems.append(f"{c['labels_rows']} + {c['features_rows']} input rows, {used} accounted for")
    return problems


def report(job: CorpusJob, n: dict, extractors: dict, wall: float) -> None:
    """The job's last lines on stderr: warnings, then what became of the rows."""
    if not n["joined"]:
        print(f"{PROG}: warning: no image has both labels and features: are --labels and --features "
              "runs over the same images?", file=sys.stderr)
    if len(extractors) > 1:
        print(f"{PROG}: warning: the corpus mixes {len(extractors)} extractors "
              f"({', '.join(sorted(extractors))}): train on one", file=sys.stderr)
    print(f"{PROG}: {n['joined']} joined ({n['train']} train in {n['shards_train']} shards, {n['val']} val in "
          f"{n['shards_val']}); {n['labels_without_features']} labels without features, "
          f"{n['features_without_labels']} features without labels, {n['hash_mismatches']} hash mismatches, "
          f"{n['duplicate_ids']} duplicate rows, {n.get('malformed_rows')} malformed; "
          f"{wall:.1f}s -> {job.output}", file=sys.stderr)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
