import numpy as np
import pytest

import teachers
from teachers import CaptionParams, TagParams, TeacherRef, TeacherUnavailable, registry
from tests.imagegen import gradient

IMAGES = [gradient(64, 48), gradient(30, 90), np.zeros((8, 8, 3), np.uint8)]


@pytest.mark.parametrize("family", registry.tiny_families("captioner"))
def test_every_tiny_captioner_loads_and_captions(family):
    cap = teachers.load_captioner(f"tiny:{family}", CaptionParams(num_captions=2, num_beams=3, max_new_tokens=5),
                                  device="cpu")
    out = cap(IMAGES)
    assert len(out) == len(IMAGES)
    for captions in out:
        assert 1 <= len(captions) <= 2
        scores = [c["score"] for c in captions]
        assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
        assert all(c["text"] and c["text"] == c["text"].strip() for c in captions)


def test_greedy_captioning_reports_a_score():
    cap = teachers.load_captioner("tiny", CaptionParams(num_captions=1, num_beams=1, max_new_tokens=4), device="cpu")
    (captions,) = cap(IMAGES[:1])
    assert len(captions) == 1 and captions[0]["score"] < 0  # mean log-probability


@pytest.mark.parametrize("family", registry.tiny_families("tagger"))
def test_every_tiny_tagger_scores_the_vocabulary(family):
    tagger = teachers.load_tagger(f"tiny:{family}", TagParams(threshold=0.0, max_tags=4), device="cpu")
    out = tagger(IMAGES)
    assert len(out) == len(IMAGES)
    names = {n for _, n in tagger.vocab}
    for tags in out:
        assert len(tags) == 4
        scores = [t["score"] for t in tags]
        assert scores == sorted(scores, reverse=True) and all(0.0 <= s <= 1.0 for s in scores)
        assert all(t["name"] in names for t in tags)


def test_tagger_threshold_can_leave_nothing():
    tagger = teachers.load_tagger("tiny", TagParams(threshold=1.0), device="cpu")
    assert tagger(IMAGES) == [[], [], []]  # a teacher that returns nothing


def test_tiny_build_is_deterministic_and_loaded_via_from_pretrained(tmp_path):
    a = teachers.resolve(TeacherRef("captioner", "tiny"), cache_dir=str(tmp_path / "a"))
    b = teachers.resolve(TeacherRef("captioner", "tiny"), cache_dir=str(tmp_path / "b"))
    assert (tmp_path / "a").exists()
    fa, fb = (open(f"{d}/model.safetensors", "rb").read() for d in (a, b))
    assert fa == fb  # every Dataflow worker builds the same weights
    # a local directory reference goes down the same path
    cap = teachers.load_captioner(a, CaptionParams(num_captions=1, num_beams=1, max_new_tokens=3), device="cpu")
    assert len(cap(IMAGES[:1])[0]) == 1


def test_one_spelling_for_tiny_teachers_and_the_old_one_still_works():
    for kind in registry.KINDS:
        for family in registry.tiny_families(kind):
            assert registry.tiny_family(kind, f"tiny:{family}") == registry.tiny_family(kind, f"tiny-{family}") == family
    assert registry.tiny_family("captioner", "tiny") == "blip" and registry.tiny_family("tagger", "tiny") == "siglip"
    assert registry.tiny_family("captioner", "Salesforce/blip-image-captioning-large") is None
    with pytest.raises(ValueError, match="unknown tiny captioner 'tiny:clip'; registered: tiny:blip, tiny:git"):
        registry.tiny_family("captioner", "tiny:clip")
    assert teachers.describe(TeacherRef("captioner", "tiny:git")) == teachers.describe(
        TeacherRef("captioner", "tiny-git")) == "tiny-random/git"


def test_describe_gives_provenance():
    assert teachers.describe(TeacherRef("captioner", "tiny")) == "tiny-random/blip"
    assert teachers.describe(TeacherRef("tagger", "tiny-clip")) == "tiny-random/clip"
    assert teachers.describe(TeacherRef("captioner", "gs://b/models/blip")) == "gs://b/models/blip"


def test_unknown_tiny_family_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny:git"):
        TeacherRef("captioner", "tiny-nope").tiny


def test_offline_uncached_hub_id_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(TeacherUnavailable) as e:
        teachers.describe(TeacherRef("captioner", teachers.DEFAULT_CAPTIONER))
    msg = str(e.value)
    assert "--captioner tiny" in msg and "local directory" in msg and "\n" not in msg


def test_local_dir_without_config_is_refused(tmp_path):
    with pytest.raises(TeacherUnavailable, match="no config.json"):
        teachers.describe(TeacherRef("tagger", str(tmp_path)))


def test_vocab_with_and_without_header():
    with_header = teachers.read_vocab("LabelName,DisplayName\n/m/01,Dog\n/m/02,Cat\n/m/01,Dog again\n")
    without = teachers.read_vocab("/m/01,Dog\n/m/02,Cat\n")
    assert with_header == without == [("/m/01", "Dog"), ("/m/02", "Cat")]
    bundled = teachers.load_vocab(teachers.DEFAULT_VOCAB)
    assert len(bundled) > 100 and all(label.startswith("minivlm:") for label, _ in bundled)
    with pytest.raises(ValueError, match="row 2"):
        teachers.read_vocab("/m/01,Dog\n/m/02\n")
    with pytest.raises(ValueError, match="no tags"):
        teachers.read_vocab("LabelName,DisplayName\n")


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_captions=6, num_beams=5), "cannot exceed"),
    (dict(num_beams=0), "num-beams"),
    (dict(max_new_tokens=0), "max-new-tokens"),
])
def test_caption_params_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CaptionParams(**kwargs)


def test_tag_params_are_validated():
    with pytest.raises(ValueError, match="tag-threshold"):
        TagParams(threshold=1.5)
    with pytest.raises(ValueError, match="tag-prompt"):
        TagParams(prompt="no placeholder")


def test_remote_directory_is_copied_then_loaded(tmp_path):
    import fsspec

    from teachers import loading

    local = teachers.resolve(TeacherRef("tagger", "tiny"), cache_dir=str(tmp_path / "build"))
    mem = fsspec.filesystem("memory")
    for name in ("config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        mem.pipe(f"/models/siglip/{name}", open(f"{local}/{name}", "rb").read())
    mem.pipe("/models/siglip/pytorch_model.bin", b"pickled weights are never fetched")
    out = tmp_path / "copy"
    loading._copy_remote_dir("memory://models/siglip", str(out))
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    tagger = teachers.load_tagger(str(out), TagParams(threshold=0.0, max_tags=2), device="cpu")
    assert len(tagger(IMAGES[:1])[0]) == 2


def test_pickled_weights_alone_are_refused(tmp_path):
    import shutil

    src = teachers.resolve(TeacherRef("captioner", "tiny"), cache_dir=str(tmp_path / "build"))
    unsafe = tmp_path / "unsafe"
    shutil.copytree(src, unsafe)
    (unsafe / "model.safetensors").unlink()
    (unsafe / "pytorch_model.bin").write_bytes(b"not loaded: could run code")
    with pytest.raises(TeacherUnavailable, match="cannot load captioner"):
        teachers.load_captioner(str(unsafe), CaptionParams(1, 1, 3), device="cpu")


def test_trust_remote_code_is_off_by_default_and_warned_about(caplog):
    import inspect

    assert inspect.signature(teachers.load_captioner).parameters["trust_remote_code"].default is False
    with caplog.at_level("WARNING", logger="teachers.loading"):
        teachers.load_captioner("tiny", CaptionParams(1, 1, 2), device="cpu", trust_remote_code=True)
    assert any("trust_remote_code is on" in r.message for r in caplog.records)
