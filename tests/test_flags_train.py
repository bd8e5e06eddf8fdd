"""The three trainers' command lines (issue 16): every mistake is one line and exit 2 before any
work, nothing written, and the corrected command then runs.

- flags: no abbreviations, an unknown flag named with a suggestion; `--device cuda` on a machine
  without one; `--resume` with `--overwrite`;
- --output: a run already there is refused unless --resume continues it or --overwrite replaces
  it; --resume with nothing to resume starts a new run with a note; another job's output is
  never written into;
- folders of the wrong kind named as what they are (a student as --tee, a TEE as --init, a
  labeling run as --corpus);
- a hub --init that is neither reachable nor cached fails in seconds, offline or without network;
- a warmup as long as the run warns; `--help` imports no torch; scripts/train_student.sh needs no
  activated venv and refuses a mistake before torchrun starts.
"""
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.synthetic_scenes import write_dataset
from models.minivlm import build_student, bundled_bert_dir
from models.tee import NotATEE, load_tee
from pipelines.finetune_caption import run as finetune_caption
from pipelines.train_student import run as train_student
from pipelines.train_tee import run as train_tee
from tests.test_student import write_corpus

REPO = Path(__file__).resolve().parent.parent
LOOP = ["--max-steps", "1", "--batch-size", "4", "--warmup-steps", "0", "--num-workers", "0", "--no-progress"]
PROGS = {"train_tee": train_tee, "train_student": train_student, "finetune_caption": finetune_caption}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A saved tiny TEE and student, a corpus of that TEE's features, detection scenes, and a
    labeling run's folder (what pipelines.data.kinds reads of one: its run.json)."""
    root = tmp_path_factory.mktemp("inputs")
    tee, _ = load_tee("tiny", cache_dir=str(root / "cache"))
    tee.save_pretrained(str(root / "tee"))
    student, tokenizer = build_student("tiny", tee)
    student.save_pretrained(str(root / "student"), tokenizer)
    write_corpus(root / "corpus", tee, rows=16, shards=2, val=4)
    scenes = write_dataset(str(root / "scenes"), 6, seed=1, size=96, subset="train", prefix="train-")
    (root / "labeled" / "labels").mkdir(parents=True)
    (root / "labeled" / "run.json").write_text(json.dumps({"job": "pseudo_label", "status": "succeeded"}))
    return root, scenes


@pytest.fixture(autouse=True)
def _tee_cache(tmp_path_factory, monkeypatch):
    # `--tee tiny` builds into $MINIVLM_CACHE once: one cache for this module's runs.
    monkeypatch.setenv("MINIVLM_CACHE", str(tmp_path_factory.getbasetemp() / "flags-cache"))


def base_args(prog, inputs, out):
    """The smallest real command of each trainer: one step on the tiny models."""
    root, scenes = inputs
    data = {"train_tee": ["--images", scenes["images_csv"], "--annotations", scenes["boxes_csv"],
                          "--classes", scenes["classes_csv"], "--tee", "tee-tiny"],
            "train_student": ["--corpus", str(root / "corpus"), "--tee", "tiny", "--init", "tiny"],
            "finetune_caption": ["--init", str(root / "student"), "--train", str(root / "corpus")]}[prog]
    return [*data, "--output", str(out), *LOOP]


def replace_flag(argv, flag, value):
    i = argv.index(flag)
    return [*argv[:i + 1], value, *argv[i + 2:]]


def refused(capsys, prog, argv):
    """Run a command expected to refuse: exit 2 and its one stderr line (no traceback)."""
    capsys.readouterr()
    assert PROGS[prog](argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ---- flags ------------------------------------------------------------------------------------

@pytest.mark.parametrize("prog", PROGS)
def test_flag_mistakes_are_one_line_before_any_work(prog, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = base_args(prog, inputs, out)
    mistakes = [
        (argv + ["--max-step", "1"], "unknown flag --max-step; did you mean --max-steps?"),
        (argv + ["--warmup", "2"], "unknown flag --warmup; did you mean --warmup-steps?"),  # no prefix matching
        (argv + ["--resume", "--overwrite"], "--overwrite and --resume contradict each other: choose one"),
        (argv + ["--device", "gpu"], "--device must be auto, cpu, cuda or cuda:N, not 'gpu'"),
        (argv + ["--device", "cuda:99"], "--device cuda:99: this machine has"),
        (argv[:argv.index("--output")] + LOOP, "the following arguments are required: --output"),
    ]
    if not torch.cuda.is_available():
        mistakes.append((argv + ["--device", "cuda"],
                         "--device cuda: this machine has no CUDA device; use --device cpu (or auto)"))
    for bad, line in mistakes:
        assert refused(capsys, prog, bad).startswith(f"{prog}: error: {line}"), bad
        assert not out.exists(), bad  # nothing written
    assert PROGS[prog](argv) == 0  # the corrected command
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.parametrize("prog", PROGS)
def test_help_imports_no_torch_and_shows_defaults(prog):
    script = (f"import runpy, sys, json\nsys.argv = ['{prog}', '--help']\n"
              f"try:\n    runpy.run_module('pipelines.{prog}', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "heavy = [m for m in ('torch', 'transformers', 'apache_beam') if m in sys.modules]\n"
              "print(json.dumps(heavy), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stderr.strip().splitlines()[-1]) == []
    assert "--overwrite" in proc.stdout and "(default: 0)" in proc.stdout


# ---- --output ----------------------------------------------------------------------------------

def _steps(out):
    return [json.loads(ln)["step"] for ln in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(ln).get("split") == "train"]


@pytest.mark.parametrize("prog", PROGS)
def test_an_earlier_run_is_refused_resumed_or_replaced(prog, inputs, tmp_path, capsys):
    out = tmp_path / "run"
    argv = base_args(prog, inputs, out)
    assert PROGS[prog](replace_flag(argv, "--max-steps", "2")) == 0
    before = (out / "metrics.jsonl").read_text()
    assert refused(capsys, prog, argv) == (
        f"{prog}: error: --output {out} already holds a run (checkpoints, model, metrics.jsonl, train_config.json); "
        "pass --resume to continue it, --overwrite to replace it, or choose another --output")
    assert (out / "metrics.jsonl").read_text() == before
    assert PROGS[prog](argv + ["--overwrite"]) == 0
    assert _steps(out) == [1]  # the earlier run's 2 steps are gone, not appended to
    assert sorted(os.listdir(out / "checkpoints")) == ["latest", "step-00000001"]


@pytest.mark.parametrize("prog", PROGS)
def test_resume_with_nothing_to_resume_starts_a_new_run(prog, inputs, tmp_path, capsys):
    out = tmp_path / "new"
    capsys.readouterr()
    assert PROGS[prog](base_args(prog, inputs, out) + ["--resume"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert f"{prog}: note: nothing to resume in {out}: starting a new run" in err
    assert _steps(out) == [1]


def test_a_refused_overwrite_keeps_the_earlier_run(inputs, tmp_path, capsys):
    root, _ = inputs
    out = tmp_path / "run"
    argv = base_args("train_student", inputs, out)
    assert train_student(argv) == 0
    before = (out / "model" / "model.safetensors").read_bytes()
    line = refused(capsys, "train_student", replace_flag(argv, "--init", str(root / "tee")) + ["--overwrite"])
    assert "is a TEE" in line
    assert (out / "model" / "model.safetensors").read_bytes() == before  # removed only once training starts


def test_a_run_stopped_before_its_first_checkpoint(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    argv = base_args("train_student", inputs, out)
    assert refused(capsys, "train_student", argv) == (
        f"train_student: error: --output {out} holds a run that stopped before its first checkpoint "
        "(metrics.jsonl); pass --overwrite to start it again, or choose another --output")
    assert train_student(argv + ["--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err and _steps(out) == [1]


def test_another_jobs_output_is_never_written_into(inputs, tmp_path, capsys):
    root, _ = inputs
    student_run = tmp_path / "student"
    assert train_student(base_args("train_student", inputs, student_run)) == 0
    for flag in ([], ["--overwrite"]):
        line = refused(capsys, "finetune_caption", base_args("finetune_caption", inputs, student_run) + flag)
        assert line == (f"finetune_caption: error: --output {student_run} holds a train_student run, not "
                        "finetune_caption: choose another --output")
    line = refused(capsys, "finetune_caption", base_args("finetune_caption", inputs, root / "labeled"))
    assert line == (f"finetune_caption: error: --output {root / 'labeled'} is a labeling run (pseudo_label), "
                    "not a training run folder: choose another --output")
    assert sorted(os.listdir(root / "labeled")) == ["labels", "run.json"]


# ---- folders of the wrong kind -----------------------------------------------------------------

def test_wrong_kind_folders_are_named_as_what_they_are(inputs, tmp_path, capsys):
    root, _ = inputs
    out = tmp_path / "run"
    student_run = tmp_path / "student-run"
    assert train_student(base_args("train_student", inputs, student_run)) == 0
    s, f, t = (base_args(p, inputs, out) for p in ("train_student", "finetune_caption", "train_tee"))
    cases = [
        ("train_student", replace_flag(s, "--tee", str(root / "student")),
         f"--tee {root / 'student'} is a MiniVLM student, not a TEE"),
        ("train_student", replace_flag(s, "--tee", str(student_run)),
         f"--tee {student_run} is a training run folder holding a MiniVLM student, not a TEE"),
        ("train_tee", replace_flag(t, "--tee", str(root / "student")),
         f"--tee {root / 'student'} is a MiniVLM student, not a TEE"),
        ("train_student", replace_flag(s, "--init", str(root / "tee")),
         f"--init {root / 'tee'} is a TEE (region feature extractor), not a BERT-architecture checkpoint"),
        ("finetune_caption", replace_flag(f, "--init", str(root / "tee")),
         f"--init {root / 'tee'} is a TEE (region feature extractor), not a MiniVLM student "
         "(pipelines.train_student's output)"),
        ("train_student", replace_flag(s, "--corpus", str(root / "labeled")),
         f"--corpus {root / 'labeled'} is a labeling run (pseudo_label), not a corpus "
         "(pipelines.build_corpus's output)"),
        ("finetune_caption", replace_flag(f, "--train", str(root / "labeled")),
         f"--train {root / 'labeled'} is a labeling run (pseudo_label), not a corpus "
         "(pipelines.build_corpus's output) or a COCO captions JSON"),
    ]
    for prog, argv, line in cases:
        assert refused(capsys, prog, argv) == f"{prog}: error: {line}", argv
        assert not out.exists()
    assert finetune_caption(replace_flag(f, "--init", str(student_run))) == 0  # a student run folder is one


def test_every_tee_loader_names_a_student_as_one(inputs):
    root, _ = inputs
    with pytest.raises(NotATEE, match=f"^{re.escape(str(root / 'student'))} is a MiniVLM student, not a TEE$"):
        load_tee(str(root / "student"))


# ---- the default --init without the hub ---------------------------------------------------------

@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE=1", "no network"])
def test_an_unreachable_uncached_init_fails_in_seconds(network, inputs, tmp_path, capsys):
    home = tmp_path / "hf"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_ENDPOINT")}
    env.update(HF_HOME=str(home), HF_HUB_CACHE=str(home / "hub"))
    if network == "HF_HUB_OFFLINE=1":
        env["HF_HUB_OFFLINE"] = "1"
    else:  # a hub nobody answers for: a closed local port, so no test depends on (or uses) the network
        env["HF_ENDPOINT"] = "http://127.0.0.1:9"
    out = tmp_path / "run"
    argv = base_args("train_student", inputs, out)
    i = argv.index("--init")
    default_init = argv[:i] + argv[i + 2:]
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipelines.train_student", *default_init], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env=env)
    took = time.monotonic() - start
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr[-3000:]
    assert err[0].startswith("train_student: error: --init microsoft/MiniLM-L12-H384-uncased cannot be reached")
    assert "--init tiny" in err[0] and bundled_bert_dir() in err[0] and "local BERT-architecture directory" in err[0]
    assert took < 30, took  # the process, torch import included; transformers' own retries took ~50 s more
    assert not out.exists()
    assert train_student(argv) == 0  # the corrected command: --init tiny


# ---- warmup -------------------------------------------------------------------------------------

def test_a_warmup_as_long_as_the_run_warns(inputs, tmp_path, capsys):
    argv = base_args("finetune_caption", inputs, tmp_path / "run")
    capsys.readouterr()
    assert finetune_caption(replace_flag(replace_flag(argv, "--max-steps", "2"), "--warmup-steps", "500")) == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if "warning" in ln]
    assert warnings == ["finetune_caption: warning: --warmup-steps 500 >= --max-steps 2: the learning rate never "
                        "leaves warmup (it ends at 0.4% of --lr 5e-05); for a short run lower --warmup-steps, "
                        "e.g. --warmup-steps 0"]
    assert finetune_caption(replace_flag(argv, "--output", str(tmp_path / "short"))) == 0
    assert "warning" not in capsys.readouterr().err


# ---- scripts/train_student.sh ---------------------------------------------------------------------

SCRIPT = str(REPO / "scripts" / "train_student.sh")


def _bare_env(tmp_path, **extra):
    """A shell with no activated venv and no `python` on PATH (env -i PATH=/usr/bin:/bin)."""
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "MINIVLM_CACHE": os.environ["MINIVLM_CACHE"], **extra}


def test_the_launcher_needs_no_activated_venv_and_refuses_before_torchrun(inputs, tmp_path):
    proc = subprocess.run(["bash", SCRIPT, "2", "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=_bare_env(tmp_path))
    assert proc.returncode == 0 and "usage: python -m pipelines.train_student" in proc.stdout, proc.stderr
    out = tmp_path / "run"
    argv = base_args("train_student", inputs, out) + ["--device", "cuda:99"]
    proc = subprocess.run(["bash", SCRIPT, "2", *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=_bare_env(tmp_path))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line, no torchrun failure report
    assert proc.stderr.startswith("train_student: error: --device cuda:99: this machine has")
    assert not out.exists()


@pytest.mark.slow
def test_the_launcher_trains_under_torchrun_without_an_activated_venv(inputs, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(["bash", SCRIPT, "1", *base_args("train_student", inputs, out)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=_bare_env(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _steps(out) == [1]
