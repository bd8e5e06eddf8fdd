"""Cached (incremental) decoding gives exactly what re-encoding every step gives."""
import pytest
import torch

from models.captioning import (
    CachedStep,
    StudentCaptioner,
    UncachedStep,
    beam_search,
    greedy_search,
    region_inputs,
    tag_token_ids,
)
from models.minivlm import build_student
from tests.test_captioning import _contexts, tee  # noqa: F401  (tee: the tiny TEE fixture)

MAX_LENGTH = 8
REGIONS = [3, 11, 1, 20, 6]  # padded to 20 in one batch; one image with a single region
TAGS = [["dog", "grass"], [], ["person"], ["car", "road", "sky", "tree", "person", "dog"], ["tree"]]  # 2, 0, 1, 6 tokens


def shaken_captioner(tee_model, source: str = "tiny-random test", **overrides) -> StudentCaptioner:
    """A tiny student whose random weights are shaken (fixed seed) so that logits are far from
    uniform and [SEP] competes: some captions end early, some run to MAX_LENGTH, beams disagree."""
    model, tok = build_student("tiny", tee_model, seed=3, task="captioning", max_caption_tokens=12, max_tag_tokens=6,
                               max_regions=20, **overrides)
    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("tee."):
                p.add_(torch.randn(p.shape, generator=noise) * 0.1)
        model.mlm.predictions.bias[model.config.sep_token_id] += 2.0
    return StudentCaptioner(model.eval(), tok, source)


@pytest.fixture(scope="module")
def captioner(tee):  # noqa: F811  (the imported fixture)
    return shaken_captioner(tee)


def _steps(captioner, device="cpu"):
    c = captioner.config
    feats, boxes, _ = _contexts(c.region_feature_dim, REGIONS)
    tags = tag_token_ids(captioner.tokenizer, TAGS, c.max_tag_tokens)
    assert [len(t) for t in tags] == [2, 0, 1, 6, 1]
    model = captioner.model.to(device)
    return [make(model, tags, region_inputs(feats, boxes, c.region_feature_dim), captioner.banned)
            for make in (CachedStep, UncachedStep)]


def _same(cached, uncached):
    assert [words for words, _ in cached] == [words for words, _ in uncached]
    assert [score for _, score in cached] == pytest.approx([score for _, score in uncached], abs=1e-5)


@torch.no_grad()
def test_greedy_and_beam_search_are_the_same_with_and_without_the_cache(captioner):
    cached, uncached = _steps(captioner)
    n = len(REGIONS)
    greedy = greedy_search(cached, n, MAX_LENGTH)
    _same(greedy, greedy_search(uncached, n, MAX_LENGTH))
    beam = beam_search(cached, n, 5, MAX_LENGTH)
    _same(beam, beam_search(uncached, n, 5, MAX_LENGTH))
    _same(beam_search(cached, n, 1, MAX_LENGTH), greedy)  # one step object serves several searches
    lengths = [len(words) for words, _ in greedy + beam]
    assert min(lengths) < MAX_LENGTH - 1 and max(lengths) == MAX_LENGTH  # early [SEP]s and full-length captions
    assert any(g != b for (g, _), (b, _) in zip(greedy, beam))  # beam search found something greedy did not


@torch.no_grad()
def test_the_cached_step_gives_the_uncached_log_probs_through_any_reorder(captioner):
    cached, uncached = _steps(captioner)
    rows = torch.tensor([0, 0, 1, 3, 3, 4, 2])
    prefix = torch.zeros(len(rows), 0, dtype=torch.long)
    reorders = [torch.tensor([1, 0, 2, 4, 3, 5, 6]),  # swaps among hypotheses of one image (beam search)
                torch.tensor([0, 1, 2, 3, 4, 5, 6]),
                torch.tensor([0, 0, 2, 3, 3, 5, 6]),  # one hypothesis copied over its sibling
                torch.tensor([6, 1, 3]),  # hypotheses leave and change places (greedy search, and more)
                torch.tensor([2, 0])]
    for t, index in enumerate([None, *reorders]):
        if index is not None:
            cached.reorder(index)
            prefix, rows = prefix[index], rows[index]
        a, b = cached(prefix, rows), uncached(prefix, rows)  # (N, V)
        assert torch.equal(a.isinf(), b.isinf())
        assert torch.allclose(a[a.isfinite()], b[b.isfinite()], atol=1e-5, rtol=0)
        if t == 0:
            assert a[:, captioner.config.sep_token_id].isinf().all()  # no [SEP] as the first word
        assert a[:, captioner.banned].isinf().all()
        words = torch.randint(1000, 2000, (len(rows), 1), generator=torch.Generator().manual_seed(t))
        prefix = torch.cat([prefix, words], dim=1)
    with pytest.raises(ValueError, match="the cache holds"):  # a prefix the cache does not hold
        cached(prefix[:, :-2], rows)


def test_captioner_gives_the_same_captions_with_and_without_the_cache(captioner):
    feats, boxes, _ = _contexts(captioner.config.region_feature_dim, REGIONS, seed=1)
    for decoding in (dict(beam_size=5), dict(greedy=True)):
        on, off = (captioner.caption_regions(feats, boxes, TAGS, max_length=MAX_LENGTH, cache=cache, **decoding)
                   for cache in (True, False))
        assert [(c.text, c.tags) for c in on] == [(c.text, c.tags) for c in off]
        assert [c.score for c in on] == pytest.approx([c.score for c in off], abs=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@torch.no_grad()
def test_cached_decoding_on_cuda(captioner):
    cached, uncached = _steps(captioner, "cuda")
    try:
        n = len(REGIONS)
        greedy = greedy_search(cached, n, MAX_LENGTH)
        beams = beam_search(cached, n, 5, MAX_LENGTH)
        assert cached.device.type == "cuda" and len(greedy) == len(beams) == n
        _same(greedy, greedy_search(uncached, n, MAX_LENGTH))
        _same(beams, beam_search(uncached, n, 5, MAX_LENGTH))
    finally:
        captioner.model.to("cpu")
