"""The training loop every trainer here shares (TEE detection, student pre-training, fine-tuning).

What it gives a trainer:
- one process or many (`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; DDP on gloo or nccl);
- AdamW or SGD, linear warmup then cosine decay, gradient clipping;
- checkpoints with the full state (model, optimizer, schedule, step, every rank's RNG
  states, every data reader's position) every N steps, written whole, and an exact
  `--resume`: a run stopped (or killed) and resumed logs the same losses and ends with
  the same weights as one that never stopped;
- tqdm progress on rank 0 and metrics as JSON lines in OUTPUT/metrics.jsonl.

Exact resume needs a data stream that can restart without replaying or losing a sample:
a `ResumableStream` (pipelines.train.streams) is an IterableDataset that is a pure function of
(seed, epoch, position), and every batch it gives carries its reader's position after it
(items that failed to load included), so the loop records per reader how far it got.

Checkpoints hold tensors and plain Python values only and are read back with
`torch.load(weights_only=True)`: a state file that someone else could write (a shared disk,
a bucket) cannot run code in the trainer.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import pickle
import random
import re
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader

from pipelines.data import storage
from pipelines.train.config import TrainConfig
from pipelines.train.output import LATEST, STATE_NAME, clear_run, latest_checkpoint
from pipelines.train.streams import Positioned, ResumableStream, WithPosition, loaded_batches

log = logging.getLogger(__name__)


# ---- distributed -------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Read torchrun's environment; start the process group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return Dist(rank=rank, world=world, local_rank=local)


def pick_train_device(requested: str, dist: Dist) -> str:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and dist.world > 1:
        requested = f"cuda:{dist.local_rank}"  # one GPU per process
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {requested}: CUDA is not available here")
        torch.cuda.set_device(torch.device(requested))
    return requested


# ---- the loop -----------------------------------------------------------------------

def validate(model: torch.nn.Module, stream: ResumableStream, collate: Callable, *, max_batches: int,
             seed: int) -> dict[str, float]:
    """Mean of the model's outputs over at most `max_batches` batches of one pass over `stream`
    (epoch 0, one reader), keys prefixed `val_`. The same rows and the same random draws every
    time, so validation numbers compare across steps."""
    sums: dict[str, float] = {}
    n = 0
    device = next(model.parameters()).device
    with torch.inference_mode():
        for samples in loaded_batches(stream, stream.batch_size, lambda i: np.random.default_rng((seed, i))):
            out = model({k: v.to(device) for k, v in collate(samples).items()})
            for k, v in out.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n += 1
            if n >= max_batches:
                break
    return {f"val_{k}": v / n for k, v in sums.items()} if n else {}


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, cfg.max_steps - cfg.warmup_steps)
        t = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on norms, biases and fusion weights (1-d parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _rng_state() -> dict:
    """The global RNG states as tensors and plain values, so the checkpoint loads with weights_only=True
    (numpy's own state is a tuple holding an ndarray, which only a full unpickle reads)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "internal": list(internal), "gauss_next": gauss},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    py, npy = state["python"], state["numpy"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_state(path: str) -> dict:
    """The training state of checkpoint `path`, unpickled with weights_only=True: tensors and plain
    values only, so a state file someone else wrote cannot run code here. ValueError (one line)
    for a state that holds anything else (a planted payload, or a checkpoint from before
    states were plain, whose numpy RNG state is an ndarray) or that is not a checkpoint."""
    url = storage.join(path, STATE_NAME)
    data = storage.read_bytes(url)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols on its way to refusing
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))  # what torch refused, e.g. numpy's ndarray rebuilder
        holds = f"objects ({found.group(1)})" if found else "objects"
        raise ValueError(f"--resume: {url} cannot be resumed safely: it holds {holds} beyond tensors and plain "
                         "values, and reading them means a full unpickle, which can run any code (a checkpoint "
                         "from an older release, or not written by this trainer); start again in another "
                         "--output") from None
    except (RuntimeError, EOFError) as e:
        raise ValueError(f"--resume: {url} is not a readable checkpoint: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict) or "data" not in state:
        raise ValueError(f"--resume: {url} cannot be resumed exactly: it holds no data stream positions "
                         "(written by an older release); start again in another --output")
    return state


class Trainer:
    """Runs `loss_fn(model, batch) -> {name: value}` for cfg.max_steps optimizer steps.

    Values whose name contains "loss" are summed for the gradient; the others (e.g.
    accuracies) are only logged. `signature` (e.g. the model config) is stored in every
    checkpoint; --resume refuses a checkpoint whose signature differs.

    save_model(model, directory) writes the trained model in its own format (e.g.
    save_pretrained) at every checkpoint and at the end, in OUTPUT/model.
    evaluate(model) -> {metric: value} runs on rank 0 every eval_every steps and at the end.
    """

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, stream: ResumableStream, collate: Callable,
                 loss_fn: Callable, save_model: Callable, evaluate: Callable | None = None,
                 run_info: dict | None = None, signature: dict | None = None):
        self.cfg, self.stream, self.collate = cfg, stream, collate
        self.loss_fn, self.save_model, self.evaluate = loss_fn, save_model, evaluate
        self.run_info = run_info or {}
        self.signature = json.loads(json.dumps(signature or {}, default=str))
        self.dist = init_distributed(cfg.device if cfg.device != "auto" else
                                     ("cuda" if torch.cuda.is_available() else "cpu"))
        self.device = pick_train_device(cfg.device, self.dist)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed + self.dist.rank)
        self.model = model.to(self.device)
        self.ddp = (torch.nn.parallel.DistributedDataParallel(self.model, device_ids=None if self.device == "cpu"
                                                               else [torch.device(self.device)])
                    if self.dist.world > 1 else None)
        groups = _param_groups(self.model, cfg.weight_decay)
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
        else:
            self.optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.step = 0
        # reader slot -> (epoch, index of its next item), from the batches consumed so far
        # (restored ones included): where each data reader continues after a resume
        self.positions: dict[int, tuple[int, int]] = {}
        self.readers_per_process = max(1, cfg.num_workers)  # 0 workers: the process reads, as one reader

    # ---- state ----

    def _checkpoint(self) -> None:
        # Collectives under DDP (every rank takes part): each rank has its own readers and its
        # own RNG states (seeded seed + rank), and a resumed rank must get its own back.
        positions = self._all_positions()
        rng = self._gather(_rng_state())
        if not self.dist.main:
            return
        name = f"step-{self.step:08d}"
        path = storage.join(self.cfg.output, f"checkpoints/{name}")
        # Tensors and plain values only: read back with weights_only=True (read_state).
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "rng": rng, "config": asdict(self.cfg),
                 "world": self.dist.world, "signature": self.signature,
                 "batches": self.step * self.cfg.grad_accum,
                 "data": {"readers_per_process": self.readers_per_process,
                          "positions": [[slot, epoch, index] for slot, (epoch, index) in sorted(positions.items())]}}
        buf = io.BytesIO()
        torch.save(state, buf)
        _write_bytes(storage.join(path, STATE_NAME), buf.getvalue())
        # The pointer moves only once the state is whole, and is itself replaced whole (never
        # truncated first): a kill at any moment leaves it naming a complete checkpoint.
        _write_bytes(storage.join(self.cfg.output, f"checkpoints/{LATEST}"), name.encode())
        self.save_model(self.model, storage.join(self.cfg.output, "model"))
        self._prune(keep=name)

    def _gather(self, value) -> list:
        """`value` of every rank, in rank order (a collective under DDP)."""
        if self.dist.world == 1:
            return [value]
        gathered: list = [None] * self.dist.world
        torch.distributed.all_gather_object(gathered, value)
        return gathered

    def _all_positions(self) -> dict[int, tuple[int, int]]:
        """Every reader's position, all ranks'. Each rank advances only its own readers' (slots
        rank * readers_per_process ...), so that is what each contributes."""
        return {slot: pos for rank, mine in enumerate(self._gather(self.positions)) for slot, pos in mine.items()
                if slot // self.readers_per_process == rank}

    def _prune(self, keep: str) -> None:
        import fsspec

        fs, root = fsspec.core.url_to_fs(storage.join(self.cfg.output, "checkpoints"))
        names = sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
        steps = [n for n in names if n.startswith("step-") and n != keep]
        for old in steps[: max(0, len(steps) - (self.cfg.keep_checkpoints - 1))]:
            fs.rm(f"{root}/{old}", recursive=True)

    def _restore(self) -> None:
        path = latest_checkpoint(self.cfg.output)
        if path is None:
            raise ValueError(f"--resume: no checkpoint under {self.cfg.output}/checkpoints")
        state = read_state(path)
        if state.get("signature", {}) != self.signature:
            theirs, ours = state.get("signature", {}), self.signature
            diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise ValueError(f"--resume: {path} was written for a different model/config (differs in: "
                             f"{', '.join(diff[:8])}); resume with the same settings or use another --output")
        if state.get("world", 1) != self.dist.world:
            raise ValueError(f"--resume: the checkpoint was written by {state.get('world', 1)} processes, "
                             f"this run has {self.dist.world}; the data split would differ")
        readers = state["data"]["readers_per_process"]
        if readers != self.readers_per_process:  # positions are per reader of one split of the data
            raise ValueError(f"--resume: the checkpoint was written with {readers} data reader(s) per process "
                             f"(--num-workers {readers if readers > 1 else '0 or 1'}), this run has "
                             f"{self.readers_per_process}; the data split would differ: resume with the same "
                             "--num-workers")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        _set_rng_state(state["rng"][self.dist.rank])
        self.positions = {int(slot): (int(epoch), int(index))
                          for slot, epoch, index in state["data"]["positions"]}
        self._truncate_metrics()
        if self.dist.main:
            log.warning("resumed from %s at step %d", path, self.step)

    def _truncate_metrics(self) -> None:
        """Metrics logged after the checkpoint will be logged again: drop them."""
        path = storage.join(self.cfg.output, "metrics.jsonl")
        if not self.dist.main or not storage.exists(path):
            return
        lines = [ln for ln in storage.read_text(path).splitlines() if _step_of(ln) <= self.step]
        storage.write_text(path, "".join(ln + "\n" for ln in lines))

    def _log(self, row: dict) -> None:
        if not self.dist.main:
            return
        import fsspec

        with fsspec.open(storage.join(self.cfg.output, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")

    # ---- loop ----

    def _clear_output(self) -> None:
        """--overwrite: rank 0 removes the earlier run; no rank goes on until it is gone."""
        if self.dist.main:
            clear_run(self.cfg.output)
        if self.dist.world > 1:
            torch.distributed.barrier()

    def fit(self) -> dict:
        cfg = self.cfg
        if cfg.overwrite:
            self._clear_output()  # only now: every input was checked, a refused start keeps the earlier run
        if cfg.resume:
            self._restore()
        elif latest_checkpoint(cfg.output) is not None:
            raise ValueError(f"{cfg.output} already holds checkpoints: pass --resume to continue, "
                             "--overwrite to replace them, or choose another --output")
        elif self.dist.main and storage.exists(storage.join(cfg.output, "metrics.jsonl")):
            storage.remove(storage.join(cfg.output, "metrics.jsonl"))  # a run killed before its first checkpoint
        if self.dist.main:
            storage.write_text(storage.join(cfg.output, "train_config.json"),
                               json.dumps({"train": asdict(cfg), **self.run_info}, indent=2, default=str))
        self.stream.start_batch = self.step * cfg.grad_accum
        self.stream.start_positions = dict(self.positions)
        # Every batch comes with its reader's position after it (streams.WithPosition).
        loader = DataLoader(Positioned(self.stream), batch_size=cfg.batch_size,
                            collate_fn=WithPosition(self.collate), num_workers=cfg.num_workers,
                            persistent_workers=False,
                            # its own generator: building the loader must not move the global RNG,
                            # or a resumed run would diverge from an uninterrupted one
                            generator=torch.Generator().manual_seed(cfg.seed))
        bar = None
        if cfg.progress and self.dist.main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        net = self.ddp if self.ddp is not None else self.model
        net.train()
        last: dict = {}
        window = {"t0": time.monotonic(), "samples": 0}
        batches = iter(loader)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 and self.device.startswith("cuda")
                    else contextlib.nullcontext())
        end = min(cfg.max_steps, cfg.stop_at) if cfg.stop_at else cfg.max_steps
        while self.step < end:
            self.optimizer.zero_grad(set_to_none=True)
            sums: dict[str, float] = {}
            for micro in range(cfg.grad_accum):
                batch, position = next(batches)
                self.positions[position.reader] = (position.epoch, position.index)
                sync = (self.ddp is None or micro == cfg.grad_accum - 1)
                with autocast, (contextlib.nullcontext() if sync else self.ddp.no_sync()):
                    out = self.loss_fn(net, _to_device(batch, self.device))
                    total = sum(v for k, v in out.items() if "loss" in k)
                if not torch.isfinite(total):
                    raise FloatingPointError(f"non-finite loss at step {self.step}: "
                                             f"{ {k: float(v) for k, v in out.items()} }")
                (total / cfg.grad_accum).backward()
                window["samples"] += _batch_len(batch)
                for k, v in (("loss", total), *out.items()):
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                         if cfg.grad_clip else None)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            last = sums
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}")
            if self.step % cfg.log_every == 0 or self.step == end:
                dt = max(time.monotonic() - window["t0"], 1e-9)
                self._log({"step": self.step, "split": "train", "lr": self.scheduler.get_last_lr()[0],
                           "grad_norm": None if grad_norm is None else float(grad_norm),
                           "samples_per_s": round(window["samples"] * self.dist.world / dt, 3), **last})
                window = {"t0": time.monotonic(), "samples": 0}
            if self.evaluate and cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < end:
                self._run_eval()
            if self.step % cfg.checkpoint_every == 0 and self.step < end:
                self._checkpoint()
        if bar is not None:
            bar.close()
        result = {"step": self.step, **last}
        if self.evaluate:
            result.update(self._run_eval())
        self._checkpoint()
        if self.dist.world > 1:
            torch.distributed.barrier()
        return result

    def _run_eval(self) -> dict:
        metrics: dict = {}
        if self.dist.main:
            self.model.eval()
            metrics = self.evaluate(self.model)
            self.model.train()
            self._log({"step": self.step, "split": "val", **metrics})
        if self.dist.world > 1:
            torch.distributed.barrier()
        return metrics


def _step_of(line: str) -> float:
    """The step of a metrics line; infinity for a blank line or one torn by a kill mid-write
    (dropped when the metrics are cut back to a checkpoint)."""
    try:
        return json.loads(line).get("step", 0)
    except ValueError:
        return math.inf


def _write_bytes(url: str, data: bytes) -> None:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    if storage.is_remote(url):
        fs.pipe_file(path, data)
        return
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _to_device(batch, device: str):
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _batch_len(batch) -> int:
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    if isinstance(batch, (list, tuple)):
        return _batch_len(batch[0]) if batch and isinstance(batch[0], (torch.Tensor, list, tuple)) else len(batch)
    return int(batch.shape[0]) if isinstance(batch, torch.Tensor) else 1


def fit_and_report(trainer: Trainer, prog: str) -> int:
    """Run `trainer` for a CLI: exit 2 with one line for a refused start (resume problems), 0 when done."""
    import sys

    try:
        result = trainer.fit()
    except ValueError as e:  # --resume without a checkpoint, checkpoints without --resume, another config
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if trainer.dist.main:
        shown = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items())
        print(f"{prog}: done: {shown}; model -> {trainer.cfg.output.rstrip('/')}/model", file=sys.stderr)
    return 0
