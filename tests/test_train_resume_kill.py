"""A trainer killed with SIGKILL mid-run (loader workers running) resumes exactly.

The killed run is a real `python -m pipelines.train_student` process with 2 DataLoader
workers, killed (with its workers: the whole process group) once a checkpoint exists and
it has logged steps past it; `--resume` then continues from the checkpoint `latest` names,
which is always whole, and repeats the uninterrupted run's losses step for step.
"""
import json
import os
import signal
import subprocess
import sys
import time

import torch

from models.tee import load_tee
from pipelines.train_student import run as train_student
from tests.test_train_resume import assert_same_run, student_args, write_bad_corpus

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 24


def _logged_steps(out):
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # the line being written right now
            pass
    return steps


def _checkpoint_step(out):
    """The step of the checkpoint `latest` names, or None before the first one."""
    pointer = out / "checkpoints" / "latest"
    if not pointer.exists():
        return None
    return int(pointer.read_text().strip().split("-")[1])


def test_a_training_killed_mid_run_resumes_exactly(tmp_path):
    corpus = write_bad_corpus(tmp_path / "corpus", load_tee("tiny")[0])
    args = student_args(corpus, 2)
    out = tmp_path / "killed"
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "pipelines.train_student", *args(out, STEPS)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                # the same threads as this process, which runs the other two: the
                                # split of a sum over threads decides its last bits
                                env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
        try:
            # kill once a checkpoint exists and the run has gone on past it
            while proc.poll() is None:
                ckpt = _checkpoint_step(out)
                if ckpt is not None and any(s > ckpt for s in _logged_steps(out)):
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.01)
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, (tmp_path / "killed.log").read_text()[-2000:])
    killed_at = _checkpoint_step(out)
    assert 0 < killed_at < STEPS
    assert max(_logged_steps(out)) > killed_at  # the resume must drop these and log them again
    # what --resume picks up is whole: the state `latest` names loads, tensors and plain values only
    state = torch.load(out / "checkpoints" / f"step-{killed_at:08d}" / "state.pt", weights_only=True)
    assert state["step"] == killed_at

    assert train_student(args(tmp_path / "straight", STEPS)) == 0
    assert train_student(args(out, STEPS, "--resume")) == 0
    assert_same_run(tmp_path / "straight", out, STEPS)


def test_a_newer_half_written_checkpoint_is_never_picked_up(tmp_path):
    """A kill while a state file is written (an object store may show a partial object; a
    local disk a leftover temporary file) leaves `latest` on the previous checkpoint."""
    corpus = write_bad_corpus(tmp_path / "corpus", load_tee("tiny")[0])
    args = student_args(corpus, 0)
    out = tmp_path / "run"
    assert train_student(args(out, 6, "--stop-at", "3")) == 0
    whole = (out / "checkpoints" / "step-00000003" / "state.pt").read_bytes()
    torn = out / "checkpoints" / "step-00000006"
    torn.mkdir()
    (torn / "state.pt").write_bytes(whole[: len(whole) // 2])
    (torn / f"state.pt.tmp-{os.getpid()}").write_bytes(whole[:100])
    assert train_student(args(out, 6, "--resume")) == 0
    assert train_student(args(tmp_path / "straight", 6)) == 0
    assert_same_run(tmp_path / "straight", out, 6)
