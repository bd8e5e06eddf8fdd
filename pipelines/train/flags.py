"""The shared training loop's flags: every trainer takes the same ones.

Defaults come from `TrainConfig`, so the flags and the config cannot drift apart; a
trainer overrides the few that differ for it (e.g. the student's learning rate).
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, fields

from pipelines.train.loop import TrainConfig

_DEFAULTS = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}


def add_train_flags(ap: argparse.ArgumentParser, **overrides) -> None:
    """Add the loop's flags to `ap`; `overrides` replace TrainConfig's defaults for this trainer."""
    unknown = sorted(set(overrides) - set(_DEFAULTS))
    if unknown:
        raise ValueError(f"no TrainConfig default to override: {', '.join(unknown)}")
    d = {**_DEFAULTS, **overrides}
    g = ap.add_argument_group("training loop")
    g.add_argument("--output", required=True, help="run directory: checkpoints, model, metrics.jsonl (local or gs://)")
    g.add_argument("--max-steps", type=int, required=True)
    g.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output")
    g.add_argument("--stop-at", type=int, default=d["stop_at"],
                   help="end this run after step N with a checkpoint, keeping the --max-steps schedule "
                        "(time-boxed or preemptible slots; continue with --resume)")
    g.add_argument("--batch-size", type=int, default=d["batch_size"], help="per process")
    g.add_argument("--lr", type=float, default=d["lr"])
    g.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    g.add_argument("--optimizer", default=d["optimizer"], choices=("adamw", "sgd"))
    g.add_argument("--warmup-steps", type=int, default=d["warmup_steps"])
    g.add_argument("--schedule", default=d["schedule"], choices=("cosine", "constant"))
    g.add_argument("--grad-clip", type=float, default=d["grad_clip"], help="max gradient norm (0: off)")
    g.add_argument("--grad-accum", type=int, default=d["grad_accum"], help="batches per optimizer step")
    g.add_argument("--no-bf16", dest="bf16", action="store_false", help="no bf16 autocast on CUDA")
    g.set_defaults(bf16=d["bf16"])
    g.add_argument("--log-every", type=int, default=d["log_every"])
    g.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"])
    g.add_argument("--eval-every", type=int, default=d["eval_every"],
                   help="validation every N steps (0: at the end only)")
    g.add_argument("--keep-checkpoints", type=int, default=d["keep_checkpoints"])
    g.add_argument("--seed", type=int, default=d["seed"])
    g.add_argument("--num-workers", type=int, default=d["num_workers"],
                   help="data loading processes per training process")
    g.add_argument("--device", default=d["device"], help="auto | cpu | cuda (torchrun: one GPU per process)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (metrics.jsonl still written)")


def train_config(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values, progress=not args.no_progress)
