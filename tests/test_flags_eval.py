"""Issue 16 for caption, evaluate_captions, evaluate_tee, report and evaluate_tags: one flag
vocabulary, nothing guessed, and every mistake one line on stderr, exit 2, nothing written,
before any work; then the corrected command succeeds. Through the real commands: a
subprocess where the point is what a shell sees (and that torch was never needed), the
command's run(argv) where it is the same code and a subprocess would only add a torch import.
"""
import io
import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks.synthetic_scenes import write_dataset
from models.minivlm import build_student
from models.tee import load_tee
from pipelines import caption, evaluate_captions, evaluate_tags, evaluate_tee, report
from tests.conftest import REPO
from tests.help_probe import run_help
from tests.test_evaluate_tags import write_pair

COMMANDS = ("caption", "evaluate_captions", "evaluate_tee", "report", "evaluate_tags")
SAMPLE_IMAGE = os.path.join(REPO, "data", "sample", "images", "1f24cea80c3e0691.jpg")


# ---- inputs: the kinds of folders the commands take, and the kinds they get by mistake ----------

@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny TEE, a pre-training student and a captioning student, saved as the trainers save them."""
    root = tmp_path_factory.mktemp("models")
    tee, _ = load_tee("tiny", cache_dir=str(root / "cache"))
    tee.save_pretrained(str(root / "tee"))
    for task, name in (("pretraining", "pretrained"), ("captioning", "captioner")):
        model, tok = build_student("tiny", tee, seed=0, task=task)
        model.save_pretrained(str(root / name), tok)
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labeling run (labels table, human labels, classes, COCO references of its images),
    held-out synthetic scenes, and a features run and a corpus as far as their run.json
    says what they are (all that tells one run folder from another)."""
    root = tmp_path_factory.mktemp("data")
    run = write_pair(root / "run")
    (run / "run.json").write_text(json.dumps({"job": "pseudo_label"}))
    (run / "coco.json").write_text(json.dumps({
        "images": [{"id": n, "file_name": f"img{n}.jpg"} for n in (1, 2)],
        "annotations": [{"image_id": 1, "caption": "a thing on a table"}, {"image_id": 2, "caption": "a thing"}]}))
    for name, job in (("features", "extract_features"), ("corpus", "build_corpus")):
        (root / name).mkdir()
        (root / name / "run.json").write_text(json.dumps({"job": job}))
    scenes = write_dataset(str(root / "scenes"), 3, seed=2, size=64, subset="validation")
    return {"root": root, "run": run, "scenes": scenes}


def cli(command, *args):
    return subprocess.run([sys.executable, "-m", f"pipelines.{command}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)


def assert_refused(proc, line, output=None):
    """Exit 2, exactly `line` on stderr, nothing on stdout, nothing written at `output`."""
    assert (proc.returncode, proc.stderr.splitlines(), proc.stdout) == (2, [line], ""), proc.stderr[-2000:]
    assert output is None or not os.path.exists(output)


def in_process(command, argv, capsys):
    """run(argv) of the command as a CompletedProcess, so both ways read alike."""
    if command is caption:  # caption writes through its out/err arguments
        out, err = io.StringIO(), io.StringIO()
        code = caption.run(list(map(str, argv)), out=out, err=err)
        return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())
    code = command.run(list(map(str, argv)))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(argv, code, captured.out, captured.err)


def succeeds(command, argv, capsys):
    proc = in_process(command, argv, capsys)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


# ---- --help: fast, with defaults ------------------------------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_help_loads_no_torch_beam_or_transformers_and_shows_defaults(command):
    probe, proc = run_help(command)
    assert probe == {"code": 0, "heavy": []}, proc.stderr[-2000:]
    assert "(default: " in proc.stdout


@pytest.mark.parametrize("command, flags", [
    ("caption", ["--num-beams", "--max-new-tokens", "--batch-size", "--device"]),
    ("evaluate_captions", ["--num-beams", "--max-new-tokens", "--batch-size", "--device", "--output"]),
    ("evaluate_tee", ["--batch-size", "--device", "--output"]),
])
def test_the_shared_vocabulary_and_its_aliases_are_in_help(command, flags):
    text = " ".join(cli(command, "--help").stdout.split())  # help wraps lines at the terminal's width
    assert all(flag in text for flag in flags)
    assert "auto | cpu | cuda | cuda:N" in text and "(default: auto)" in text
    old = {"caption": ["--beam-size", "--max-length"], "evaluate_captions": ["--beam-size", "--max-length"],
           "evaluate_tee": ["--json"]}[command]
    assert text.count("kept for compatibility") == len(old) and all(flag in text for flag in old)


# ---- mistyped and abbreviated flags: refused with a suggestion, before torch loads ----------------

def _misspelled(models, data, out):
    run, scenes = data["run"], data["scenes"]
    human = ["--human-labels", run / "human.csv", "--classes", run / "classes.csv"]
    tee_inputs = ["--images", scenes["images_csv"], "--annotations", scenes["boxes_csv"]]
    return {  # command: (mistyped argv, the flag it meant, corrected argv)
        "caption": (["--checkpoint", models / "captioner", "--num-beam", "2", SAMPLE_IMAGE], "--num-beams",
                    ["--checkpoint", models / "captioner", "--num-beams", "2", SAMPLE_IMAGE]),
        "evaluate_captions": (["--teacher-label", run / "labels", "--references", run / "coco.json", "--no-meteor",
                               "--output", out], "--teacher-labels",
                              ["--teacher-labels", run / "labels", "--references", run / "coco.json", "--no-meteor",
                               "--output", out]),
        "evaluate_tee": (["--tee", models / "tee", *tee_inputs, "--limt", "2", "--output", out], "--limit",
                         ["--tee", models / "tee", *tee_inputs, "--limit", "2", "--output", out]),
        "report": (["--run", run, "--sample", "3", "--output", out], "--samples",
                   ["--run", run, "--samples", "3", "--output", out]),
        "evaluate_tags": (["--labels", run / "labels", *human, "--treshold", "0.5", "--output", out], "--threshold",
                          ["--labels", run / "labels", *human, "--threshold", "0.5", "--output", out]),
    }


@pytest.mark.parametrize("name", COMMANDS)
def test_a_mistyped_flag_is_one_line_with_a_suggestion(name, models, data, tmp_path, capsys):
    out = tmp_path / "out"
    wrong, meant, right = _misspelled(models, data, out)[name]
    typed = next(a for a in wrong if str(a).startswith("--") and a not in right)
    assert_refused(cli(name, *wrong), f"{name}: error: unknown flag {typed}; did you mean {meant}?", out)
    succeeds(globals()[name], right, capsys)


# ---- --device cuda on a machine without one (or cuda:N past its last) -------------------------

def _cuda_mistake() -> tuple[str, str]:
    n = torch.cuda.device_count()
    if n == 0:
        return "cuda", "--device cuda: this machine has no CUDA device; use --device cpu (or auto)"
    return f"cuda:{n}", f"--device cuda:{n}: this machine has {n} CUDA device(s)"


@pytest.mark.parametrize("name", ["caption", "evaluate_captions", "evaluate_tee"])
def test_a_cuda_device_this_machine_lacks_is_one_line_before_any_work(name, models, data, tmp_path, capsys):
    device, message = _cuda_mistake()
    out = tmp_path / "out"
    scenes = data["scenes"]
    argv = {
        "caption": ["--checkpoint", models / "captioner", SAMPLE_IMAGE],
        "evaluate_captions": ["--checkpoint", models / "captioner", "--references", scenes["captions_json"],
                              "--images", scenes["images_dir"], "--no-meteor", "--output", out],
        "evaluate_tee": ["--tee", models / "tee", "--images", scenes["images_csv"], "--annotations",
                         scenes["boxes_csv"], "--output", out],
    }[name]
    command = globals()[name]
    assert_refused(in_process(command, [*argv, "--device", device], capsys), f"{name}: error: {message}", out)
    succeeds(command, [*argv, "--device", "cpu"], capsys)


# ---- inputs of the wrong kind, named as what they are ------------------------------------------

def test_report_run_of_another_kind_is_named(data, tmp_path, capsys):
    root, run, out = data["root"], data["run"], tmp_path / "card"
    for folder, kind in ((root / "features", "a features run (extract_features)"),
                         (root / "corpus", "a corpus (build_corpus)")):
        assert_refused(cli("report", "--run", folder, "--output", out),
                       f"report: error: --run {folder} is {kind}, not a labeling run", out)
    assert_refused(cli("report", "--run", run / "labels", "--output", out),
                   f"report: error: --run {run / 'labels'} is a labels table, not a labeling run: "
                   f"pass --labels {run / 'labels'}", out)
    assert "4 labeled" in succeeds(report, ["--run", run, "--output", out], capsys).stderr


def test_a_run_folder_as_labels_is_named_with_the_table_inside(data, tmp_path, capsys):
    run, out = data["run"], tmp_path / "card"
    assert_refused(cli("report", "--labels", run, "--output", out),
                   f"report: error: --labels {run} is a labeling run (pseudo_label): pass {run / 'labels'}, "
                   f"or --run {run}", out)
    assert "4 labeled" in succeeds(report, ["--labels", run / "labels", "--output", out], capsys).stderr

    out = tmp_path / "eval"
    human = ["--human-labels", run / "human.csv", "--classes", run / "classes.csv", "--output", out]
    assert_refused(cli("evaluate_tags", "--labels", run, *human),
                   f"evaluate_tags: error: --labels {run} is a labeling run (pseudo_label): pass {run / 'labels'}",
                   out)
    succeeds(evaluate_tags, ["--labels", run / "labels", *human], capsys)
    assert (out / "tag_eval.json").exists()


def test_a_run_folder_as_teacher_labels_is_named(data, tmp_path, capsys):
    run, out = data["run"], tmp_path / "eval"
    argv = ["--references", run / "coco.json", "--no-meteor", "--output", out]
    assert_refused(cli("evaluate_captions", "--teacher-labels", run, *argv),
                   f"evaluate_captions: error: --teacher-labels {run} is a labeling run (pseudo_label): "
                   f"pass {run / 'labels'}", out)
    succeeds(evaluate_captions, ["--teacher-labels", run / "labels", *argv], capsys)
    assert (out / "caption_eval.json").exists()


def test_caption_given_a_tee_or_a_pretraining_checkpoint(models, capsys):
    tee = models / "tee"
    assert_refused(cli("caption", "--checkpoint", tee, SAMPLE_IMAGE),
                   f"caption: error: --checkpoint {tee} is a TEE (region feature extractor), not a MiniVLM student: "
                   "pass a pipelines.finetune_caption output")
    pre = models / "pretrained"
    assert_refused(in_process(caption, ["--checkpoint", pre, SAMPLE_IMAGE], capsys),
                   f"caption: error: {pre} is a pretraining MiniVLM checkpoint, not a captioning one: fine-tune it "
                   "first with python -m pipelines.finetune_caption")
    proc = succeeds(caption, ["--checkpoint", models / "captioner", SAMPLE_IMAGE], capsys)
    assert proc.stdout.startswith(SAMPLE_IMAGE + "\t")


def test_evaluate_captions_given_a_tee_as_the_student(models, data, tmp_path, capsys):
    scenes, out = data["scenes"], tmp_path / "eval"
    argv = ["--references", scenes["captions_json"], "--images", scenes["images_dir"], "--no-meteor",
            "--output", out]
    tee = models / "tee"
    assert_refused(cli("evaluate_captions", "--checkpoint", tee, *argv),
                   f"evaluate_captions: error: --checkpoint {tee} is a TEE (region feature extractor), not a MiniVLM "
                   "student: pass a pipelines.finetune_caption output", out)
    succeeds(evaluate_captions, ["--checkpoint", models / "captioner", *argv], capsys)
    assert (out / "predictions.jsonl").exists()


def test_evaluate_tee_given_a_student(models, data, tmp_path, capsys):
    scenes, out = data["scenes"], tmp_path / "eval"
    argv = ["--images", scenes["images_csv"], "--annotations", scenes["boxes_csv"], "--output", out]
    student = models / "captioner"
    assert_refused(cli("evaluate_tee", "--tee", student, *argv),
                   f"evaluate_tee: error: --tee {student} is a MiniVLM student (captioning checkpoint), not a TEE", out)
    succeeds(evaluate_tee, ["--tee", models / "tee", *argv], capsys)
    assert json.loads((out / "tee_eval.json").read_text())["images"] == 3


# ---- the old spellings still work ---------------------------------------------------------------

def test_caption_old_decoding_flags_are_aliases(models, capsys):
    ckpt = ["--checkpoint", models / "captioner", SAMPLE_IMAGE]
    new = succeeds(caption, [*ckpt, "--num-beams", "2", "--max-new-tokens", "6"], capsys).stdout
    old = succeeds(caption, [*ckpt, "--beam-size", "2", "--max-length", "6"], capsys).stdout
    shorter = succeeds(caption, [*ckpt, "--num-beams", "2", "--max-new-tokens", "3"], capsys).stdout
    assert new == old != shorter  # the old names set the same decoding (and the length is not ignored)


def test_evaluate_captions_old_decoding_flags_are_aliases(models, data, tmp_path, capsys):
    scenes = data["scenes"]
    argv = ["--checkpoint", models / "captioner", "--references", scenes["captions_json"], "--images",
            scenes["images_dir"], "--no-meteor"]
    succeeds(evaluate_captions, [*argv, "--output", tmp_path / "new", "--num-beams", "2", "--max-new-tokens", "6"],
             capsys)
    succeeds(evaluate_captions, [*argv, "--output", tmp_path / "old", "--beam-size", "2", "--max-length", "6"],
             capsys)
    new, old = (json.loads((tmp_path / d / "caption_eval.json").read_text()) for d in ("new", "old"))
    assert new["decoding"] == old["decoding"] == {"beam_size": 2, "greedy": False, "max_length": 6}
    assert (tmp_path / "new" / "predictions.jsonl").read_text() == (tmp_path / "old" / "predictions.jsonl").read_text()


def test_evaluate_tee_json_file_is_the_old_output(models, data, tmp_path, capsys):
    scenes = data["scenes"]
    argv = ["--tee", models / "tee", "--images", scenes["images_csv"], "--annotations", scenes["boxes_csv"]]
    succeeds(evaluate_tee, [*argv, "--json", tmp_path / "old.json"], capsys)
    succeeds(evaluate_tee, [*argv, "--output", tmp_path / "new"], capsys)
    old, new = (json.loads(p.read_text()) for p in (tmp_path / "old.json", tmp_path / "new" / "tee_eval.json"))
    # the same result, only its timing differs (compared as text: an untrained TEE's mAP may be NaN)
    assert json.dumps({**old, "seconds": 0}, sort_keys=True) == json.dumps({**new, "seconds": 0}, sort_keys=True)
    both = cli("evaluate_tee", *argv, "--output", tmp_path / "x", "--json", tmp_path / "x.json")
    assert_refused(both, "evaluate_tee: error: argument --json: not allowed with argument --output", tmp_path / "x")
