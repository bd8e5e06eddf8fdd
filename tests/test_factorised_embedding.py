"""A factorised word embedding (MiniVLMConfig.embedding_rank): (V, r) table x (r, H) projection, the decoder tied."""
import json

import pytest
import torch

from models.captioning import beam_search, greedy_search
from models.minivlm import FactorisedEmbedding, MiniVLM, build_student, bundled_bert_dir
from pipelines.finetune_caption import run as finetune
from pipelines.train_student import run as train_student
from tests.test_cached_decoding import MAX_LENGTH, REGIONS, TAGS, _same, _steps, shaken_captioner
from tests.test_captioning import _contexts, _finetune_args, tee  # noqa: F401  (tee: the tiny TEE fixture)
from tests.test_student import write_corpus

RANK = 16
MINILM_RANK_128_ERROR = 0.5820  # ||W - E P^T||_F / ||W||_F of the bundled MiniLM-L6 embedding at rank 128


def fusion_params(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("tee."))


@pytest.fixture(scope="module")
def students(tee):  # noqa: F811
    full, tok = build_student("tiny", tee)
    factorised, _ = build_student("tiny", tee, embedding_rank=RANK)
    return full, factorised, tok


def test_parameters_fall_by_the_arithmetic(students):
    full, factorised, _ = students
    v, h = full.config.vocab_size, full.config.hidden_size
    assert fusion_params(full) - fusion_params(factorised) == v * h - (v * RANK + RANK * h)
    words = factorised.bert.embeddings.word_embeddings
    assert (words.table.weight.shape, words.projection.weight.shape) == ((v, RANK), (h, RANK))
    # no (V, H) matrix anywhere: not a parameter, not in the state dict
    assert not [n for n, p in factorised.named_parameters() if tuple(p.shape) in ((v, h), (h, v))]
    assert not [k for k, t in factorised.state_dict().items() if tuple(t.shape) in ((v, h), (h, v))]
    # random init: BERT's table (std 0.02, padding row zero); the product at the full embedding's scale
    assert words.table.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert not words.table.weight[factorised.config.pad_token_id].any()
    product = words.table.weight @ words.projection.weight.T
    assert product.std().item() == pytest.approx(0.02, rel=0.2)


def test_the_decoder_is_tied_to_the_factors(students):
    _, model, _ = students
    words, decoder = model.bert.embeddings.word_embeddings, model.mlm.predictions.decoder
    assert decoder.embedding is words and decoder.bias is model.mlm.predictions.bias
    assert [name for name, _ in decoder.named_parameters()] == ["bias"]  # no weight of its own
    h = torch.randn(5, model.config.hidden_size)
    p, e = words.projection.weight, words.table.weight  # (H, r), (V, r)
    assert torch.allclose(decoder(h), (h @ p) @ e.T + model.mlm.predictions.bias, atol=1e-6)
    # one storage: a gradient through the decoder reaches the embedding's factors
    model.zero_grad()
    model.mlm(h).sum().backward()
    assert words.table.weight.grad is not None and words.projection.weight.grad is not None
    model.zero_grad()


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    c = model.config
    ids = torch.randint(1000, 2000, (2, c.text_length), generator=g)
    r = 4
    hidden = model.encode(ids, torch.zeros_like(ids), torch.ones_like(ids),
                          torch.randn(2, r, c.region_feature_dim, generator=g),
                          torch.tensor([[0.1, 0.1, 0.6, 0.7]]).expand(2, r, 4), torch.ones(2, r))
    return model.mlm(hidden)


@torch.no_grad()
def test_save_and_load_give_identical_outputs(students, tmp_path):
    full, model, tok = students
    model.eval().save_pretrained(str(tmp_path / "s"), tok)
    loaded = MiniVLM.from_pretrained(str(tmp_path / "s"))
    assert loaded.config == model.config and loaded.config.embedding_rank == RANK
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert torch.equal(_outputs(model), _outputs(loaded))
    assert loaded.mlm.predictions.decoder.embedding is loaded.bert.embeddings.word_embeddings
    # a config saved before embedding_rank existed loads as the full embedding
    full.save_pretrained(str(tmp_path / "old"), tok)
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    del cfg["embedding_rank"]
    (tmp_path / "old" / "config.json").write_text(json.dumps(cfg))
    old = MiniVLM.from_pretrained(str(tmp_path / "old"))
    assert old.config.embedding_rank is None
    assert old.mlm.predictions.decoder.weight is old.bert.embeddings.word_embeddings.weight


def test_the_rank_is_checked(tee):  # noqa: F811
    for rank in (0, 65):
        with pytest.raises(ValueError, match="embedding_rank must be in"):
            build_student("tiny", tee, embedding_rank=rank)


@pytest.fixture(scope="module")
def minilm_embedding():
    from transformers import BertModel

    return BertModel.from_pretrained(bundled_bert_dir(), add_pooling_layer=False).embeddings.word_embeddings.weight


@torch.no_grad()
def test_svd_init_reproduces_the_pretrained_embedding_at_full_rank(minilm_embedding):
    w = minilm_embedding
    f = FactorisedEmbedding(w.shape[0], w.shape[1], w.shape[1])
    assert f.init_from(w) < 1e-6
    assert torch.allclose(f.table.weight @ f.projection.weight.T, w, atol=1e-5, rtol=0)
    ids = torch.tensor([[101, 2003, 1037, 3899, 102]])
    assert torch.allclose(f(ids), w[ids], atol=1e-5, rtol=0)


@torch.no_grad()
def test_svd_init_from_the_bundled_minilm_at_rank_128(tee, minilm_embedding):  # noqa: F811
    from transformers import BertModel

    model, _ = build_student(bundled_bert_dir(), tee, embedding_rank=128)
    info = model.embedding_init
    assert info["embedding_rank"] == 128 and info["relative_error"] == pytest.approx(MINILM_RANK_128_ERROR, abs=1e-3)
    words, w = model.bert.embeddings.word_embeddings, minilm_embedding.double()
    product = words.table.weight.double() @ words.projection.weight.double().T
    assert ((w - product).norm() / w.norm()).item() == pytest.approx(info["relative_error"], abs=1e-6)
    # the truncated SVD is the best rank-128 approximation: the residual is orthogonal to the product
    assert abs(((w - product) * product).sum().item()) < 1e-4 * w.norm().item() ** 2
    # everything else comes from the checkpoint unchanged
    ref = BertModel.from_pretrained(bundled_bert_dir(), add_pooling_layer=False)
    assert torch.equal(model.bert.encoder.layer[0].attention.self.query.weight,
                       ref.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(model.bert.embeddings.position_embeddings.weight, ref.embeddings.position_embeddings.weight)


@pytest.fixture(scope="module")
def captioner(tee):  # noqa: F811
    """As tests.test_cached_decoding's, with a factorised embedding."""
    return shaken_captioner(tee, "tiny-random factorised test", embedding_rank=RANK)


@torch.no_grad()
def test_cached_and_uncached_decoding_agree_on_a_factorised_student(captioner):
    cached, uncached = _steps(captioner)
    n = len(REGIONS)
    _same(greedy_search(cached, n, MAX_LENGTH), greedy_search(uncached, n, MAX_LENGTH))
    _same(beam_search(cached, n, 5, MAX_LENGTH), beam_search(uncached, n, 5, MAX_LENGTH))
    feats, boxes, _ = _contexts(captioner.config.region_feature_dim, REGIONS, seed=1)
    for decoding in (dict(beam_size=5), dict(greedy=True)):
        on, off = (captioner.caption_regions(feats, boxes, TAGS, max_length=MAX_LENGTH, cache=cache, **decoding)
                   for cache in (True, False))
        assert [(c.text, c.tags) for c in on] == [(c.text, c.tags) for c in off]
        assert [c.score for c in on] == pytest.approx([c.score for c in off], abs=1e-5)


def _train_args(corpus, out, *extra):
    return ["--corpus", str(corpus), "--tee", "tiny", "--init", "tiny", "--output", str(out), "--max-steps", "2",
            "--batch-size", "4", "--warmup-steps", "0", "--log-every", "1", "--checkpoint-every", "2",
            "--val-batches", "1", "--num-workers", "0", "--no-progress", *extra]


@pytest.fixture(scope="module")
def corpus(tee, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("factorised")
    write_corpus(root / "corpus", tee, rows=16, shards=1, val=4)
    return root / "corpus"


def test_train_student_refuses_a_rank_out_of_range_with_one_line(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIVLM_CACHE", str(tmp_path / "cache"))
    for rank, says in (("0", "--embedding-rank must be at least 1, not 0"),
                       ("64", "--embedding-rank 64 must be below the fusion's hidden size 64"),
                       ("512", "--embedding-rank 512 must be below the fusion's hidden size 256")):
        capsys.readouterr()
        extra = ["--fusion", "2x256"] if rank == "512" else []
        assert train_student(_train_args(corpus, tmp_path / "a", "--embedding-rank", rank, *extra)) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"train_student: error: {says}"), err
        assert not (tmp_path / "a").exists()


def test_pretraining_and_finetuning_keep_the_factorised_embedding(corpus, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MINIVLM_CACHE", str(tmp_path / "cache"))
    assert train_student(_train_args(corpus, tmp_path / "pre", "--embedding-rank", str(RANK))) == 0
    assert "word embedding factorised at rank 16: random" in capsys.readouterr().err
    run_info = json.loads((tmp_path / "pre" / "train_config.json").read_text())
    assert run_info["embedding_init"] == {"embedding_rank": RANK, "init": "random"}
    assert finetune(_finetune_args(tmp_path / "pre", corpus, tmp_path / "cap", 2)) == 0
    student = MiniVLM.from_pretrained(str(tmp_path / "cap" / "model"))
    assert student.config.embedding_rank == RANK and student.config.task == "captioning"
    assert isinstance(student.bert.embeddings.word_embeddings, FactorisedEmbedding)
