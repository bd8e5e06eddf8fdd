"""What a trainer's --output holds, and what --resume and --overwrite do with it.

The same rules as the Beam jobs (pipelines/beam/jobrun.py): an output that already holds
a run is refused unless --resume continues it or --overwrite replaces it; the two together
are refused; --resume on an output with nothing to resume starts a new run and says so;
another job's output is never written into. Everything here runs before any work (nothing
is written), except `clear_run`, which the loop calls once every input has been checked.

Light on purpose (no torch): the trainers check their output before loading any model.
"""
from __future__ import annotations

import json
import re
from dataclasses import replace

from pipelines.cli import UsageError
from pipelines.data import storage
from pipelines.train.config import TrainConfig

STATE_NAME = "state.pt"
LATEST = "latest"  # text file naming the newest complete checkpoint
CHECKPOINT_NAME = re.compile(r"step-\d{8}")
RUN_CONFIG = "train_config.json"
# What a training run writes into --output, and all that --overwrite removes: never the
# folder itself, which may hold the user's other files.
RUN_FILES = ("checkpoints", "model", "metrics.jsonl", RUN_CONFIG)


def latest_checkpoint(output: str) -> str | None:
    """URL of the newest complete checkpoint under OUTPUT/checkpoints, or None.

    ValueError when the pointer names something else than a checkpoint of this directory:
    the name is joined into a path, so it must never lead elsewhere."""
    pointer = storage.join(output, f"checkpoints/{LATEST}")
    if not storage.exists(pointer):
        return None
    name = storage.read_text(pointer).strip()
    if not CHECKPOINT_NAME.fullmatch(name):
        raise ValueError(f"{pointer} names {name[:40]!r}, not a checkpoint (step-NNNNNNNN): "
                         "it was not written by this trainer; remove it or use another --output")
    path = storage.join(output, f"checkpoints/{name}")
    return path if storage.exists(storage.join(path, STATE_NAME)) else None


def previous_run(output: str) -> list[str]:
    """The run files already in `output` (empty: a new or empty folder)."""
    return [name for name in RUN_FILES if storage.exists(storage.join(output, name))]


def check_output(cfg: TrainConfig, job: str) -> tuple[TrainConfig, str | None]:
    """(the config to train with, a note for stderr or None); UsageError when --output cannot be used.

    --resume with nothing to resume turns into a new run (the note says so): a time-boxed
    slot can always pass --resume, the first time included. Under torchrun every process
    checks before rank 0 writes anything: rank 0 writes only after the model's first
    broadcast (DDP), which waits for every process."""
    _check_not_another_kind(cfg.output, job)
    found = previous_run(cfg.output)
    if cfg.overwrite or not (found or cfg.resume):
        return cfg, None
    try:
        checkpoint = latest_checkpoint(cfg.output)
    except ValueError as e:  # a pointer that leads elsewhere: refused before anything is read
        raise UsageError(str(e)) from e
    if cfg.resume:
        if checkpoint is not None:
            return cfg, None
        if "model" in found:  # a finished model without its checkpoints: a new run would replace it
            raise UsageError(f"--resume: {cfg.output} holds a model but no checkpoint to continue from; "
                             "pass --overwrite to replace it, or choose another --output")
        return replace(cfg, resume=False), f"nothing to resume in {cfg.output}: starting a new run"
    if checkpoint is None and "model" not in found:
        raise UsageError(f"--output {cfg.output} holds a run that stopped before its first checkpoint "
                         f"({', '.join(found)}); pass --overwrite to start it again, or choose another --output")
    raise UsageError(f"--output {cfg.output} already holds a run ({', '.join(found)}); pass --resume to continue "
                     "it, --overwrite to replace it, or choose another --output")


def _check_not_another_kind(output: str, job: str) -> None:
    """Never write a training run into another job's output (a corpus, a labeling run, a model
    directory, another trainer's run): --overwrite would not even know what to remove there."""
    from pipelines.data.kinds import what_is

    other = _run_job(output)
    if other not in (None, job):
        raise UsageError(f"--output {output} holds a {other} run, not {job}: choose another --output")
    kind = what_is(output)
    if kind is not None and not kind.startswith("a training run folder"):
        raise UsageError(f"--output {output} is {kind}, not a training run folder: choose another --output")


def _run_job(output: str) -> str | None:
    """The trainer that wrote the run in `output` (its train_config.json), if any."""
    path = storage.join(output, RUN_CONFIG)
    if not storage.exists(path):
        return None
    try:
        record = json.loads(storage.read_text(path))
    except ValueError:
        return None  # torn by a kill mid-write: a run of ours all the same
    return record.get("job") if isinstance(record, dict) else None


def clear_run(output: str) -> None:
    """--overwrite: remove an earlier run's files from `output` (the folder and anything else in it stay)."""
    for name in previous_run(output):
        storage.remove(storage.join(output, name))
