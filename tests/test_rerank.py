"""Caption reranking: the tagger's image-text model scores each caption against its image."""
import itertools
import json
import re

import numpy as np
import pytest
import torch

import teachers
from pipelines.beam.handlers import HandlerOptions, TeacherHandler, Work
from pipelines.data.sources import ImageRef
from tests.conftest import run_cli
from tests.imagegen import gradient
from tests.test_cli import _manifest_ids, _outputs

TINY = ["--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny"]
CAPTIONS = ["--num-captions", "3", "--num-beams", "3", "--max-new-tokens", "6"]
CAPTION_PARAMS = teachers.CaptionParams(num_captions=3, num_beams=3, max_new_tokens=6)
IMAGES = [gradient(64, 48), gradient(30, 90), np.full((40, 40, 3), 200, np.uint8)]
MEASURE = {"siglip": "siglip-sigmoid", "siglip2": "siglip-sigmoid", "siglip2-naflex": "siglip-sigmoid",
           "clip": "clip-cosine"}


def _work(image_id, pixels):
    return Work(ImageRef(image_id, None, 1), "0" * 64, pixels.shape[1], pixels.shape[0], pixels)


def _captioned(images=IMAGES):
    """Work items the tiny captioner has captioned, as they reach the tagger in the job."""
    handler = TeacherHandler("caption", "tiny", CAPTION_PARAMS, HandlerOptions(device="cpu"))
    batch = [_work(str(i), im) for i, im in enumerate(images)]
    return list(handler.run_inference(batch, handler.load_model()))


def _reranker(family, min_similarity=None):
    rerank = teachers.RerankParams(measure=MEASURE[family], min_similarity=min_similarity)
    handler = TeacherHandler("tag", f"tiny:{family}", teachers.TagParams(threshold=0.0, max_tags=3),
                             HandlerOptions(device="cpu"), rerank=rerank)
    return handler, handler.load_model()


def _direct_similarities(tagger, image, texts):
    """The measure recomputed from the model's own embedding functions, not the Tagger's code."""
    model, processor = tagger.model, tagger.processor
    with torch.no_grad():
        # pixel_values (+ SigLIP 2 NaFlex's pixel_attention_mask and spatial_shapes)
        img = model.get_image_features(**processor.image_processor(images=[image], return_tensors="pt")
                                       ).pooler_output[0].double()
        if tagger.sigmoid:  # SigLIP (2) text: lowercase, padded to full length, no attention mask, as trained
            enc = processor.tokenizer([t.lower() for t in texts], padding="max_length",
                                      max_length=model.config.text_config.max_position_embeddings,
                                      return_tensors="pt")
            txt = model.get_text_features(input_ids=enc["input_ids"]).pooler_output.double()
        else:
            enc = processor.tokenizer(texts, padding=True, return_tensors="pt")
            txt = model.get_text_features(input_ids=enc["input_ids"],
                                          attention_mask=enc["attention_mask"]).pooler_output.double()
        cos = (txt @ img) / (txt.norm(dim=-1) * img.norm())
        if tagger.sigmoid:
            return torch.sigmoid(cos * model.logit_scale.double().exp() + model.logit_bias.double()).tolist()
        return cos.tolist()


@pytest.mark.parametrize("family", ["siglip", "siglip2", "siglip2-naflex", "clip"])
def test_rerank_stores_the_models_similarity_best_first(family):
    captioned = _captioned()
    handler, tagger = _reranker(family)
    assert tagger.measure == MEASURE[family]
    out = list(handler.run_inference(captioned, tagger))
    low, high = teachers.MEASURES[tagger.measure]
    for before, after, image in zip(captioned, out, IMAGES):
        assert after.failure is None and after.tags  # tagging still happens in the same call
        assert sorted(c["text"] for c in after.captions) == sorted(c["text"] for c in before.captions)
        sims = [c["similarity"] for c in after.captions]
        assert sims == sorted(sims, reverse=True) and all(low <= s <= high for s in sims)
        expected = _direct_similarities(tagger, image, [c["text"] for c in after.captions])
        np.testing.assert_allclose(sims, expected, rtol=0, atol=1e-5)
    # the plain tagging call is unchanged by the rerank path
    assert [t for t, _ in tagger(IMAGES, texts=[[] for _ in IMAGES])] == tagger(IMAGES)


@pytest.mark.parametrize("family", ["siglip2", "siglip2-naflex"])
def test_siglip2_scores_captions_as_lowercase_text(family):
    """SigLIP 2 was trained on lowercase text: a caption's case does not change its score, though
    the fixed-resolution repos' Gemma tokenizer keeps case (the tagger lowercases)."""
    _, tagger = _reranker(family)
    (cased, lower), = tagger.similarities(IMAGES[:1], [["A Photo of a CAT", "a photo of a cat"]])
    assert cased == lower


def test_min_similarity_drops_captions_and_fails_images_left_with_none():
    captioned = _captioned()
    _, tagger = _reranker("siglip")
    sims = tagger.similarities(IMAGES, [[c["text"] for c in w.captions] for w in captioned])
    bests = sorted(max(s) for s in sims)
    bound = (bests[0] + bests[1]) / 2  # above the worst image's best caption only
    handler, _ = _reranker("siglip", min_similarity=bound)
    out = list(handler.run_inference(captioned, tagger))
    for w, s in zip(out, sims):
        if max(s) < bound:
            stage, error_type, message = w.failure
            assert (stage, error_type) == ("rerank", "LowCaptionSimilarity")
            assert f"{max(s):.4f}" in message and f"{bound:g}" in message
        else:
            assert w.failure is None
            assert [c["similarity"] for c in w.captions] == pytest.approx(sorted((x for x in s if x >= bound),
                                                                                 reverse=True))
    assert sum(w.failure is not None for w in out) == 1


def test_rerank_params_and_measures():
    assert teachers.similarity_measure("tiny") == "siglip-sigmoid"
    assert teachers.similarity_measure("tiny-clip") == "clip-cosine"
    assert teachers.similarity_measure("tiny:siglip2") == teachers.similarity_measure("tiny:siglip2-naflex") \
        == "siglip-sigmoid"  # SigLIP 2 (model_type siglip, or siglip2 for NaFlex) scores as SigLIP does
    teachers.RerankParams("clip-cosine", min_similarity=-0.5)  # cosine may be negative
    with pytest.raises(ValueError, match=r"within \[0, 1\]"):
        teachers.RerankParams("siglip-sigmoid", min_similarity=-0.5)
    with pytest.raises(ValueError, match="unknown similarity measure"):
        teachers.RerankParams("dot")
    caps = [{"text": "a", "score": -1.0}, {"text": "b", "score": -2.0}]
    assert [c["text"] for c in teachers.rerank_captions(caps, [0.2, 0.7])] == ["b", "a"]
    assert teachers.rerank_captions(caps, [0.2, 0.7], min_similarity=0.8) == []
    with pytest.raises(ValueError, match="1 similarities for 2 captions"):
        teachers.rerank_captions(caps, [0.5])


# ---- the labeling job's command line -------------------------------------------------

def _accounted(labels, failures, run, ids):
    assert sorted([r["image_id"] for r in labels] + [r["image_id"] for r in failures]) == sorted(ids)
    c = run["counts"]
    assert run["status"] == "succeeded" and c["distinct_images"] == len(ids)
    assert (c["labeled"], c["failed"]) == (len(labels), len(failures))
    assert c["extra_copies_removed"] == 0  # no runner retry here: nothing was committed twice


@pytest.fixture(scope="module")
def rerank_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rerank") / "out"
    proc = run_cli(*TINY, *CAPTIONS, "--rerank", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _outputs(out)


@pytest.mark.slow
def test_cli_rerank_scores_every_caption_best_first(rerank_run):
    labels, failures, run = rerank_run
    _accounted(labels, failures, run, _manifest_ids())
    assert labels and not failures
    for row in labels:
        sims = [c["similarity"] for c in row["captions"]]
        assert row["captions"] and None not in sims and sims == sorted(sims, reverse=True)
        params = json.loads(row["teacher_params"])
        assert params["rerank"] == {"enabled": True, "measure": "siglip-sigmoid", "min_similarity": None}
    assert run["rerank"] == {"enabled": True, "measure": "siglip-sigmoid", "min_similarity": None}
    assert run["options"]["rerank"] is True and run["options"]["min_caption_similarity"] is None


@pytest.mark.slow
def test_cli_rerank_with_siglip2(tmp_path):
    ids = _manifest_ids()[:3]
    proc = run_cli("--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny:siglip2", *CAPTIONS,
                   "--rerank", "--limit", "3", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, failures, run = _outputs(tmp_path / "out")
    _accounted(labels, failures, run, ids)
    assert len(labels) == 3 and not failures
    for row in labels:
        sims = [c["similarity"] for c in row["captions"]]
        assert row["tagger"] == "tiny-random/siglip2"
        assert sims == sorted(sims, reverse=True) and all(0.0 <= s <= 1.0 for s in sims)
        assert json.loads(row["teacher_params"])["rerank"]["measure"] == "siglip-sigmoid"
    assert run["rerank"] == {"enabled": True, "measure": "siglip-sigmoid", "min_similarity": None}


@pytest.mark.slow
def test_cli_min_similarity_above_every_caption_fails_every_image(tmp_path):
    ids = _manifest_ids()[:5]
    proc = run_cli(*TINY, *CAPTIONS, "--min-caption-similarity", "1", "--limit", "5", "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, failures, run = _outputs(tmp_path / "out")
    _accounted(labels, failures, run, ids)
    assert not labels and {(f["stage"], f["error_type"]) for f in failures} == {("rerank", "LowCaptionSimilarity")}
    assert run["counts"]["failed_by_stage"] == {"rerank": 5}
    assert run["options"]["rerank"] is True  # implied by the bound
    assert run["rerank"] == {"enabled": True, "measure": "siglip-sigmoid", "min_similarity": 1.0}


@pytest.mark.slow
def test_cli_min_similarity_in_the_middle_keeps_some(tmp_path, rerank_run):
    ids = _manifest_ids()[:8]
    reranked = {r["image_id"]: r["captions"] for r in rerank_run[0]}
    bests = sorted(reranked[i][0]["similarity"] for i in ids)
    _gap, bound = max((b - a, (a + b) / 2) for a, b in itertools.pairwise(bests[1:-1]))  # away from the ends
    proc = run_cli(*TINY, *CAPTIONS, "--min-caption-similarity", f"{bound:.6f}", "--limit", "8",
                   "--output", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels, failures, run = _outputs(tmp_path / "out")
    _accounted(labels, failures, run, ids)
    assert labels and failures
    assert run["counts"]["failed_by_stage"] == {"rerank": len(failures)}
    for row in labels:
        assert all(c["similarity"] >= float(f"{bound:.6f}") for c in row["captions"])
        earlier = {c["text"]: c["similarity"] for c in reranked[row["image_id"]]}
        for c in row["captions"]:  # the same image and caption score the same in both runs
            assert c["text"] not in earlier or c["similarity"] == pytest.approx(earlier[c["text"]], abs=1e-5)
    for f in failures:
        best = float(re.search(r"similarity ([0-9.]+) to the image", f["message"]).group(1))
        assert best < bound and f"--min-caption-similarity {float(f'{bound:.6f}'):g}" in f["message"]


def test_cli_rerank_without_a_tagger_exits_2_with_one_line(tmp_path):
    proc = run_cli(*TINY, "--output", tmp_path / "out", "--rerank", "--tagger", "none")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line == ("pseudo_label: error: --rerank scores the captioner's captions with the tagger's image-text "
                    "model: it needs both teachers, not --tagger none")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,match", [
    (["--min-caption-similarity", "0.5", "--captioner", "none"], "needs both teachers, not --captioner none"),
    (["--rerank", "--captioner", "none", "--tagger", "none"], "nothing to label"),
    (["--min-caption-similarity", "1.5"], r"within [0, 1] for the tagger's siglip-sigmoid"),
    (["--min-caption-similarity", "-1.5", "--tagger", "tiny-clip"], r"within [-1, 1] for the tagger's clip-cosine"),
])
def test_rerank_flags_are_checked_before_any_work(tmp_path, args, match):
    from pipelines import pseudo_label

    parsed, _ = pseudo_label.parse_args([*TINY[2:], "--output", str(tmp_path / "out"), *args])
    with pytest.raises(pseudo_label.UsageError) as e:
        pseudo_label.make_job(parsed)
    assert match in str(e.value) and "\n" not in str(e.value)


def test_rerank_off_leaves_similarity_null_and_params_unchanged(tmp_path):
    from pipelines import pseudo_label

    parsed, _ = pseudo_label.parse_args([*TINY[2:], "--output", str(tmp_path / "out")])
    job = pseudo_label.make_job(parsed)
    assert job.rerank is None and "rerank" not in job.teacher_params()
    assert pseudo_label.describe(job)["rerank"] == {"enabled": False}
    handler = TeacherHandler("tag", "tiny", teachers.TagParams(), HandlerOptions(device="cpu"))
    assert handler.predict(lambda images: [len(images)], [_work("a", IMAGES[0])]) == [1]  # pixels only
