"""The corpus join: counts for every way a row is not joined, the split, the shards,
determinism, version checks, float16 round trips, and the real CLIs end to end."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines import build_corpus as bc
from pipelines.beam import corpus
from schemas import CORPUS, FEATURES, LABELS, corpus_row, features_row, labels_row, read_table, region_features
from schemas.base import NAME_KEY, VERSION_KEY
from tests.conftest import REPO


def lab(image_id, sha="s0", *, width=40, height=30, caption=None, captioner="cap-1", tagger="tag-1"):
    return labels_row(image_id=image_id, source_uri=f"/img/{image_id}.jpg", sha256=sha, width=width, height=height,
                      captions=[{"text": caption or f"a photo of {image_id}", "score": -0.5}],
                      tags=[{"label": "/m/01", "name": "dog", "score": 0.9}], captioner=captioner, tagger=tagger,
                      teacher_params={"caption": {"num_beams": 1}})


def fea(image_id, sha="s0", *, width=40, height=30, n=2, dim=4, feats=None, extractor="tee-tiny-0"):
    seed = int.from_bytes(image_id.encode()[-4:].rjust(4, b"\0"), "big")
    feats = np.random.default_rng(seed).standard_normal((n, dim)) if feats is None else feats
    n = len(feats)
    return features_row(image_id=image_id, source_uri=f"/img/{image_id}.jpg", sha256=sha, width=width,
                        height=height, boxes=[[0.1, 0.1, 0.5, 0.6]] * n, scores=[0.5] * n, labels=["/m/01"] * n,
                        names=["dog"] * n, features=feats, extractor=extractor, extractor_source="tiny-random")


def write(folder, schema, rows, name="part-0.parquet", metadata=None):
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema.arrow)
    if metadata is not None:
        table = table.replace_schema_metadata(metadata)
    pq.write_table(table, folder / name)


def build(tmp_path, *flags, out="corpus", labels="in/labels", features="in/features"):
    argv = ["--labels", str(tmp_path / labels), "--features", str(tmp_path / features),
            "--output", str(tmp_path / out), *map(str, flags)]
    return bc.run(argv)


def outputs(out):
    train = read_table(str(out / "shards"), CORPUS)
    val = read_table(str(out / "val"), CORPUS)
    return train, val, json.loads((out / "run.json").read_text())


def test_every_way_a_row_is_not_joined_is_counted(tmp_path, capsys):
    labels = [lab(f"ok{i}") for i in range(5)]
    features = [fea(f"ok{i}") for i in range(5)]
    labels += [lab("mismatch", sha="aaa")]  # labels and features of different bytes
    features += [fea("mismatch", sha="bbb")]
    labels += [lab("labels-only")]
    features += [fea("features-only")]
    # Two labeling runs of one id: the row whose bytes the features have wins, not the smaller sha.
    labels += [lab("dup", sha="zz", caption="the right one"), lab("dup", sha="aa", caption="other bytes")]
    features += [fea("dup", sha="zz")]
    # Two feature rows of the same bytes (two extractors): one, the same one every run.
    labels += [lab("dup2")]
    features += [fea("dup2", extractor="tee-a"), fea("dup2", extractor="tee-b")]
    # Malformed: no image id; a features row whose values do not fill num_regions x feature_dim;
    # labels and features of the same bytes at different sizes.
    labels += [{**lab("x"), "image_id": ""}]
    bad = fea("short")
    labels += [lab("short")]
    features += [{**bad, "features": bad["features"][:-1]}]
    labels += [lab("sizes", width=40, height=30)]
    features += [fea("sizes", width=30, height=40)]
    write(tmp_path / "in/labels", LABELS, labels[:7], "part-a.parquet")
    write(tmp_path / "in/labels", LABELS, labels[7:], "part-b.parquet")
    write(tmp_path / "in/features", FEATURES, features)

    assert build(tmp_path, "--val-fraction", "0.3", "--shard-rows", "3") == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("build_corpus: 7 joined (") and "1 hash mismatches" in err[-1], err
    train, val, run = outputs(tmp_path / "corpus")
    c = run["counts"]
    assert run["job"] == "build_corpus" and run["status"] == "succeeded"
    assert (c["labels_rows"], c["features_rows"], c["image_ids"]) == (len(labels), len(features), 12)
    assert (c["joined"], c["hash_mismatches"], c["labels_without_features"], c["features_without_labels"],
            c["duplicate_ids"], c["malformed_rows"]) == (7, 1, 1, 1, 2, 3)
    assert (c["malformed_labels"], c["malformed_features"], c["malformed_pairs"]) == (1, 0, 2)
    assert c["train"] + c["val"] == 7 == train.num_rows + val.num_rows
    assert c["shards_train"] == math.ceil(c["train"] / 3) and c["shards_val"] == math.ceil(c["val"] / 3)
    rows = {r["image_id"]: r for r in [*train.to_pylist(), *val.to_pylist()]}
    assert sorted(rows) == sorted([f"ok{i}" for i in range(5)] + ["dup", "dup2"])
    assert rows["dup"]["captions"][0]["text"] == "the right one" and rows["dup"]["sha256"] == "zz"
    assert run["extractors"] == {"tee-tiny-0": 6, rows["dup2"]["extractor"]: 1}
    assert run["captioners"] == {"cap-1": 7} and run["taggers"] == {"tag-1": 7}
    assert any("mixes 2 extractors" in line for line in err)
    assert run["inputs"]["labels_files"] == 2 and run["options"]["shard_rows"] == 3
    for r in rows.values():
        assert r["split"] == corpus.split_of(r["image_id"], 0.3) and r["schema_version"] == CORPUS.version

    # The same inputs in another order: the same duplicate wins.
    write(tmp_path / "in2/labels", LABELS, labels[::-1])
    write(tmp_path / "in2/features", FEATURES, features[::-1])
    assert build(tmp_path, out="again", labels="in2/labels", features="in2/features") == 0
    again, _, _ = outputs(tmp_path / "again")
    assert {r["image_id"]: r["extractor"] for r in again.to_pylist()}["dup2"] == rows["dup2"]["extractor"]


def test_corpus_row_joins_and_refuses_inconsistent_rows():
    row = corpus_row(lab("a"), fea("a", n=3, dim=5), "val")
    assert row["split"] == "val" and row["num_regions"] == 3 and row["feature_dim"] == 5
    assert row["region_names"] == ["dog"] * 3 and row["captioner"] == "cap-1"
    table = CORPUS.to_table([row])
    assert region_features(table).shape == (3, 5) and region_features(table.to_pylist()[0]).shape == (3, 5)
    for labels, features, split, match in [
        (lab("a"), fea("a"), "test", "split"),
        (lab("a", sha="x"), fea("a", sha="y"), "train", "different files"),
        (lab("a"), fea("b"), "train", "joined with"),
        (lab("a", width=41), fea("a"), "train", "width"),
        (lab("a"), {**fea("a"), "scores": np.zeros(1, np.float32)}, "train", "scores"),
        (lab("a"), {**fea("a"), "extractor": ""}, "train", "extractor"),
        ({**lab("a"), "captions": None}, fea("a"), "train", "captions"),
    ]:
        with pytest.raises(ValueError, match=match):
            corpus_row(labels, features, split)


def test_float16_features_survive_the_join_bit_for_bit(tmp_path):
    special = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, 1 / 3, 2.5e-5, 1000.5], np.float16)
    rng = np.random.default_rng(7)
    feats = {f"i{k}": np.concatenate([special, rng.standard_normal(16).astype(np.float16)]).reshape(3, 8)
             for k in range(4)}
    write(tmp_path / "in/labels", LABELS, [lab(k) for k in feats])
    write(tmp_path / "in/features", FEATURES, [fea(k, feats=v) for k, v in feats.items()])
    assert build(tmp_path, "--val-fraction", "0") == 0
    train, val, _ = outputs(tmp_path / "corpus")
    assert val.num_rows == 0 and train.num_rows == 4
    assert not (tmp_path / "corpus" / "val").exists()
    for i, image_id in enumerate(train.column("image_id").to_pylist()):
        got = region_features(train.slice(i, 1))
        assert got.dtype == np.float16 and got.view(np.uint16).tolist() == feats[image_id].view(np.uint16).tolist()


def test_batch_rows_reads_features_of_sliced_batches():
    rows = [fea("a", n=1, dim=2), fea("b", n=2, dim=2), fea("c", n=3, dim=2)]
    batch = pa.RecordBatch.from_pylist(rows, schema=FEATURES.arrow).slice(1, 2)
    got = corpus.batch_rows(batch)
    assert [r["image_id"] for r in got] == ["b", "c"]
    for r, want in zip(got, rows[1:]):
        assert r["features"].dtype == np.float16 and r["features"].tolist() == want["features"].tolist()


# ---- the split and the shards ----------------------------------------------------------

def test_val_split_is_a_stable_hash_of_image_id():
    ids = [f"img{i:05d}" for i in range(1000)]
    val = {i for i in ids if corpus.split_of(i, 0.1) == "val"}
    assert 60 <= len(val) <= 140
    assert val == {i for i in ids if corpus.split_of(i, 0.1, seed=0) == "val"}  # stable
    assert val != {i for i in ids if corpus.split_of(i, 0.1, seed=1) == "val"}  # the seed matters
    assert val <= {i for i in ids if corpus.split_of(i, 0.2) == "val"}  # a larger fraction only adds
    assert not {i for i in ids if corpus.split_of(i, 0.0) == "val"}


@pytest.fixture(scope="module")
def thousand(tmp_path_factory):
    """1000 synthetic images with labels and features, in several part files, joined once."""
    root = tmp_path_factory.mktemp("thousand")
    ids = [f"img{i:05d}" for i in range(1000)]
    for k in range(4):
        part = ids[k::4]
        write(root / "in/labels", LABELS, [lab(i) for i in part], f"part-{k}.parquet")
        write(root / "in/features", FEATURES, [fea(i, n=1, dim=2) for i in part], f"part-{k}.parquet")
    assert build(root, "--val-fraction", "0.1", "--shard-rows", "128", "--seed", "3") == 0
    return root, ids


def test_shards_hold_every_joined_row_once_in_shuffled_order(thousand):
    root, ids = thousand
    train, val, run = outputs(root / "corpus")
    c = run["counts"]
    assert (c["joined"], c["train"] + c["val"]) == (1000, 1000) and 60 <= c["val"] <= 140
    got = [*train.column("image_id").to_pylist(), *val.column("image_id").to_pylist()]
    assert sorted(got) == ids  # every row exactly once
    assert set(val.column("image_id").to_pylist()) == {i for i in ids if corpus.split_of(i, 0.1, 3) == "val"}
    assert set(train.column("split").to_pylist()) == {"train"} and set(val.column("split").to_pylist()) == {"val"}
    files = sorted((root / "corpus" / "shards").glob("*.parquet"))
    total = math.ceil(c["train"] / 128)
    assert [f.name for f in files] == [f"train-{i:05d}-of-{total:05d}.parquet" for i in range(total)]
    assert [f.name for f in (root / "corpus" / "val").glob("*.parquet")] == ["val-00000-of-00001.parquet"]
    sizes = []
    for index, f in enumerate(files):
        shard = read_table(str(f), CORPUS).column("image_id").to_pylist()
        sizes.append(len(shard))
        keys = [corpus.shuffle_key(i, 3) for i in shard]
        assert keys == sorted(keys) and all(k % total == index for k in keys)
        assert shard != sorted(shard)  # shuffled within the shard, not in image_id order
    mean = c["train"] / total
    assert all(abs(s - mean) <= 5 * math.sqrt(mean) for s in sizes), sizes  # binomial spread
    assert (c["shard_rows_min"], c["shard_rows_max"]) == (min([*sizes, c["val"]]), max([*sizes, c["val"]]))
    assert c["shards_train"] == total and c["shards_val"] == 1


def test_same_inputs_and_seed_give_the_same_files(thousand):
    root, _ = thousand
    assert build(root, "--val-fraction", "0.1", "--shard-rows", "128", "--seed", "3", out="same") == 0
    first = sorted(p.relative_to(root / "corpus") for p in (root / "corpus").rglob("*.parquet"))
    second = sorted(p.relative_to(root / "same") for p in (root / "same").rglob("*.parquet"))
    assert first == second
    assert all((root / "corpus" / p).read_bytes() == (root / "same" / p).read_bytes() for p in first)
    assert build(root, "--val-fraction", "0.1", "--shard-rows", "128", "--seed", "4", out="other") == 0
    a = read_table(str(root / "corpus" / "shards"), CORPUS).column("image_id").to_pylist()
    b = read_table(str(root / "other" / "shards"), CORPUS).column("image_id").to_pylist()
    assert a != b


def test_read_back_notices_files_that_disagree_with_the_counts(thousand, tmp_path):
    root, _ = thousand
    _, _, run = outputs(root / "corpus")
    per_split = {"train": run["counts"]["train"], "val": run["counts"]["val"]}
    found, problems = corpus.read_back(str(root / "corpus"), per_split, 128)
    assert not problems and found["counts"]["train_in_files"] == per_split["train"]
    found, problems = corpus.read_back(str(root / "corpus"), {**per_split, "val": per_split["val"] + 1}, 128)
    assert problems == [f"val shards hold {per_split['val']} rows, the job joined {per_split['val'] + 1}"]
    _, problems = corpus.read_back(str(root / "corpus"), per_split, 64)
    assert any("shard files, expected" in p for p in problems)


# ---- refusing bad inputs and outputs ---------------------------------------------------

def _one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("build_corpus: error: "), err
    return err[0]


def test_region_attributes_reach_the_corpus_and_version_1_features_still_join(tmp_path):
    """A TEE with an attribute head writes features v2 with attributes; the corpus carries them as
    region_attributes. Features written before (v1, no such columns) join on, their attributes null."""
    v1_schema = pa.schema([f for f in FEATURES.fields if f.name not in ("attributes", "attribute_scores")],
                          metadata={NAME_KEY: b"features", VERSION_KEY: b"1"})
    old = {k: v for k, v in fea("a").items() if k in v1_schema.names}
    (tmp_path / "in/features").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{**old, "schema_version": 1}], schema=v1_schema),
                   tmp_path / "in/features" / "part-0.parquet")
    new = features_row(**{**{k: v for k, v in fea("b").items() if k not in (
        "num_regions", "feature_dim", "schema_version", "extracted_at", "attributes", "attribute_scores")},
        "boxes": [[0.1, 0.1, 0.5, 0.6]] * 2, "features": np.ones((2, 4)),
        "attributes": [["blue", "small"], []], "attribute_scores": [[0.9, 0.7], []]})
    write(tmp_path / "in/features", FEATURES, [new], "part-1.parquet")
    write(tmp_path / "in/labels", LABELS, [lab("a"), lab("b")])
    assert build(tmp_path, "--val-fraction", "0") == 0
    train, _, _ = outputs(tmp_path / "corpus")
    got = {r["image_id"]: r["region_attributes"] for r in train.to_pylist()}
    assert got == {"a": None, "b": [["blue", "small"], []]}


def test_a_features_table_of_an_unknown_version_is_refused(tmp_path, capsys):
    write(tmp_path / "in/labels", LABELS, [lab("a")])
    write(tmp_path / "in/features", FEATURES, [fea("a")], "part-0.parquet")
    write(tmp_path / "in/features", FEATURES, [fea("b")], "part-1.parquet",
          metadata={NAME_KEY: b"features", VERSION_KEY: b"99"})
    assert build(tmp_path) == 2
    line = _one_line(capsys)
    assert "part-1.parquet has schema version 99; this release reads 2, 1" in line and "--features" in line
    assert not (tmp_path / "corpus").exists()


@pytest.mark.parametrize("case,flags,match", [
    ("swapped", [], "--features {tmp}/in/labels is a labels table, not a features table"),
    ("missing", [], "no Parquet files there (did you mean --labels"),
    ("fine", ["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    ("fine", ["--val-fraction", "-0.1"], "--val-fraction must be in [0, 1)"),
    ("fine", ["--shard-rows", "0"], "--shard-rows must be >= 1"),
])
def test_bad_inputs_and_flags_exit_2_with_one_line(tmp_path, capsys, case, flags, match):
    write(tmp_path / "in/labels", LABELS, [lab("a")])
    write(tmp_path / "in/features", FEATURES, [fea("a")])
    if case == "swapped":
        assert build(tmp_path, *flags, features="in/labels") == 2
    elif case == "missing":
        assert build(tmp_path, *flags, labels="in") == 2
    else:
        assert build(tmp_path, *flags) == 2
    assert match.format(tmp=tmp_path) in _one_line(capsys)
    assert not (tmp_path / "corpus").exists()


def test_an_existing_corpus_is_refused_unless_overwrite(tmp_path, capsys):
    write(tmp_path / "in/labels", LABELS, [lab("a"), lab("b")])
    write(tmp_path / "in/features", FEATURES, [fea("a"), fea("b")])
    assert build(tmp_path, "--shard-rows", "1", "--val-fraction", "0") == 0
    assert len(list((tmp_path / "corpus" / "shards").glob("*.parquet"))) == 2
    capsys.readouterr()
    assert build(tmp_path) == 2
    assert "already holds a corpus" in _one_line(capsys)
    assert build(tmp_path, "--overwrite", "--val-fraction", "0") == 0  # one shard now: no stale files left
    assert [p.name for p in (tmp_path / "corpus" / "shards").glob("*.parquet")] == ["train-00000-of-00001.parquet"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "run.json").write_text(json.dumps({"job": "pseudo_label"}))
    capsys.readouterr()
    assert build(tmp_path, "--overwrite", out="other") == 2
    assert "holds a pseudo_label run" in _one_line(capsys) and (tmp_path / "other" / "run.json").exists()


# ---- the real jobs, end to end ---------------------------------------------------------

def _cli(module, *args):
    cmd = [sys.executable, "-m", module, *map(str, args)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_whole_chain_on_the_sample_label_extract_join_train(tmp_path):
    labeled, extracted, out = tmp_path / "labeled", tmp_path / "extracted", tmp_path / "corpus"
    _cli("pipelines.pseudo_label", "--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny",
         "--output", labeled, "--limit", 8, "--num-captions", 1, "--num-beams", 1, "--max-new-tokens", 5)
    _cli("pipelines.extract_features", "--runner", "DirectRunner", "--tee", "tiny", "--output", extracted,
         "--limit", 8)
    proc = _cli("pipelines.build_corpus", "--runner", "DirectRunner", "--labels", labeled / "labels",
                "--features", extracted / "features", "--output", out, "--val-fraction", "0.25",
                "--shard-rows", "3")
    assert proc.stderr.strip().splitlines()[-1].startswith("build_corpus: 8 joined")
    train, val, run = outputs(out)
    labels = read_table(str(labeled / "labels"), LABELS)
    features = read_table(str(extracted / "features"), FEATURES)
    rows = {r["image_id"]: r for r in [*train.to_pylist(), *val.to_pylist()]}
    assert sorted(rows) == sorted(labels.column("image_id").to_pylist()) and len(rows) == 8
    assert run["status"] == "succeeded" and run["counts"]["joined"] == 8 and run["counts"]["malformed_rows"] == 0
    extractor = json.loads((extracted / "run.json").read_text())["tee"]["extractor_id"]
    assert run["extractors"] == {extractor: 8}
    by_id = {r["image_id"]: r for r in features.to_pylist()}
    for image_id, row in rows.items():
        assert row["sha256"] == by_id[image_id]["sha256"] and row["region_labels"] == by_id[image_id]["labels"]
        assert row["split"] == corpus.split_of(image_id, 0.25)
    for table in (train, val):
        for i in range(table.num_rows):
            image_id = table.column("image_id")[i].as_py()
            j = features.column("image_id").to_pylist().index(image_id)
            assert region_features(table.slice(i, 1)).tobytes() == region_features(features.slice(j, 1)).tobytes()
    # ... and the student trains on it: the whole chain, label -> features -> corpus -> 30 steps
    ckpt = tmp_path / "student"
    _cli("pipelines.train_student", "--corpus", out, "--tee", "tiny", "--init", "tiny", "--output", ckpt,
         "--max-steps", 30, "--batch-size", 4, "--lr", "3e-3", "--warmup-steps", 3, "--log-every", 1,
         "--checkpoint-every", 15, "--eval-every", 15, "--num-workers", 0, "--no-progress")
    rows = [json.loads(ln) for ln in (ckpt / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    assert [r["step"] for r in rows if r["split"] == "val"] == [15, 30]
    assert (ckpt / "model" / "model.safetensors").exists() and (ckpt / "model" / "tokenizer.json").exists()


@pytest.mark.slow
def test_multi_processing_direct_runner(thousand, tmp_path):
    # Worker processes must unpickle the DoFns: catches state Dataflow would choke on.
    root, _ = thousand
    proc = _cli("pipelines.build_corpus", "--direct_running_mode", "multi_processing", "--direct_num_workers", 2,
                "--labels", root / "in/labels", "--features", root / "in/features", "--output", tmp_path / "c",
                "--val-fraction", "0.1", "--shard-rows", "128", "--seed", "3")
    assert "1000 joined" in proc.stderr
    for p in (root / "corpus").rglob("*.parquet"):
        assert (tmp_path / "c" / p.relative_to(root / "corpus")).read_bytes() == p.read_bytes()


@pytest.mark.slow
def test_dataflow_dry_run_translates_offline(tmp_path):
    write(tmp_path / "in/labels", LABELS, [lab("a")])
    write(tmp_path / "in/features", FEATURES, [fea("a")])
    proc = _cli("pipelines.build_corpus", "--runner", "DataflowRunner", "--project", "my-project",
                "--region", "us-central1", "--temp_location", "gs://example-bucket/tmp",
                "--labels", tmp_path / "in/labels", "--features", tmp_path / "in/features",
                "--output", "gs://example-bucket/corpus", "--setup_file", "./setup.py", "--dry_run=True",
                "--no_auth")
    assert "dry run" in proc.stderr


@pytest.mark.parametrize("scheme", ["gs", "s3"])
def test_inputs_and_corpus_on_a_bucket(tmp_path, capsys, scheme):
    import fsspec

    from pipelines.beam import sinks
    from tests import servers

    write(tmp_path / "labels", LABELS, [lab(f"i{k}") for k in range(6)])
    write(tmp_path / "features", FEATURES, [fea(f"i{k}") for k in range(6)])
    server = servers.gcs_emulator("bkt") if scheme == "gs" else servers.s3_server()
    with server as env, servers.environ(env):
        fs = fsspec.filesystem(scheme)
        if scheme == "s3":
            fs.mkdir("bkt")
        for side in ("labels", "features"):
            fs.put(str(tmp_path / side / "part-0.parquet"), f"bkt/in/{side}/part-0.parquet")
        argv = ["--labels", f"{scheme}://bkt/in/labels", "--features", f"{scheme}://bkt/in/features",
                "--output", f"{scheme}://bkt/corpus", "--shard-rows", "2", "--val-fraction", "0.3"]
        assert bc.run(argv) == 0, capsys.readouterr().err
        train = read_table(f"{scheme}://bkt/corpus/shards", CORPUS)
        val = read_table(f"{scheme}://bkt/corpus/val", CORPUS)
        assert sorted([*train.column("image_id").to_pylist(), *val.column("image_id").to_pylist()]) == [
            f"i{k}" for k in range(6)]
        with fsspec.open(f"{scheme}://bkt/corpus/run.json", "r") as f:
            assert json.load(f)["status"] == "succeeded"
        capsys.readouterr()
        assert bc.run(argv) == 2 and "already holds a corpus" in _one_line(capsys)  # checked on the bucket
        with pytest.raises(RuntimeError):  # a shard that fails half-way is not published
            with sinks.publish(f"{scheme}://bkt/corpus/shards/broken.parquet") as f:
                f.write(b"PAR1" * 10)
                raise RuntimeError("worker died")
        assert not fs.exists("bkt/corpus/shards/broken.parquet")
