"""The MiniVLM student: model, persistence, pre-training data and objectives, the launcher."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from torch.utils.data import DataLoader

from models.minivlm import (
    MATCHED,
    POLLUTED_CAPTION,
    POLLUTED_TAGS,
    MiniVLM,
    build_student,
    bundled_bert_dir,
    list_students,
    register_student,
    tiny_name,
)
from models.tee import load_tee
from pipelines.train.pretrain_data import CorpusStream, ObjectiveConfig, PretrainCollate, Sample
from pipelines.train_student import run as train_student
from schemas import CORPUS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = "dog cat red blue ball grass sky tree man woman car road water boat bird plane".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tee, _ = load_tee("tiny", cache_dir=str(tmp_path_factory.mktemp("cache")))
    model, tok = build_student("tiny", tee)
    return tee, model, tok


def _row(i, tee_id, d, rng, split="train", n=None):
    n = n or int(rng.integers(10, 21))
    words = [WORDS[j] for j in rng.integers(0, len(WORDS), size=6)]
    return {
        "image_id": f"img{i:05d}", "sha256": f"{i:064x}", "width": 64, "height": 48, "split": split,
        "captions": [{"text": " ".join(words[:4]), "score": -1.0, "similarity": None},
                     {"text": " ".join(words[2:]), "score": -2.0, "similarity": None}],
        "tags": [{"label": f"/t/{w}", "name": w, "score": 0.9} for w in words[4:]],
        "num_regions": n, "boxes": [[0.1, 0.1, 0.5, 0.6]] * n, "region_scores": [0.5] * n,
        "region_labels": ["/c/x"] * n, "region_names": ["x"] * n,
        "features": rng.standard_normal(n * d).astype(np.float16).tolist(), "feature_dim": d,
        "extractor": tee_id, "captioner": "tiny-random/blip", "tagger": "tiny-random/siglip",
        "schema_version": CORPUS.version,
    }


def write_corpus(root, tee, rows=40, shards=3, val=6, seed=0):
    rng = np.random.default_rng(seed)
    d, eid = tee.config.feature_dim, tee.extractor_id()
    os.makedirs(root / "shards", exist_ok=True)
    os.makedirs(root / "val", exist_ok=True)
    all_rows = [_row(i, eid, d, rng) for i in range(rows)]
    for s in range(shards):
        part = all_rows[s::shards]
        pq.write_table(CORPUS.to_table(part), root / "shards" / f"train-{s:05d}-of-{shards:05d}.parquet")
    pq.write_table(CORPUS.to_table([_row(10_000 + i, eid, d, rng, "val") for i in range(val)]),
                   root / "val" / "val-00000-of-00001.parquet")
    return all_rows


# ---- model -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_students())
def test_every_registered_student_builds_and_runs(tiny, name):
    tee, _, _ = tiny
    model, tok = build_student(f"tiny:{name}", tee)
    assert model.config.init == f"tiny:{name}" and model.config.vocab_size == len(tok)
    d = tee.config.feature_dim
    samples = [Sample(image_id=f"i{k}", caption="a red ball on grass", tags="ball grass",
                      features=np.zeros((3, d), np.float32), boxes=np.tile([[0.1, 0.1, 0.5, 0.5]], (3, 1)).astype(
                          np.float32), seed=k) for k in range(2)]
    batch = PretrainCollate(tok, model.config, ObjectiveConfig())(samples)
    out = model(batch)
    assert torch.isfinite(out["mlm_loss"]) and torch.isfinite(out["contrastive_loss"])


def test_one_spelling_for_small_random_students():
    assert tiny_name("tiny") == tiny_name("tiny:minivlm-tiny") == "minivlm-tiny"
    assert tiny_name("random") == tiny_name("tiny:minivlm-l12-h384") == "minivlm-l12-h384"
    assert tiny_name("microsoft/MiniLM-L12-H384-uncased") is None and tiny_name("/some/dir") is None
    with pytest.raises(ValueError, match="unknown student 'tiny:nope'; registered: tiny:minivlm-l12-h384, tiny:"):
        tiny_name("tiny:nope")
    with pytest.raises(ValueError, match="already registered"):
        register_student("minivlm-tiny")
    with pytest.raises(ValueError, match="not divisible"):
        register_student("minivlm-broken", hidden_size=100, num_heads=3)
    assert "minivlm-broken" not in list_students()


def test_init_from_the_bundled_minilm_takes_its_architecture_and_weights(tiny):
    from transformers import BertModel

    tee, _, _ = tiny
    model, tok = build_student(bundled_bert_dir(), tee)
    assert (model.config.num_layers, model.config.hidden_size) == (6, 384)
    ref = BertModel.from_pretrained(bundled_bert_dir(), add_pooling_layer=False)
    assert torch.equal(model.bert.embeddings.word_embeddings.weight, ref.embeddings.word_embeddings.weight)
    assert model.mlm.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert tok.mask_token_id == model.config.mask_token_id


def test_save_load_round_trip_holds_tee_fusion_and_tokenizer(tiny, tmp_path):
    tee, model, tok = tiny
    model.save_pretrained(str(tmp_path / "s"), tok)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(tmp_path / "s"))
    loaded = MiniVLM.from_pretrained(str(tmp_path / "s"))
    assert loaded.config == model.config and loaded.tee.extractor_id() == tee.extractor_id()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_loading_weights_of_another_config_is_refused(tiny, tmp_path):
    tee, model, tok = tiny
    model.save_pretrained(str(tmp_path / "s"), tok)
    cfg = json.loads((tmp_path / "s" / "config.json").read_text())
    cfg["num_layers"] = 3
    (tmp_path / "s" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match its config"):
        MiniVLM.from_pretrained(str(tmp_path / "s"))


def test_padded_regions_and_tokens_do_not_change_the_output(tiny):
    _, model, tok = tiny
    model.eval()
    collate = PretrainCollate(tok, model.config, ObjectiveConfig(mask_prob=0, polluted_caption=0, polluted_tags=0))
    rng = np.random.default_rng(0)
    d = model.config.region_feature_dim
    short = Sample("a", "a dog", "dog", rng.standard_normal((3, d)).astype(np.float32),
                   np.full((3, 4), 0.2, np.float32), 1)
    long = Sample("b", "a red car on a long road near the sea", "car road", rng.standard_normal((9, d)).astype(
        np.float32), np.full((9, 4), 0.3, np.float32), 2)
    alone = model.encode(**{k: v for k, v in collate([short]).items() if k not in ("mlm_labels",
                                                                                  "contrastive_labels")})
    both = model.encode(**{k: v for k, v in collate([short, long]).items() if k not in ("mlm_labels",
                                                                                       "contrastive_labels")})
    t = model.config.text_length
    torch.testing.assert_close(alone[0, :t], both[0, :t], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone[0, t:t + 3], both[0, t:t + 3], rtol=1e-4, atol=1e-5)


# ---- objectives ------------------------------------------------------------------------

def test_masking_and_pollution_statistics_follow_the_config(tiny):
    _, model, tok = tiny
    c = model.config
    collate = PretrainCollate(tok, c, ObjectiveConfig())
    rng = np.random.default_rng(1)
    d = c.region_feature_dim
    chosen = candidates = 0
    kinds, labels = Counter(), Counter()
    for b in range(60):
        samples = [Sample(f"{b}-{i}", " ".join(rng.choice(WORDS, 12)), " ".join(rng.choice(WORDS, 5)),
                          np.zeros((2, d), np.float32), np.zeros((2, 4), np.float32), int(rng.integers(1 << 62)))
                   for i in range(16)]
        batch = collate(samples)
        ids, mlm = batch["input_ids"].numpy(), batch["mlm_labels"].numpy()
        real = (batch["text_mask"].numpy() == 1) & ~np.isin(
            np.where(mlm != -100, mlm, ids), [c.cls_token_id, c.sep_token_id, c.pad_token_id])
        candidates += real.sum()
        picked = mlm != -100
        chosen += picked.sum()
        kinds.update(np.where(ids[picked] == c.mask_token_id, "mask",
                              np.where(ids[picked] == mlm[picked], "kept", "random")).tolist())
        labels.update(batch["contrastive_labels"].tolist())
    assert abs(chosen / candidates - 0.15) < 0.015
    total = sum(kinds.values())
    assert abs(kinds["mask"] / total - 0.8) < 0.03
    assert abs(kinds["random"] / total - 0.1) < 0.025  # a random token can equal the original (rare)
    n = sum(labels.values())
    assert abs(labels[MATCHED] / n - 0.5) < 0.05
    assert abs(labels[POLLUTED_CAPTION] / n - 0.25) < 0.04 and abs(labels[POLLUTED_TAGS] / n - 0.25) < 0.04


def test_polluted_rows_really_carry_another_rows_text(tiny):
    _, model, tok = tiny
    collate = PretrainCollate(tok, model.config, ObjectiveConfig(mask_prob=0, polluted_caption=1.0,
                                                                  polluted_tags=0))
    d = model.config.region_feature_dim
    samples = [Sample(str(i), w, "tag", np.zeros((1, d), np.float32), np.zeros((1, 4), np.float32), i)
               for i, w in enumerate(["dog", "cat"])]
    batch = collate(samples)
    assert batch["contrastive_labels"].tolist() == [POLLUTED_CAPTION] * 2
    assert batch["input_ids"][0, 1] == tok.convert_tokens_to_ids("cat")
    assert batch["input_ids"][1, 1] == tok.convert_tokens_to_ids("dog")


# ---- data ------------------------------------------------------------------------------

def _ids_of(stream, batches, workers):
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers, collate_fn=lambda s: s)
    it = iter(loader)
    return [s.image_id for _ in range(batches) for s in next(it)]


@pytest.mark.parametrize("shards,workers", [(3, 2), (1, 2)])  # by shard, and by rows (fewer shards than readers)
def test_no_row_twice_per_epoch_across_ranks_and_workers(tiny, tmp_path, shards, workers):
    tee, model, _ = tiny
    write_corpus(tmp_path, tee, rows=24, shards=shards)
    files = sorted(str(p) for p in (tmp_path / "shards").glob("*.parquet"))
    seen = []
    for rank in range(2):
        stream = CorpusStream(files, feature_dim=model.config.region_feature_dim, max_regions=50,
                              shuffle_buffer=5, seed=0, batch_size=2, rank=rank, world=2)
        # each of the 4 readers has about 6 rows per epoch; take a little less than one epoch each
        ids = _ids_of(stream, 4, workers)
        seen += ids
    assert len(seen) == len(set(seen)), Counter(seen).most_common(3)


def test_each_epoch_covers_every_row_once_and_reshuffles(tiny, tmp_path):
    tee, model, _ = tiny
    write_corpus(tmp_path, tee, rows=20, shards=2)
    files = sorted(str(p) for p in (tmp_path / "shards").glob("*.parquet"))
    stream = CorpusStream(files, feature_dim=model.config.region_feature_dim, max_regions=50, shuffle_buffer=4,
                          seed=3, batch_size=5, rank=0, world=1)
    ids = _ids_of(stream, 8, 0)
    first, second = ids[:20], ids[20:]
    assert sorted(first) == sorted(second) == [f"img{i:05d}" for i in range(20)]
    assert first != second


def test_malformed_rows_are_skipped_not_fatal(tiny, tmp_path):
    tee, model, _ = tiny
    rng = np.random.default_rng(0)
    d = model.config.region_feature_dim
    rows = [_row(i, tee.extractor_id(), d, rng) for i in range(4)]
    rows[1]["features"] = rows[1]["features"][:-3]  # num_regions x feature_dim no longer holds
    rows[2]["captions"] = []
    (tmp_path / "shards").mkdir()
    pq.write_table(CORPUS.to_table(rows), tmp_path / "shards" / "s.parquet")
    stream = CorpusStream([str(tmp_path / "shards" / "s.parquet")], feature_dim=d, max_regions=50,
                          shuffle_buffer=1, seed=0, batch_size=1)
    ids = _ids_of(stream, 2, 0)
    assert sorted(ids) == ["img00000", "img00003"]
    assert stream.skipped == {"features do not match num_regions x feature_dim": 1, "no caption": 1}


# ---- the launcher ------------------------------------------------------------------------

def _args(corpus, out, steps, *extra):
    return ["--corpus", str(corpus), "--tee", "tiny", "--init", "tiny", "--output", str(out),
            "--max-steps", str(steps), "--batch-size", "4", "--lr", "1e-3", "--warmup-steps", "2",
            "--log-every", "1", "--checkpoint-every", "3", "--eval-every", "3", "--val-batches", "2",
            "--num-workers", "0", "--no-progress", *extra]


@pytest.fixture()
def corpus(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVLM_CACHE", str(tmp_path / "cache"))
    write_corpus(tmp_path / "corpus", tiny[0])
    return tmp_path / "corpus"


def _metrics(out):
    return [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]


def test_resumed_run_repeats_the_uninterrupted_losses(corpus, tmp_path):
    assert train_student(_args(corpus, tmp_path / "a", 6)) == 0
    assert train_student(_args(corpus, tmp_path / "b", 6, "--stop-at", "3")) == 0
    assert train_student(_args(corpus, tmp_path / "b", 6, "--resume")) == 0
    a = [r for r in _metrics(tmp_path / "a") if r["split"] == "train"]
    b = [r for r in _metrics(tmp_path / "b") if r["split"] == "train"]
    assert [r["step"] for r in b] == list(range(1, 7))
    for x, y in zip(a, b):
        for k in ("loss", "mlm_loss", "contrastive_loss", "mlm_accuracy", "contrastive_accuracy", "lr"):
            assert x[k] == y[k], (x["step"], k)
    keys = {"step", "loss", "mlm_loss", "contrastive_loss", "mlm_accuracy", "contrastive_accuracy", "lr",
            "samples_per_s"}
    assert keys <= set(a[0])
    val = [r for r in _metrics(tmp_path / "a") if r["split"] == "val"]
    assert [r["step"] for r in val] == [3, 6] and all(np.isfinite(r["val_loss"]) for r in val)
    student = MiniVLM.from_pretrained(str(tmp_path / "a" / "model"))
    assert student.tee is not None and student.config.init == "tiny"


def test_resume_with_another_config_is_refused(corpus, tmp_path, capsys):
    assert train_student(_args(corpus, tmp_path / "a", 3)) == 0
    assert train_student(_args(corpus, tmp_path / "a", 6, "--resume", "--max-regions", "20")) == 2
    assert "different model/config" in capsys.readouterr().err


def test_features_of_another_tee_are_refused(corpus, tmp_path, capsys):
    for f in (corpus / "shards").glob("*.parquet"):
        t = pq.read_table(f)
        t = t.set_column(t.schema.get_field_index("extractor"), "extractor",
                         [["tee-other-0000"] * t.num_rows])
        pq.write_table(t.replace_schema_metadata(CORPUS.arrow.metadata), f)
    assert train_student(_args(corpus, tmp_path / "a", 1)) == 2
    assert "--allow-extractor-mismatch" in capsys.readouterr().err
    assert train_student(_args(corpus, tmp_path / "b", 1, "--allow-extractor-mismatch")) == 0


def test_unknown_corpus_version_stops_with_a_clear_message(corpus, tmp_path, capsys):
    f = sorted((corpus / "shards").glob("*.parquet"))[0]
    t = pq.read_table(f)
    meta = dict(t.schema.metadata)
    meta[b"minivlm.schema_version"] = b"99"
    pq.write_table(t.replace_schema_metadata(meta), f)
    assert train_student(_args(corpus, tmp_path / "a", 1)) == 2
    assert "schema version 99" in capsys.readouterr().err


def test_loss_falls_over_30_steps(corpus, tmp_path):
    assert train_student(_args(corpus, tmp_path / "a", 30, "--lr", "3e-3")) == 0
    rows = [r for r in _metrics(tmp_path / "a") if r["split"] == "train"]
    first, last = np.mean([r["loss"] for r in rows[:5]]), np.mean([r["loss"] for r in rows[-5:]])
    assert last < 0.8 * first, (first, last)


@pytest.mark.slow
def test_torchrun_two_processes_train_and_checkpoint(corpus, tmp_path):
    out = tmp_path / "ddp"
    cmd = ["bash", os.path.join(REPO, "scripts", "train_student.sh"), "2", *_args(corpus, out, 3)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _metrics(out) if r["split"] == "train"] == [1, 2, 3]
    assert (out / "checkpoints" / "step-00000003" / "state.pt").exists()
    assert MiniVLM.from_pretrained(str(out / "model")).tee is not None


# ---- the default --init, as a user with a hub cache has it ----------------------------------

MINILM = "microsoft/MiniLM-L12-H384-uncased"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def _minilm_cache(tmp_path, state=None):
    """A replica of the default --init repo in a hub cache, its files as the real repo has them:
    config.json, vocab.txt, a '{}' tokenizer_config.json and only pickled weights (pytorch_model.bin)."""
    from transformers import BertConfig, BertModel

    from tests import hub_cache

    files = tmp_path / "minilm"
    files.mkdir()
    # The real repo's shape (vocab 30522, hidden 384, 12 heads, FFN 1536, 512 positions), 2 layers, not 12.
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512)
    torch.manual_seed(0)
    torch.save(state if state is not None else BertModel(config).state_dict(), files / "pytorch_model.bin")
    config.to_json_file(files / "config.json")
    (files / "vocab.txt").write_bytes((Path(bundled_bert_dir()) / "vocab.txt").read_bytes())
    (files / "tokenizer_config.json").write_text("{}")
    home = tmp_path / "hf"
    hub_cache.add_repo(home / "hub", MINILM, str(files))
    return hub_cache.env(home)


def _train_default_init(corpus, out, env):
    cmd = [sys.executable, "-m", "pipelines.train_student", "--corpus", str(corpus), "--tee", "tiny",
           "--output", str(out), "--max-steps", "2", "--num-workers", "0", "--no-progress"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **env})


@pytest.mark.slow
def test_the_default_init_loads_offline_from_a_hub_cache_without_unpickling_code(corpus, tmp_path):
    proc = _train_default_init(corpus, tmp_path / "run", _minilm_cache(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    student = MiniVLM.from_pretrained(str(tmp_path / "run" / "model"))
    c = student.config
    assert (c.init, c.num_layers, c.hidden_size, c.vocab_size) == (MINILM, 2, 384, 30522)


@pytest.mark.slow
def test_a_pickle_payload_in_the_default_init_is_refused_unrun(corpus, tmp_path):
    marker = tmp_path / "pwned"
    env = _minilm_cache(tmp_path, state={"embeddings.word_embeddings.weight": _Payload(marker)})
    proc = _train_default_init(corpus, tmp_path / "run", env)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert not marker.exists()  # transformers reads .bin weights with torch.load(weights_only=True)
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("train_student: error:"), proc.stderr
