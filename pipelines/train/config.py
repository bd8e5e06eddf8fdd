"""The shared training loop's configuration, on its own so that reading it needs no torch.

`pipelines.train.flags` builds every trainer's flags from these defaults, and a trainer's
`--help` must not wait for torch to import: this module imports nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    output: str
    max_steps: int
    batch_size: int = 8  # per process
    lr: float = 1e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"  # adamw | sgd
    momentum: float = 0.9  # sgd only
    warmup_steps: int = 100
    schedule: str = "cosine"  # cosine | constant (after warmup)
    min_lr_ratio: float = 0.05  # cosine ends at lr * min_lr_ratio
    grad_clip: float = 10.0  # max global grad norm; 0 turns clipping off
    grad_accum: int = 1  # batches per optimizer step
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    log_every: int = 10
    checkpoint_every: int = 500
    eval_every: int = 0  # 0: only at the end (when an evaluator is given)
    keep_checkpoints: int = 2
    seed: int = 0
    num_workers: int = 2  # DataLoader workers per process
    device: str = "auto"
    resume: bool = False
    overwrite: bool = False  # replace an earlier run in output (its checkpoints, model, metrics)
    progress: bool = True
    stop_at: int = 0  # end this invocation after this step (checkpointed), keeping the max_steps schedule

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, not {getattr(self, name)}")
        for name in ("warmup_steps", "eval_every", "num_workers", "grad_clip", "stop_at"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, not {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be > 0, not {self.lr}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"--optimizer must be adamw or sgd, not {self.optimizer!r}")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"--schedule must be cosine or constant, not {self.schedule!r}")
        if self.resume and self.overwrite:
            raise ValueError("--overwrite and --resume contradict each other: choose one")

    def warmup_warning(self) -> str | None:
        """Why this schedule would not train, when warmup spans the whole run: the learning rate
        climbs for --max-steps steps and never reaches (or just touches) --lr, so a short run's
        loss barely moves. A warning, not a refusal: smoke runs do this on purpose."""
        if not self.warmup_steps or self.warmup_steps < self.max_steps:
            return None
        reached = 100 * self.max_steps / self.warmup_steps  # the last step's share of --lr
        return (f"--warmup-steps {self.warmup_steps} >= --max-steps {self.max_steps}: the learning rate never "
                f"leaves warmup (it ends at {reached:.3g}% of --lr {self.lr:g}); for a short run lower "
                f"--warmup-steps, e.g. --warmup-steps {self.max_steps // 10}")
