"""Nothing lost, nothing replayed, nothing executed: resuming the three trainers.

- Exact resume whatever the data: rows that fail to load (non-finite features, a wrong
  region count, an undecodable image) are part of a reader's position, so a run stopped
  with --stop-at and continued with --resume logs the uninterrupted run's losses at every
  step and ends with its weights, with 0 and 2 loader workers.
- Checkpoints cannot run code: the training state loads with `weights_only=True`; a state
  file carrying a pickled payload, or a checkpoint from before (numpy RNG objects), is
  refused with one line and exit 2, and the payload never runs.

A trainer killed with SIGKILL mid-run: tests/test_train_resume_kill.py.
"""
import json
import os
import pickle
import random
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from benchmarks.synthetic_scenes import write_dataset
from models.minivlm import build_student
from models.tee import load_tee
from pipelines.finetune_caption import run as finetune_caption
from pipelines.train.streams import Positioned, ResumableStream, WithPosition, by_index, shuffled
from pipelines.train_student import run as train_student
from pipelines.train_tee import run as train_tee
from schemas import CORPUS
from tests.test_student import _row

# ---- the stream alone ------------------------------------------------------------------

class Flaky(ResumableStream):
    """Samples are their own positions; items in `bad` fail to load, like a corrupt row."""

    def __init__(self, n, bad, **kw):
        super().__init__(**kw)
        self.n, self.bad = n, set(bad)

    def items(self, epoch, readers, slot):
        return by_index(shuffled(iter(range(self.n)), 4, random.Random(epoch)), readers, slot)

    def load(self, item, rng):
        return None if item in self.bad else torch.tensor([item, int(rng.integers(1000))])


def _positioned_batches(stream, batches, workers):
    """(batch, reader position after it) pairs, as the trainer's loader yields them."""
    loader = DataLoader(Positioned(stream), batch_size=stream.batch_size, num_workers=workers,
                        collate_fn=WithPosition(torch.utils.data.default_collate))
    it = iter(loader)
    return [next(it) for _ in range(batches)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resumes_at_reader_positions_past_unloadable_items(workers):
    def stream():
        return Flaky(10, bad={1, 4, 7}, seed=1, batch_size=3)

    full = _positioned_batches(stream(), 9, workers)
    positions = {}
    for _, pos in full[:5]:
        positions[pos.reader] = (pos.epoch, pos.index)
    resumed = stream()
    resumed.start_batch, resumed.start_positions = 5, positions
    again = _positioned_batches(resumed, 4, workers)
    assert [b.tolist() for b, _ in again] == [b.tolist() for b, _ in full[5:9]]
    assert [p for _, p in again] == [p for _, p in full[5:9]]


def test_a_reader_whose_items_all_fail_says_so_instead_of_spinning():
    with pytest.raises(ValueError, match="none of its 5 items in epoch 0 could be loaded"):
        _positioned_batches(Flaky(5, bad=range(5), seed=0, batch_size=2), 1, 0)


# ---- the trainers on data with bad rows --------------------------------------------------

def _train_rows(out):
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split") == "train"]


def _weights(out):
    return load_file(str(out / "model" / "model.safetensors"))


def assert_same_run(straight, resumed, steps):
    """Every step's losses (and lr) and the final weights of the two runs are equal."""
    a, b = _train_rows(straight), _train_rows(resumed)
    assert [r["step"] for r in b] == [r["step"] for r in a] == list(range(1, steps + 1))
    differ = [x["step"] for x, y in zip(a, b)
              if any(x[k] != y[k] for k in x if "loss" in k or "accuracy" in k or k == "lr")]
    assert differ == [], f"steps whose losses differ after the resume: {differ}"
    wa, wb = _weights(straight), _weights(resumed)
    assert wa.keys() == wb.keys()
    assert [k for k in wa if not torch.equal(wa[k], wb[k])] == []


def stop_and_resume(run, args, out, steps, stop_at):
    assert run(args(out, steps, "--stop-at", str(stop_at))) == 0
    assert run(args(out, steps, "--resume")) == 0


@pytest.fixture(scope="module")
def tee():
    return load_tee("tiny")[0]


def write_bad_corpus(root, tee, rows=24, shards=3, val=4, seed=0):
    """A corpus where every fourth train row cannot be used: non-finite features, or a
    num_regions that does not match its features and boxes (both skipped by the loaders)."""
    rng = np.random.default_rng(seed)
    d, eid = tee.config.feature_dim, tee.extractor_id()
    train = [_row(i, eid, d, rng) for i in range(rows)]
    for i in range(1, rows, 4):
        if i % 8 == 1:
            train[i]["features"][5] = float("nan")
        else:
            train[i]["num_regions"] += 1
    os.makedirs(root / "shards")
    os.makedirs(root / "val")
    for s in range(shards):
        pq.write_table(CORPUS.to_table(train[s::shards]), root / "shards" / f"train-{s:05d}-of-{shards:05d}.parquet")
    pq.write_table(CORPUS.to_table([_row(10_000 + i, eid, d, rng, "val") for i in range(val)]),
                   root / "val" / "val-00000-of-00001.parquet")
    return root


@pytest.fixture(scope="module")
def bad_corpus(tee, tmp_path_factory):
    return write_bad_corpus(tmp_path_factory.mktemp("bad") / "corpus", tee)


def student_args(corpus, workers):
    def args(out, steps, *extra):
        return ["--corpus", str(corpus), "--tee", "tiny", "--init", "tiny", "--output", str(out),
                "--max-steps", str(steps), "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "2",
                "--log-every", "1", "--checkpoint-every", "3", "--num-workers", str(workers), "--no-progress",
                *extra]
    return args


@pytest.mark.parametrize("workers", [0, 2])
def test_pretraining_resumes_exactly_past_bad_rows(bad_corpus, tmp_path, workers):
    args = student_args(bad_corpus, workers)
    assert train_student(args(tmp_path / "straight", 8)) == 0
    stop_and_resume(train_student, args, tmp_path / "resumed", 8, 4)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 8)


@pytest.fixture(scope="module")
def pretrained(tee, tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrained")
    model, tok = build_student("tiny", tee, seed=0)
    model.save_pretrained(str(root / "student"), tok)
    return root / "student"


def caption_args(init, corpus, workers):
    def args(out, steps, *extra):
        return ["--init", str(init), "--train", str(corpus), "--output", str(out), "--max-steps", str(steps),
                "--batch-size", "4", "--lr", "2e-3", "--warmup-steps", "0", "--log-every", "1",
                "--checkpoint-every", "3", "--num-workers", str(workers), "--no-progress", *extra]
    return args


@pytest.mark.parametrize("workers", [0, 2])
def test_caption_finetuning_resumes_exactly_past_bad_rows(pretrained, bad_corpus, tmp_path, workers):
    args = caption_args(pretrained, bad_corpus, workers)
    assert finetune_caption(args(tmp_path / "straight", 8)) == 0
    stop_and_resume(finetune_caption, args, tmp_path / "resumed", 8, 4)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 8)


@pytest.fixture(scope="module")
def broken_scenes(tmp_path_factory):
    """Synthetic detection scenes where every sixth image is undecodable bytes."""
    root = tmp_path_factory.mktemp("scenes")
    paths = write_dataset(str(root), 24, seed=1, size=96, subset="train", prefix="train-")
    for name in sorted(os.listdir(paths["images_dir"]))[::6]:
        with open(os.path.join(paths["images_dir"], name), "wb") as f:
            f.write(b"\xff\xd8\xff\xe0 not really a jpeg")
    return paths


def tee_args(scenes, workers):
    # --scale-jitter 1: every (square) scene fills the input square. torchvision's
    # MultiScaleRoIAlign infers its level scales from the image sizes of the first batch a
    # TEE object sees (the content sizes inside the square) and keeps them, so a resumed run,
    # a fresh model whose first batch is another, can pool from other levels than the
    # uninterrupted run. That is the model's (models/tee.py), not the data stream's: kept out
    # of these tests, which are about where each reader resumes (flips still draw per item).
    def args(out, steps, *extra):
        return ["--images", scenes["images_csv"], "--annotations", scenes["boxes_csv"],
                "--classes", scenes["classes_csv"], "--tee", "tee-tiny", "--output", str(out),
                "--max-steps", str(steps), "--batch-size", "2", "--warmup-steps", "2", "--log-every", "1",
                "--checkpoint-every", "3", "--shuffle-buffer", "8", "--scale-jitter", "1",
                "--num-workers", str(workers), "--no-progress", *extra]
    return args


@pytest.mark.parametrize("workers", [0, 2])
def test_tee_training_resumes_exactly_past_undecodable_images(broken_scenes, tmp_path, workers):
    args = tee_args(broken_scenes, workers)
    assert train_tee(args(tmp_path / "straight", 6)) == 0
    stop_and_resume(train_tee, args, tmp_path / "resumed", 6, 3)
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 6)


def with_flags(args, *flags):
    """A trainer's args builder with `flags` added to every run."""
    return lambda out, steps, *extra: args(out, steps, *flags, *extra)


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 3])
def test_every_stop_point_resumes_exactly(bad_corpus, pretrained, broken_scenes, tmp_path, workers):
    """Each trainer stopped at every step (one chain: stop, resume and stop again, ...), with
    gradient accumulation for the student so a step spans batches of several readers."""
    cases = [("pretrain", train_student, with_flags(student_args(bad_corpus, workers), "--grad-accum", "2"), 7),
             ("caption", finetune_caption, caption_args(pretrained, bad_corpus, workers), 7),
             ("tee", train_tee, tee_args(broken_scenes, workers), 5)]
    for name, run, args, steps in cases:
        straight, chain = tmp_path / f"{name}-straight", tmp_path / f"{name}-chain"
        assert run(args(straight, steps)) == 0
        assert run(args(chain, steps, "--stop-at", "1")) == 0
        for stop in range(2, steps):
            assert run(args(chain, steps, "--resume", "--stop-at", str(stop))) == 0
        assert run(args(chain, steps, "--resume")) == 0
        assert_same_run(straight, chain, steps)


@pytest.mark.slow
def test_torchrun_resumes_exactly_past_bad_rows(bad_corpus, tmp_path):
    """Two processes x 2 loader workers: each rank's reader positions and RNG states are
    gathered into the one checkpoint rank 0 writes, and each rank resumes its own from it."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = student_args(bad_corpus, 2)

    def torchrun(*argv):
        proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                               "2", "-m", "pipelines.train_student", *argv], cwd=repo, capture_output=True,
                              text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]

    torchrun(*args(tmp_path / "straight", 6))
    torchrun(*args(tmp_path / "resumed", 6, "--stop-at", "3"))
    state = torch.load(tmp_path / "resumed" / "checkpoints" / "step-00000003" / "state.pt", weights_only=True)
    assert sorted(slot for slot, _, _ in state["data"]["positions"]) == [0, 1, 2, 3]  # both ranks' readers
    torchrun(*args(tmp_path / "resumed", 6, "--resume"))
    assert_same_run(tmp_path / "straight", tmp_path / "resumed", 6)


# ---- checkpoints that cannot run code ----------------------------------------------------

class Payload:
    """What an attacker plants in a state file: unpickling it creates a directory."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.fixture()
def checkpointed(bad_corpus, tmp_path):
    """A 2-step pre-training run with its checkpoint, and the args to continue it."""
    args = student_args(bad_corpus, 0)
    assert train_student(args(tmp_path / "run", 4, "--stop-at", "2")) == 0
    state = tmp_path / "run" / "checkpoints" / "step-00000002" / "state.pt"
    assert state.exists()
    return args, tmp_path / "run", state


def test_a_checkpoint_loads_with_weights_only(checkpointed):
    _, _, state = checkpointed
    loaded = torch.load(state, map_location="cpu", weights_only=True)
    assert loaded["step"] == 2 and isinstance(loaded["model"], dict)


def test_resume_refuses_a_planted_payload_without_running_it(checkpointed, tmp_path, capsys):
    args, out, state = checkpointed
    pickle.loads(pickle.dumps(Payload(tmp_path / "proof")))  # the payload is live: unpickled, it runs
    assert (tmp_path / "proof").is_dir()
    marker = tmp_path / "pwned"
    torch.save({"step": 2, "model": {}, "rng": Payload(marker)}, state)
    capsys.readouterr()
    assert train_student(args(out, 4, "--resume")) == 2
    assert not marker.exists(), "resuming ran the planted payload"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be resumed safely" in err[0], err


def test_resume_refuses_a_checkpoint_from_before_with_one_line(checkpointed, capsys):
    """Before, the RNG states were pickled as they come (numpy's holds an ndarray), and there
    were no reader positions: such a state, exactly."""
    args, out, state = checkpointed
    old = torch.load(state, map_location="cpu", weights_only=True)
    old["rng"] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    del old["data"]
    torch.save(old, state)
    capsys.readouterr()
    assert train_student(args(out, 4, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be resumed safely" in err[0], err


def test_resume_refuses_a_latest_pointer_that_names_no_checkpoint(checkpointed, capsys):
    args, out, _ = checkpointed
    (out / "checkpoints" / "latest").write_text("../../elsewhere")
    capsys.readouterr()
    assert train_student(args(out, 4, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoints/latest" in err[0], err


def test_resume_with_other_loader_workers_is_refused(checkpointed, bad_corpus, capsys):
    """Readers (processes x workers) split the data: positions of 1 reader mean nothing for 2."""
    _, out, _ = checkpointed
    capsys.readouterr()
    assert train_student(student_args(bad_corpus, 2)(out, 4, "--resume")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num-workers" in err[0], err
