"""Every output folder opens with Hugging Face datasets as it is (its README.md card declares
the tables), and the corpus keeps each image's attribution."""
import csv
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import build_corpus, extract_features, pseudo_label
from schemas import CORPUS
from schemas.base import NAME_KEY, VERSION_KEY
from schemas.io import iter_batches, read_table
from tests.conftest import SAMPLE_CSV

datasets = pytest.importorskip("datasets")  # the test extra declares it


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sample plus one row whose image is missing, labeled, extracted and joined."""
    root = tmp_path_factory.mktemp("cards")
    with open(SAMPLE_CSV, newline="") as f:
        rows = list(csv.DictReader(f))
    manifest = root / "images.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([*rows, {**rows[0], "ImageID": "0000missing00000"}])
    common = ["--runner", "DirectRunner", "--input", str(manifest), "--image-root", str(SAMPLE_CSV.parent / "images")]
    assert pseudo_label.run([*common, "--captioner", "tiny", "--tagger", "tiny", "--num-captions", "1",
                             "--num-beams", "1", "--max-new-tokens", "4", "--output", str(root / "labeled")]) == 0
    assert extract_features.run([*common, "--tee", "tiny", "--output", str(root / "extracted")]) == 0
    os.remove(root / "labeled" / "README.md")  # a run from before cards: still an input like any other
    assert build_corpus.run(["--runner", "DirectRunner", "--labels", str(root / "labeled" / "labels"),
                             "--features", str(root / "extracted" / "features"), "--val-fraction", "0.2",
                             "--output", str(root / "corpus")]) == 0
    return root, len(rows)


def _load(path, *config, tmp):
    return datasets.load_dataset(str(path), *config, cache_dir=str(tmp / "hf-cache"))


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_a_labeling_run_loads_labels_by_default_and_failures_by_name(tmp_path, runs):
    root, images = runs
    # the card was removed above for build_corpus: write the run again, now with its card
    out = root / "labeled-again"
    with open(SAMPLE_CSV, newline="") as f:
        assert len(list(csv.DictReader(f))) == images
    assert pseudo_label.run(["--runner", "DirectRunner", "--input", str(root / "images.csv"), "--image-root",
                             str(SAMPLE_CSV.parent / "images"), "--captioner", "tiny", "--tagger", "tiny",
                             "--num-captions", "1", "--num-beams", "1", "--max-new-tokens", "4",
                             "--output", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert card.startswith("---\n") and "config_name: failures" in card and "tiny-random" in card
    labels, failures = _load(out, tmp=tmp_path), _load(out, "failures", tmp=tmp_path)
    assert list(labels) == ["train"] and labels["train"].num_rows == images
    assert failures["train"].num_rows == 1 and failures["train"][0]["image_id"] == "0000missing00000"
    assert {"license", "author", "original_url"} <= set(labels["train"].column_names)


def test_a_features_run_loads_with_its_failures(tmp_path, runs):
    root, images = runs
    features = _load(root / "extracted", tmp=tmp_path)["train"]
    assert features.num_rows == images and "features" in features.column_names
    assert _load(root / "extracted", "failures", tmp=tmp_path)["train"].num_rows == 1
    assert "`license`, `author` and `original_url`" in (root / "extracted" / "README.md").read_text()


def test_the_corpus_loads_with_train_and_validation_splits_and_keeps_attribution(tmp_path, runs):
    root, images = runs
    corpus = _load(root / "corpus", tmp=tmp_path)
    assert set(corpus) == {"train", "validation"}
    assert corpus["train"].num_rows + corpus["validation"].num_rows == images  # the missing image has no rows
    rows = read_table(str(root / "corpus" / "shards"), CORPUS).to_pylist()
    assert all(r["schema_version"] == CORPUS.version for r in rows)
    assert {r["license"] for r in rows} >= {"https://creativecommons.org/publicdomain/zero/1.0/"}
    assert any(r["author"] == "Stefan van der Walt" for r in rows)


def test_a_version_1_corpus_stays_readable(tmp_path, runs):
    root, _ = runs
    (shard,) = [f for f in (root / "corpus" / "val").iterdir() if f.suffix == ".parquet"]
    table = pq.read_table(shard).drop_columns(["license", "author", "original_url"])
    old = table.replace_schema_metadata({NAME_KEY: b"corpus", VERSION_KEY: b"1"})
    (tmp_path / "val").mkdir()
    pq.write_table(old, tmp_path / "val" / "val-0-of-1.parquet")
    columns = ["image_id", "captions", "num_regions", "features", "feature_dim"]  # what the trainers read
    back = pa.Table.from_batches(list(iter_batches(str(tmp_path / "val"), CORPUS, columns=columns)))
    assert back.num_rows == old.num_rows and back.column("image_id").to_pylist() == old.column("image_id").to_pylist()


def test_overwrite_removes_our_card_and_never_a_users_readme(tmp_path):
    from pipelines.data import datacard

    ours = datacard.render('odd "title": with yaml: characters', {"labels": {"train": "labels/*.parquet"}}, ["x"],
                           tags=("pseudo_label",))
    assert ours.splitlines()[:5] == ["---", 'pretty_name: "odd \\"title\\": with yaml: characters"', "tags:",
                                     '- "minivlm"', '- "pseudo_label"']
    datacard.write(str(tmp_path), ours)
    assert datacard.remove(str(tmp_path)) and not (tmp_path / "README.md").exists()
    (tmp_path / "README.md").write_text("# my notes about this bucket\n- \"minivlm\"\n")
    assert not datacard.remove(str(tmp_path)) and (tmp_path / "README.md").exists()
    with pytest.raises(ValueError, match="at least one config"):
        datacard.render("t", {}, [])
