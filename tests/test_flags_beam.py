"""Issue 16 for the Beam jobs (pseudo_label, extract_features, build_corpus): nothing guessed,
every mistake one line on stderr and exit 2 before anything is written, --resume only
continues the same run, --help answers without loading torch, Beam or transformers.

Each mistake goes through the real command in a subprocess, as a shell runs it, and is
followed by the corrected command into the same --output, which must succeed without
--overwrite. The jobs run with --limit 2 and tiny models; each command's runs are shared by
its tests through one module fixture (its setup carries their cost).
"""
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.help_probe import run_help

COMMANDS = ("pseudo_label", "extract_features", "build_corpus")
FAST = ["--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4"]
LABEL = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", *FAST, "--limit", "2"]
EXTRACT = ["--runner", "DirectRunner", "--tee", "tiny", "--limit", "2"]
RUNNER_TYPO = "unknown --runner DirectRuner; did you mean DirectRunner? (known: "
RESUME_ADVICE = "resume with the run's settings (its run.json options), or use another --output"


def cli(command, *args, env=None):
    return subprocess.run([sys.executable, "-m", f"pipelines.{command}", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})


def error_line(proc, command):
    """The one line a refused command prints: exit 2, nothing else on stderr, no traceback."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    prefix = f"{command}: error: "
    assert lines[0].startswith(prefix), lines
    return lines[0][len(prefix):]


def succeeded(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def snapshot(folder):
    """Every file under `folder` and its content's hash: what a refused command must leave alone."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def device_mistake():
    """(--device value this machine lacks, the line refusing it): cuda without CUDA, else one GPU too many."""
    import torch

    if not torch.cuda.is_available():
        return "cuda", "--device cuda: this machine has no CUDA device; use --device cpu (or auto)"
    n = torch.cuda.device_count()
    return f"cuda:{n}", f"--device cuda:{n}: this machine has {n} CUDA device(s)"


def refuse_all(command, mistakes, output):
    """Run each mistake against `output`; returns {name: (its line, what `output` held after it)}."""
    before = snapshot(output) if output.exists() else None
    results = {}
    for name, argv in mistakes.items():
        proc = cli(command, *argv, "--output", output)
        results[name] = (error_line(proc, command), snapshot(output) if output.exists() else None)
        assert results[name][1] == before, f"{name} changed {output}"
    return results


# ---- --help: fast, nothing heavy, defaults shown -----------------------------------------

@pytest.mark.parametrize("command", COMMANDS)
def test_help_loads_no_torch_beam_or_transformers_and_shows_defaults(command):
    probe, proc = run_help(command)
    assert probe == {"code": 0, "heavy": []}, proc.stderr[-2000:]
    text = " ".join(proc.stdout.split())  # help wraps at the terminal's width
    assert "(default: zstd)" in text and "must be an Apache Beam pipeline option" in text


def test_the_literals_in_flags_agree_with_their_sources():
    """flags.py repeats a few constants so --help imports nothing heavy; they must not drift."""
    from pipelines.beam import flags, imagejob, retry, sinks
    from pipelines.data import images, sources
    from teachers import DEFAULT_CAPTIONER, DEFAULT_TAGGER, DEFAULT_VOCAB
    from teachers.common import DTYPES

    assert (flags.INPUT_FORMATS, flags.DEFAULT_PATH_TEMPLATE) == (sources.KINDS, sources.DEFAULT_TEMPLATE)
    assert (flags.DEFAULT_MAX_PIXELS, flags.CODECS, flags.RETRY_MODES) == (images.DEFAULT_MAX_PIXELS, sinks.CODECS,
                                                                             retry.MODES)
    assert (flags.DEDUPE_MODES, flags.DTYPES) == (imagejob.DEDUPE_MODES, DTYPES)
    assert (flags.DEFAULT_CAPTIONER, flags.DEFAULT_TAGGER) == (DEFAULT_CAPTIONER, DEFAULT_TAGGER)
    assert os.path.samefile(flags.DEFAULT_VOCAB, DEFAULT_VOCAB)


def _shell_blocks(markdown):
    """The shell code blocks of a Markdown text (fences with no language, bash or sh)."""
    blocks, inside, language = [], None, ""
    for line in markdown.splitlines(keepends=True):
        if not line.startswith("```"):
            if inside is not None:
                inside.append(line)
        elif inside is None:
            inside, language = [], line[3:].strip()
        else:
            if language in ("", "bash", "sh"):
                blocks.append("".join(inside))
            inside = None
    return blocks


def _documented_commands():
    """(file, command, argv) of every Beam job command in a code block of the docs and the scripts."""
    blocks = []
    for path in [*sorted(glob.glob(str(REPO / "docs" / "*.md"))), str(REPO / "README.md")]:
        with open(path) as f:
            blocks += [(path, block) for block in _shell_blocks(f.read())]
    for path in sorted(glob.glob(str(REPO / "scripts" / "*.sh"))):
        with open(path) as f:
            blocks.append((path, f.read()))
    found = []
    for path, text in blocks:
        for command, rest in re.findall(r"python -m pipelines\.(pseudo_label|extract_features|build_corpus)\b(.*)",
                                        text.replace("\\\n", " ")):
            found.append((os.path.relpath(path, REPO), command, [a for a in shlex.split(rest, comments=True)
                                                                 if a != "$@"]))
    return found


def test_every_documented_beam_and_dataflow_flag_still_parses():
    """The strict parser refuses what Beam would have dropped; what the docs tell users to type
    (Dataflow's --sdk_container_image, --dataflow_service_options, --dry_run=True ...) must pass."""
    from pipelines import build_corpus, extract_features, pseudo_label

    parse = {"pseudo_label": pseudo_label.parse_args, "extract_features": extract_features.parse_args,
             "build_corpus": build_corpus.parse_args}
    documented = _documented_commands()
    assert any(path.endswith("dataflow_label.sh") for path, _, _ in documented)
    for path, command, argv in documented:
        parse[command](argv)  # a UsageError names the file's flag that no longer parses


# ---- pseudo_label ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def labeling(tmp_path_factory):
    """The labeling mistakes, the corrected command into the same --output, then the resume
    mistakes against that run, then the corrected resume."""
    root = tmp_path_factory.mktemp("labeling")
    out, vocab = root / "out", root / "vocab.csv"
    shutil.copy(REPO / "schemas" / "vocabularies" / "default_tags.csv", vocab)
    device, device_line = device_mistake()
    refused = refuse_all("pseudo_label", {
        "misspelled flag": [*LABEL, "--tag-treshold", "0.9"],
        "abbreviated flag": [*LABEL, "--tag-thresh", "0.9"],
        "misspelled Beam flag": [*LABEL, "--direct_num_worker", "1"],
        "runner typo": [*LABEL, "--runner", "DirectRuner"],
        "device this machine lacks": [*LABEL, "--device", device],
    }, out)
    right = [*LABEL, "--tag-threshold", "0.9", "--tag-vocab", vocab]
    first = succeeded(cli("pseudo_label", *right, "--direct_num_workers", "1", "--device", "cpu", "--output", out))
    resume_refused = refuse_all("pseudo_label", {
        "other teachers": [*right, "--resume", "--captioner", "tiny:git", "--tagger", "tiny:clip"],
        "a tag parameter left out": [*LABEL, "--tag-vocab", vocab, "--resume"],
        "another dtype": [*right, "--resume", "--dtype", "float32"],
    }, out)
    run = json.loads((out / "run.json").read_text())
    with open(vocab, "a") as f:  # the same file, edited: another vocabulary
        f.write("/m/zzz,zebra crossing\n")
    resume_refused.update(refuse_all("pseudo_label", {"an edited vocabulary": [*right, "--resume"]}, out))
    shutil.copy(REPO / "schemas" / "vocabularies" / "default_tags.csv", vocab)
    # How the work runs may change on a resume, and so may how far into the input it goes.
    resumed = succeeded(cli("pseudo_label", *right, "--resume", "--limit", "3", "--batch-size", "1",
                            "--dedupe", "shuffle", "--output", out))
    return {"out": out, "vocab": vocab, "refused": {**refused, **resume_refused}, "device_line": device_line,
            "first": first, "first_run": run, "resumed": resumed}


@pytest.mark.parametrize("mistake, line", [
    ("misspelled flag", "unknown flag --tag-treshold; did you mean --tag-threshold?"),
    ("abbreviated flag", "unknown flag --tag-thresh; did you mean --tag-threshold?"),
    ("misspelled Beam flag", "unknown flag --direct_num_worker; did you mean --direct_num_workers?"),
    ("runner typo", RUNNER_TYPO),
    ("device this machine lacks", None),
])
def test_labeling_mistakes_are_refused_before_anything_is_written(labeling, mistake, line):
    got, left = labeling["refused"][mistake]
    expected = line or labeling["device_line"]
    assert got.startswith(expected) if line == RUNNER_TYPO else got == expected
    assert left is None  # no --output, no run.json: the corrected command needs no --overwrite


def test_the_corrected_labeling_command_succeeds_without_overwrite(labeling):
    run = labeling["first_run"]
    assert run["status"] == "succeeded" and run["counts"]["labeled"] == 2
    assert run["options"]["tag_threshold"] == 0.9  # the flag is used, not dropped
    assert "Discarding unparseable args" not in labeling["first"].stderr


@pytest.mark.parametrize("mistake, line", [
    ("other teachers", "cannot resume: the captioner is tiny-random/git here but tiny-random/blip in the run in "
                       "{out}; " + RESUME_ADVICE),
    ("a tag parameter left out", "cannot resume: --tag-threshold is 0.1 here but 0.9 in the run in {out}; "
                                 + RESUME_ADVICE),
    ("another dtype", "cannot resume: --dtype is float32 here but auto in the run in {out}; " + RESUME_ADVICE),
    ("an edited vocabulary", "cannot resume: the tag vocabulary's sha256 is {edited} here but {sha} in the run in "
                             "{out}; " + RESUME_ADVICE),
])
def test_labeling_resume_refuses_another_run(labeling, mistake, line):
    got, _ = labeling["refused"][mistake]  # refuse_all checked the run was left as it was
    sha = labeling["first_run"]["teachers"]["tagger"]["vocab_sha256"]
    edited = got.split("sha256 is ")[-1].split(" ")[0]
    assert edited != sha
    assert got == line.format(out=labeling["out"], sha=sha, edited=edited)


def test_the_corrected_labeling_resume_continues_the_run(labeling):
    run = json.loads((labeling["out"] / "run.json").read_text())
    c = run["counts"]
    assert run["status"] == "succeeded" and (c["already_done"], c["labeled"]) == (2, 3)
    assert [h["status"] for h in run["history"]] == ["succeeded"]


# ---- extract_features -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def extraction(tmp_path_factory):
    """The extraction mistakes, the corrected command (with --resume on the empty --output),
    then the resume mistakes and the corrected resume."""
    from models.minivlm import build_student
    from models.tee import build_tee, load_tee

    root = tmp_path_factory.mktemp("extraction")
    tee, _ = load_tee("tiny")
    student, tok = build_student("tiny", tee, seed=0)
    student.save_pretrained(str(root / "student"), tok)
    other_tee = build_tee("tee-tiny", seed=1).save_pretrained(str(root / "other-tee"))
    out = root / "out"
    device, device_line = device_mistake()
    refused = refuse_all("extract_features", {
        "misspelled flag": [*EXTRACT, "--batchsize", "2"],
        "runner typo": [*EXTRACT, "--runner", "DirectRuner"],
        "device this machine lacks": [*EXTRACT, "--device", device],
        "a student as --tee": [*EXTRACT, "--tee", root / "student"],
    }, out)
    first = succeeded(cli("extract_features", *EXTRACT, "--batch-size", "2", "--device", "cpu", "--resume",
                          "--output", out))
    run = json.loads((out / "run.json").read_text())
    refused.update(refuse_all("extract_features", {
        "resume with another decode size": [*EXTRACT, "--resume", "--decode-size", "256"],
        "resume with another TEE": [*EXTRACT, "--resume", "--tee", root / "other-tee"],
    }, out))
    resumed = succeeded(cli("extract_features", *EXTRACT, "--resume", "--limit", "3", "--batch-size", "1",
                            "--read-retries", "1", "--output", out))
    return {"root": root, "out": out, "refused": refused, "device_line": device_line, "first": first,
            "first_run": run, "other_tee": other_tee, "resumed": resumed}


@pytest.mark.parametrize("mistake, line", [
    ("misspelled flag", "unknown flag --batchsize; did you mean --batch-size?"),
    ("runner typo", RUNNER_TYPO),
    ("device this machine lacks", None),
    ("a student as --tee", "--tee {root}/student is a MiniVLM student (pretraining checkpoint), not a TEE"),
])
def test_extraction_mistakes_are_refused_before_anything_is_written(extraction, mistake, line):
    got, left = extraction["refused"][mistake]
    expected = (line or extraction["device_line"]).format(root=extraction["root"])
    assert got.startswith(expected) if line == RUNNER_TYPO else got == expected
    assert left is None


def test_resume_on_an_empty_output_starts_a_new_run_with_a_note(extraction):
    note = f"extract_features: note: nothing to resume in {extraction['out']}: starting a new run"
    assert extraction["first"].stderr.splitlines().count(note) == 1
    run = extraction["first_run"]
    assert run["status"] == "succeeded" and run["history"] == [] and run["counts"]["extracted"] == 2


@pytest.mark.parametrize("mistake, line", [
    ("resume with another decode size", "cannot resume: --decode-size is 256 here but 512 in the run in {out}; "
                                        + RESUME_ADVICE),
    ("resume with another TEE", "cannot resume: the TEE is {other} here but {tee} in the run in {out}; "
                                + RESUME_ADVICE),
])
def test_extraction_resume_refuses_another_run(extraction, mistake, line):
    got, _ = extraction["refused"][mistake]
    tee = extraction["first_run"]["tee"]["extractor_id"]
    assert got == line.format(out=extraction["out"], other=extraction["other_tee"], tee=tee)


def test_the_corrected_extraction_resume_continues_the_run(extraction):
    run = json.loads((extraction["out"] / "run.json").read_text())
    assert run["status"] == "succeeded" and (run["counts"]["already_done"], run["counts"]["extracted"]) == (2, 3)


# ---- build_corpus ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def joining(labeling, extraction, tmp_path_factory):
    """The join's mistakes over the two runs above, then the corrected join."""
    labeled, extracted = labeling["out"], extraction["out"]
    right = ["--labels", labeled / "labels", "--features", extracted / "features"]
    out = tmp_path_factory.mktemp("joining") / "corpus"
    refused = refuse_all("build_corpus", {
        "misspelled flag": [*right, "--val-fracton", "0.5"],
        "runner typo": [*right, "--runner", "DirectRuner"],
        "a labeling run as --features": ["--labels", labeled / "labels", "--features", labeled],
        "a features run as --labels": ["--labels", extracted, "--features", extracted / "features"],
        "resume": [*right, "--resume"],
    }, out)
    joined = succeeded(cli("build_corpus", *right, "--val-fraction", "0.5", "--output", out))
    return {"labeled": labeled, "extracted": extracted, "out": out, "refused": refused, "joined": joined}


@pytest.mark.parametrize("mistake, line", [
    ("misspelled flag", "unknown flag --val-fracton; did you mean --val-fraction?"),
    ("runner typo", RUNNER_TYPO),
    ("a labeling run as --features", "--features {labeled} is a labeling run (pseudo_label), not a features run "
                                     "(extract_features)"),
    ("a features run as --labels", "--labels {extracted} is a features run (extract_features), not a labeling run "
                                   "(pseudo_label)"),
    ("resume", "--resume: the join is one-shot (every shard holds rows of every input), there is no run to "
               "continue; rerun it with --overwrite"),
])
def test_join_mistakes_are_refused_before_anything_is_written(joining, mistake, line):
    got, left = joining["refused"][mistake]
    expected = line.format(labeled=joining["labeled"], extracted=joining["extracted"])
    assert got.startswith(expected) if line == RUNNER_TYPO else got == expected
    assert left is None


def test_the_corrected_join_succeeds_without_overwrite(joining):
    run = json.loads((joining["out"] / "run.json").read_text())
    c = run["counts"]
    assert run["status"] == "succeeded" and run["options"]["val_fraction"] == 0.5
    assert c["joined"] == 3 and c["train"] + c["val"] == 3


# ---- a hub teacher that moved on ----------------------------------------------------------------

@pytest.mark.slow
def test_resume_refuses_a_hub_teacher_now_at_another_commit_and_takes_the_pinned_one(tmp_path):
    """The run resolved `--captioner <repo>` to commit A; the hub's main has moved to B since.
    Resuming would label the rest with B: refused, and resuming with <repo>@A continues."""
    from teachers import DEFAULT_CAPTIONER
    from tests import hub_cache

    home, out = tmp_path / "hf", tmp_path / "out"
    commits = hub_cache.build(home, [("captioner", "blip"), ("tagger", "siglip")])
    env = hub_cache.env(home)
    args = ["--runner", "DirectRunner", *FAST, "--limit", "1", "--output", out]
    succeeded(cli("pseudo_label", *args, env=env))
    a = commits[DEFAULT_CAPTIONER]
    files = tmp_path / "moved"
    shutil.copytree(hub_cache.repo_folder(home / "hub", DEFAULT_CAPTIONER) / "snapshots" / a, files)
    (files / "README.md").write_text("a new revision\n")
    b = hub_cache.add_repo(home / "hub", DEFAULT_CAPTIONER, str(files))
    before = snapshot(out)
    line = error_line(cli("pseudo_label", *args, "--resume", env=env), "pseudo_label")
    assert line == (f"cannot resume: the captioner is {DEFAULT_CAPTIONER}@{b} here but {DEFAULT_CAPTIONER}@{a} in "
                    f"the run in {out}; " + RESUME_ADVICE)
    assert snapshot(out) == before
    succeeded(cli("pseudo_label", *args, "--resume", "--limit", "2", "--captioner", f"{DEFAULT_CAPTIONER}@{a}",
                  env=env))
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["already_done"] == 1 and run["teachers"]["captioner"]["model"] == f"{DEFAULT_CAPTIONER}@{a}"
