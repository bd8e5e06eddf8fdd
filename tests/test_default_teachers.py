"""The default teachers, as a user with the hub runs them: a Hugging Face cache holding the real
repo ids (here the tiny replicas of those repos, laid out by tests/hub_cache.py), HF_HUB_OFFLINE=1,
and no --captioner / --tagger flags. Everything runs the real CLI in a subprocess."""
import json
import os

import pytest

from schemas import LABELS, read_table
from teachers import DEFAULT_CAPTIONER, DEFAULT_TAGGER
from tests import hub_cache
from tests.conftest import run_cli

BLIP, SIGLIP = DEFAULT_CAPTIONER, DEFAULT_TAGGER
GIT, CLIP = "microsoft/git-large-coco", "openai/clip-vit-large-patch14"
FAMILIES = [("captioner", "blip"), ("captioner", "git"), ("tagger", "siglip"), ("tagger", "clip")]
FAST = ["--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4"]  # greedy, short: only loading is tested
# What each repo's processor must be made of: the real classes, as the real repo's files name them.
CLASSES = {
    BLIP: ("BlipProcessor", "BertTokenizer", "BlipImageProcessor"),
    GIT: ("GitProcessor", "BertTokenizer", "CLIPImageProcessor"),
    SIGLIP: ("SiglipProcessor", "SiglipTokenizer", "SiglipImageProcessor"),
    CLIP: ("CLIPProcessor", "CLIPTokenizer", "CLIPImageProcessor"),
}


@pytest.fixture(scope="session")
def hub_home(tmp_path_factory):
    """HF_HOME with the four families' replicas cached under their real repo ids: (home, {repo: commit})."""
    home = tmp_path_factory.mktemp("hf_home")
    return home, hub_cache.build(home, FAMILIES)


def _labels(out) -> list[dict]:
    return read_table(str(out / "labels"), LABELS).to_pylist()


def _ran_with(out, captioner: str, tagger: str, commits: dict) -> None:
    """Every row and run.json name the repos pinned to the cached commit."""
    pinned = {"captioner": f"{captioner}@{commits[captioner]}", "tagger": f"{tagger}@{commits[tagger]}"}
    rows = _labels(out)
    assert len(rows) == 4
    for row in rows:
        assert (row["captioner"], row["tagger"]) == (pinned["captioner"], pinned["tagger"])
        assert row["captions"] and row["tags"] is not None
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "succeeded"
    assert {kind: run["teachers"][kind]["model"] for kind in pinned} == pinned


def test_the_default_teachers_from_a_hub_cache(hub_home, tmp_path):
    home, commits = hub_home
    out = tmp_path / "out"
    proc = run_cli("--runner", "DirectRunner", "--output", out, "--limit", "4", env=hub_cache.env(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _ran_with(out, BLIP, SIGLIP, commits)
    # What the job loaded is what the real repos ship: SigLIP's SentencePiece model, BLIP's WordPiece vocabulary.
    siglip = hub_cache.repo_folder(home / "hub", SIGLIP) / "snapshots" / commits[SIGLIP]
    blip = hub_cache.repo_folder(home / "hub", BLIP) / "snapshots" / commits[BLIP]
    assert (siglip / "spiece.model").is_file() and (blip / "vocab.txt").is_file()
    assert json.loads((siglip / "tokenizer_config.json").read_text())["tokenizer_class"] == "SiglipTokenizer"


def test_the_other_families_by_repo_id(hub_home, tmp_path):
    home, commits = hub_home
    out = tmp_path / "out"
    proc = run_cli("--runner", "DirectRunner", "--captioner", GIT, "--tagger", CLIP, "--output", out,
                   "--limit", "4", *FAST, env=hub_cache.env(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _ran_with(out, GIT, CLIP, commits)


@pytest.mark.parametrize("repo", list(CLASSES))
def test_each_cached_repo_loads_with_the_real_classes(hub_home, repo, monkeypatch):
    """In-process, through the same hub id -> cache -> from_pretrained path as the job's workers."""
    from huggingface_hub import constants

    import teachers
    from teachers import CaptionParams, TagParams

    home, commits = hub_home
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))  # read when called, set at import
    if repo in (BLIP, GIT):
        teacher = teachers.load_captioner(f"{repo}@{commits[repo]}", CaptionParams(1, 1, 3), device="cpu")
    else:
        teacher = teachers.load_tagger(f"{repo}@{commits[repo]}", TagParams(max_tags=2), device="cpu")
    processor = teacher.processor
    assert (type(processor).__name__, type(processor.tokenizer).__name__,
            type(processor.image_processor).__name__) == CLASSES[repo]


def test_missing_sentencepiece_stops_the_default_job_with_one_line(hub_home, tmp_path):
    """The reported failure: SigLIP's tokenizer without sentencepiece. Exit 2 before any work,
    one line naming the package (not transformers' multi-line ImportError, cut to its tail)."""
    home, _ = hub_home
    blocker = tmp_path / "no_sentencepiece"
    blocker.mkdir()
    # An interpreter where `import sentencepiece` fails as when it is not installed (find_spec is None too).
    (blocker / "sitecustomize.py").write_text("import sys\nsys.modules['sentencepiece'] = None\n")
    out = tmp_path / "out"
    proc = run_cli("--runner", "DirectRunner", "--output", out, "--limit", "4",
                   env={**hub_cache.env(home), "PYTHONPATH": os.pathsep.join(filter(None, [
                       str(blocker), os.environ.get("PYTHONPATH")]))})
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"pseudo_label: error: tagger {SIGLIP!r} needs the Python package 'sentencepiece' (pip install sentencepiece)")
    assert not out.exists()  # stopped before any work
