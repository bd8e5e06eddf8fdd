"""Retrieval and NLVR2 on a tiny student: the feature store, the heads and their losses, the four
commands with their bad inputs, exact resume and torchrun."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.heads import hardest_negatives, info_nce
from models.minivlm import MATCHED, POLLUTED_CAPTION, MiniVLM, build_student
from models.tee import load_tee
from pipelines.evaluate_nlvr2 import run as evaluate_nlvr2
from pipelines.evaluate_retrieval import run as evaluate_retrieval
from pipelines.finetune_nlvr2 import run as finetune_nlvr2
from pipelines.finetune_retrieval import run as finetune_retrieval
from pipelines.train.featurestore import FeatureStore
from pipelines.train.pretrain_data import ObjectiveConfig, PretrainCollate, Sample, iter_rows
from tests.conftest import REPO
from tests.test_student import write_corpus

LOOP = ["--batch-size", "8", "--lr", "2e-3", "--warmup-steps", "0", "--num-workers", "0", "--no-progress",
        "--log-every", "1"]


def _karpathy(path, rows, split="train", ghost=True):
    """One record per corpus row, its caption naming the region count (what the features carry)."""
    images = [{"filename": f"{r['image_id']}.jpg", "split": split,
               "sentences": [{"raw": f"an image with {r['num_regions']} regions"}, {"tokens": ["a", "thing"]}]}
              for r in rows]
    if ghost:
        images.append({"filename": "img99999.jpg", "split": split, "sentences": [{"raw": "no features"}]})
    path.write_text(json.dumps({"images": images, "dataset": "test"}))
    return str(path)


def _nlvr2(path, rows):
    """Statements about pairs of corpus rows: is the left one's region count larger?"""
    lines = []
    for k, (a, b) in enumerate(zip(rows, rows[1:] + rows[:1])):
        lines.append(json.dumps({"identifier": f"train-{k}-0-0", "sentence": "the left image has more regions",
                                 "label": str(a["num_regions"] > b["num_regions"]), "img0": a["image_id"],
                                 "img1": b["image_id"]}))
    lines.append(json.dumps({"identifier": "train-99-0-0", "sentence": "ghost", "label": "True",
                             "img0": "img99999", "img1": rows[0]["image_id"]}))  # an image without features
    lines.append("{not json")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    tee, _ = load_tee("tiny", cache_dir=str(root / "cache"))
    model, tok = build_student("tiny", tee, seed=0)
    model.save_pretrained(str(root / "pretrained"), tok)
    rows = write_corpus(root / "corpus", tee, rows=24, shards=2, val=0)
    karpathy = _karpathy(root / "karpathy.json", rows)
    nlvr2 = _nlvr2(root / "nlvr2.jsonl", rows)
    common = ["--init", str(root / "pretrained"), "--features", str(root / "corpus"), "--max-steps", "12", *LOOP]
    assert finetune_retrieval(["--train", karpathy, "--train-split", "train", "--output", str(root / "retrieval"),
                               *common]) == 0
    assert finetune_nlvr2(["--train", nlvr2, "--output", str(root / "nlvr2"), *common]) == 0
    return root, rows, karpathy, nlvr2


def _metrics(path):
    return [json.loads(line) for line in open(path / "metrics.jsonl")]


# ---- the feature store ---------------------------------------------------------------------

def test_feature_store_gives_back_the_rows_by_id_and_only_the_wanted_ones(chain):
    root, rows, _, _ = chain
    files = sorted(str(p) for p in (root / "corpus" / "shards").glob("*.parquet"))
    wanted = {rows[0]["image_id"], rows[5]["image_id"], "img99999"}
    store = FeatureStore(files, wanted)
    assert len(store) == 2 and rows[5]["image_id"] in store and rows[1]["image_id"] not in store
    assert store.get("img99999") is None and store.get(rows[1]["image_id"]) is None
    by_id = {r["image_id"]: r for r in iter_rows(files, columns=["image_id", "num_regions", "boxes", "features",
                                                                 "feature_dim", "region_names"])}
    got = store[rows[5]["image_id"]]
    want = by_id[rows[5]["image_id"]]
    assert np.array_equal(got["features"], want["features"]) and np.array_equal(got["boxes"], want["boxes"])
    assert got["num_regions"] == want["num_regions"] and got["region_names"] == want["region_names"]
    # A spawned DataLoader worker gets the store by pickling: the path travels, the rows are read back.
    again = pickle.loads(pickle.dumps(store))
    assert np.array_equal(again[rows[0]["image_id"]]["features"], store[rows[0]["image_id"]]["features"])
    directory = store.directory
    store.close()
    assert not os.path.exists(directory)


# ---- the heads ---------------------------------------------------------------------------

def test_hard_negatives_and_infonce_leave_out_pairs_that_say_the_same():
    sim = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.2, 0.6], [0.3, 0.95, 0.4]])
    same = torch.tensor([[True, True, False], [True, True, False], [False, False, True]])  # 0 and 1 say the same
    caption, image = hardest_negatives(sim, same)
    assert caption.tolist() == [2, 2, 1]  # image 0 may not take caption 1 (the same text as its own)
    assert image.tolist() == [2, 2, 1]
    everything_same = torch.ones(3, 3, dtype=torch.bool)
    assert hardest_negatives(sim, everything_same)[0].tolist() == [-1, -1, -1]
    loss, _ = info_nce(sim, same, torch.tensor(0.0))
    # by hand: rows and columns softmaxed over the pairs that are not the same text (plus their own)
    logits = sim.masked_fill(same & ~torch.eye(3, dtype=torch.bool), float("-inf"))
    target = torch.arange(3)
    expected = (torch.nn.functional.cross_entropy(logits, target)
                + torch.nn.functional.cross_entropy(logits.T, target)) / 2
    assert loss == pytest.approx(float(expected))


def test_the_matching_head_starts_as_the_contrastive_head_and_checkpoints_round_trip(chain):
    root, _, _, _ = chain
    model = MiniVLM.from_pretrained(str(root / "pretrained"))
    model.start_task("retrieval", 0.2)
    cls = torch.randn(5, model.config.hidden_size)
    c = model.contrastive(cls)
    assert torch.allclose(model.retrieval.match_score(cls), c[:, MATCHED] - c[:, POLLUTED_CAPTION], atol=1e-5)
    for task in ("retrieval", "nlvr2"):
        trained = MiniVLM.from_pretrained(str(root / task / "model"))
        assert trained.config.task == task and getattr(trained, task) is not None
        assert (trained.retrieval is None) == (task == "nlvr2")


def test_a_polluted_sample_never_gets_a_donor_with_the_same_text(chain):
    root, _, _, _ = chain
    model = MiniVLM.from_pretrained(str(root / "pretrained"))
    from models.minivlm import load_tokenizer

    tok = load_tokenizer(str(root / "pretrained"))
    collate = PretrainCollate(tok, model.config, ObjectiveConfig(mask_prob=0, polluted_caption=1.0, polluted_tags=0))
    d = model.config.region_feature_dim
    samples = [Sample(str(i), text, "tag", np.zeros((1, d), np.float32), np.zeros((1, 4), np.float32), i)
               for i, text in enumerate(["a dog", "A dog.", "a cat"])]
    labels = collate(samples)["contrastive_labels"].tolist()
    ids = collate(samples)["input_ids"]
    cat, dog = tok.convert_tokens_to_ids("cat"), tok.convert_tokens_to_ids("dog")
    assert labels == [POLLUTED_CAPTION] * 3
    assert ids[0, 2] == cat and ids[1, 2] == cat and ids[2, 2] == dog  # the two dogs only take the cat
    alike = [Sample(str(i), "a dog", "tag", np.zeros((1, d), np.float32), np.zeros((1, 4), np.float32), i)
             for i in range(3)]
    assert collate(alike)["contrastive_labels"].tolist() == [MATCHED] * 3  # nothing else to lend: matched


# ---- the commands ------------------------------------------------------------------------

def test_finetuning_writes_checkpoints_and_counts_items_without_features(chain):
    root, _, _, _ = chain
    for task, losses in (("retrieval", ("matching_loss", "embedding_loss")), ("nlvr2", ("nlvr2_loss",))):
        train = [r for r in _metrics(root / task) if r["split"] == "train"]
        assert len(train) == 12 and all(np.isfinite(r[k]) for r in train for k in losses)
        info = json.loads((root / task / "train_config.json").read_text())
        assert info["data"]["items_without_features"] == 1, info["data"]
    assert json.loads((root / "nlvr2" / "train_config.json").read_text())["data"]["malformed"] == 1
    # NLVR2 can learn "is the left region count larger" from the regions alone: the loss goes down.
    nl = [r["nlvr2_loss"] for r in _metrics(root / "nlvr2") if r["split"] == "train"]
    assert np.mean(nl[-4:]) < np.mean(nl[:4])


def test_evaluate_retrieval_full_equals_reranking_everything(chain, capsys):
    root, rows, karpathy, _ = chain
    out = root / "eval"
    args = ["--checkpoint", str(root / "retrieval"), "--data", karpathy, "--split", "train", "--features",
            str(root / "corpus"), "--output", str(out), "--pool", "10"]
    assert evaluate_retrieval([*args, "--rerank-k", "20"]) == 0
    printed = capsys.readouterr()
    report = json.loads((out / "retrieval_eval.json").read_text())
    assert report["images"] == 10 and report["captions"] == 20
    # re-ranking the whole pool is the full ranking
    assert report["reranked"] == {"i2t": report["full"]["i2t"], "t2i": report["full"]["t2i"]}
    for name in ("first_stage", "reranked", "full"):
        for direction in ("i2t", "t2i"):
            r = report[name][direction]
            assert 0 <= r["R@1"] <= r["R@5"] <= r["R@10"] <= 1
    assert set(report["ms_per_query"]) == {"reranked_i2t", "reranked_t2i"}  # the full matrix serves both ways
    full = report["full_ranking"]
    # seconds are rounded to 1 ms, ms per pair to 1e-4 ms: the same time within those roundings
    assert full["pairs"] == 10 * 20 and full["ms_per_pair"] * 200 / 1000 == pytest.approx(full["seconds"], abs=6e-4)
    assert "full ranking: one 10 x 20 matrix for both directions, 200 pairs" in printed.out
    assert "| full |" in printed.out and "| reranked |" in printed.out
    # the ghost image (no features) is counted when the pool reaches it; one caption each with --distinct-captions
    assert evaluate_retrieval([*args[:-2], "--pool", "0", "--distinct-captions", "--rerank-k", "3", "--no-full"]) == 0
    report = json.loads((out / "retrieval_eval.json").read_text())
    assert report["images_without_features"] == 1 and report["captions"] == report["images"] <= 24
    assert "full" not in report


def test_evaluate_nlvr2_judges_every_statement_with_features(chain, capsys):
    root, rows, _, nlvr2 = chain
    out = root / "nlvr2_eval"
    assert evaluate_nlvr2(["--checkpoint", str(root / "nlvr2"), "--data", nlvr2, "--features", str(root / "corpus"),
                           "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "24 of 25 statements judged (1 without features)" in printed.err and "| NLVR2 accuracy |" in printed.out
    report = json.loads((out / "nlvr2_eval.json").read_text())
    assert report["statements_scored"] == 24 and report["statements_without_features"] == 1
    assert report["malformed"] == 1 and 0 <= report["accuracy"] <= 1 and 0 <= report["consistency"] <= 1
    predictions = (out / "predictions.csv").read_text().splitlines()
    assert len(predictions) == 24 and all(p.split(",")[1] in ("True", "False") for p in predictions)


def test_checkpoints_of_another_task_are_one_line_exit_2(chain, capsys):
    root, _, karpathy, nlvr2 = chain
    features = ["--features", str(root / "corpus")]
    cases = [
        (evaluate_retrieval, ["--checkpoint", str(root / "nlvr2"), "--data", karpathy, "--split", "train", *features,
                              "--output", str(root / "x")], "is a nlvr2 MiniVLM checkpoint, not a retrieval one"),
        (evaluate_nlvr2, ["--checkpoint", str(root / "pretrained"), "--data", nlvr2, *features, "--output",
                          str(root / "x")], "is a pretraining MiniVLM checkpoint, not an NLVR2 one"),
        (finetune_nlvr2, ["--init", str(root / "retrieval"), "--train", nlvr2, *features, "--output", str(root / "x"),
                          "--max-steps", "1"], "is a retrieval MiniVLM checkpoint, not a pre-trained one"),
        (finetune_retrieval, ["--init", str(root / "pretrained"), "--train", karpathy, "--train-split", "val",
                              *features, "--output", str(root / "x"), "--max-steps", "1"], "no image with a caption"),
    ]
    for command, argv, message in cases:
        assert command(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err


def test_help_and_unknown_flags():
    for module in ("pipelines.finetune_retrieval", "pipelines.evaluate_retrieval", "pipelines.finetune_nlvr2",
                   "pipelines.evaluate_nlvr2"):
        proc = subprocess.run([sys.executable, "-m", module, "--bogus"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_retrieval_resume_ends_with_the_same_weights_as_an_uninterrupted_run(chain, tmp_path):
    root, _, karpathy, _ = chain

    def args(out, *extra):
        return ["--init", str(root / "pretrained"), "--train", karpathy, "--train-split", "train", "--features",
                str(root / "corpus"), "--output", str(out), "--max-steps", "4", *LOOP, "--checkpoint-every", "2",
                *extra]

    assert finetune_retrieval(args(tmp_path / "straight")) == 0
    assert finetune_retrieval(args(tmp_path / "resumed", "--stop-at", "2")) == 0
    assert finetune_retrieval(args(tmp_path / "resumed", "--resume")) == 0
    a, b = (MiniVLM.from_pretrained(str(tmp_path / d / "model")).state_dict() for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    losses = [[r["loss"] for r in _metrics(tmp_path / d)] for d in ("straight", "resumed")]
    assert losses[0] == losses[1] and len(losses[0]) == 4


@pytest.mark.slow
def test_torchrun_two_processes_finetune_nlvr2_with_a_store_per_rank(chain, tmp_path):
    root, _, _, nlvr2 = chain
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STAGE": "finetune_nlvr2", "PYTHON": sys.executable}
    args = ["--init", str(root / "pretrained"), "--train", nlvr2, "--features", str(root / "corpus"), "--output",
            str(out), "--max-steps", "3", "--batch-size", "4", "--warmup-steps", "0", "--num-workers", "1",
            "--no-progress", "--log-every", "1"]
    proc = subprocess.run(["bash", os.path.join(REPO, "scripts", "train_student.sh"), "2", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _metrics(out) if r["split"] == "train"] == [1, 2, 3]
    assert MiniVLM.from_pretrained(str(out / "model")).config.task == "nlvr2"


def test_validation_from_the_training_features_shares_their_store(chain, tmp_path, monkeypatch):
    root, _, _, nlvr2 = chain
    from pipelines.train import featurestore

    built = []
    monkeypatch.setattr(featurestore.FeatureStore, "__init__",
                        lambda self, *a, _init=featurestore.FeatureStore.__init__, **k: built.append(1) or _init(
                            self, *a, **k))
    assert finetune_nlvr2(["--init", str(root / "pretrained"), "--train", nlvr2, "--val", nlvr2, "--features",
                           str(root / "corpus"), "--output", str(tmp_path / "v"), "--max-steps", "2", *LOOP]) == 0
    val = [r for r in _metrics(tmp_path / "v") if r["split"] == "val"]
    assert len(val) == 1 and 0 <= val[0]["val_nlvr2_accuracy"] <= 1
    assert len(built) == 1  # one pass over the feature files serves training and validation
