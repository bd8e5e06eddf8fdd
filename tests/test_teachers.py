import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import teachers
from teachers import CaptionParams, TagParams, TeacherRef, TeacherUnavailable, loading, registry
from tests.conftest import run_cli
from tests.imagegen import gradient

IMAGES = [gradient(64, 48), gradient(30, 90), np.zeros((8, 8, 3), np.uint8)]
# The families whose replicas teachers/replicas/{blip,git,siglip,clip}.py build (the newer
# families have their own tests); the tiny defaults are BLIP and SigLIP.
CAPTIONERS, TAGGERS = ["blip", "git"], ["siglip", "clip"]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
# What each replica must share with its real repo (the sources: docs/teachers.md).
REAL = {
    "blip": {
        "repo": "Salesforce/blip-image-captioning-large", "model": "BlipForConditionalGeneration",
        "classes": ("BlipProcessor", "BertTokenizer", "BlipImageProcessor"), "image": 384, "patch": 16,
        "mean": CLIP_MEAN, "std": CLIP_STD, "vocab": 30524, "positions": 512,
        "ids": {"bos_token_id": 30522, "sep_token_id": 102, "pad_token_id": 0},
        "tokens": {"[CLS]": 101, "[SEP]": 102, "[PAD]": 0, "[UNK]": 100},
        "files": {"config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                  "tokenizer.json", "tokenizer_config.json", "vocab.txt"}},
    "git": {
        "repo": "microsoft/git-large-coco", "model": "GitForCausalLM",
        "classes": ("GitProcessor", "BertTokenizer", "CLIPImageProcessor"), "image": 224, "patch": 14,
        "mean": CLIP_MEAN, "std": CLIP_STD, "vocab": 30522, "positions": 1024,
        "ids": {"bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0},
        "tokens": {"[CLS]": 101, "[SEP]": 102, "[PAD]": 0, "[UNK]": 100},
        "files": {"config.json", "generation_config.json", "model.safetensors", "preprocessor_config.json",
                  "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"}},
    "siglip": {
        "repo": "google/siglip-so400m-patch14-384", "model": "SiglipModel",
        "classes": ("SiglipProcessor", "SiglipTokenizer", "SiglipImageProcessor"), "image": 384, "patch": 14,
        "mean": [0.5] * 3, "std": [0.5] * 3, "vocab": 32000, "positions": 64, "ids": {"pad_token_id": 1},
        "tokens": {"</s>": 1, "<unk>": 2},
        "files": {"config.json", "model.safetensors", "preprocessor_config.json", "special_tokens_map.json",
                  "spiece.model", "tokenizer_config.json"}},
    "clip": {
        "repo": "openai/clip-vit-large-patch14", "model": "CLIPModel",
        "classes": ("CLIPProcessor", "CLIPTokenizer", "CLIPImageProcessor"), "image": 224, "patch": 14,
        "mean": CLIP_MEAN, "std": CLIP_STD, "vocab": 49408, "positions": 77,
        "ids": {"bos_token_id": 0, "pad_token_id": 1, "eos_token_id": 2},
        "tokens": {"<|startoftext|>": 49406, "<|endoftext|>": 49407},
        "files": {"config.json", "merges.txt", "model.safetensors", "preprocessor_config.json",
                  "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.json"}},
}
KIND = {"blip": "captioner", "git": "captioner", "siglip": "tagger", "clip": "tagger"}


def test_the_replicated_families_are_registered():
    assert set(CAPTIONERS) <= set(registry.tiny_families("captioner"))
    assert set(TAGGERS) <= set(registry.tiny_families("tagger"))
    for family, real in REAL.items():
        assert registry.replicated_repo(KIND[family], family) == real["repo"]


@pytest.mark.parametrize("family", list(REAL))
def test_replica_keeps_what_loading_the_real_repo_depends_on(family, tmp_path):
    from transformers import AutoConfig, AutoProcessor

    real, kind = REAL[family], KIND[family]
    path = teachers.resolve(TeacherRef(kind, f"tiny:{family}"), cache_dir=str(tmp_path))
    assert set(os.listdir(path)) == real["files"]  # the repo's layout, weights as safetensors only
    config = AutoConfig.from_pretrained(path)
    text, vision = config.get_text_config(), config.vision_config
    assert config.architectures == [real["model"]]
    assert (text.vocab_size, text.max_position_embeddings) == (real["vocab"], real["positions"])
    assert {k: getattr(text, k) for k in real["ids"]} == real["ids"]
    assert (vision.image_size, vision.patch_size) == (real["image"], real["patch"])
    assert text.hidden_size == vision.hidden_size == 32 and vision.num_hidden_layers == 2  # only these shrink
    processor = AutoProcessor.from_pretrained(path)
    tok, images = processor.tokenizer, processor.image_processor
    assert (type(processor).__name__, type(tok).__name__, type(images).__name__) == real["classes"]
    assert {t: tok.convert_tokens_to_ids(t) for t in real["tokens"]} == real["tokens"]
    assert list(images.image_mean) == real["mean"] and list(images.image_std) == real["std"]
    assert int(images.resample) == 3  # bicubic
    pixels = images(images=[gradient(300, 200)], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, real["image"], real["image"])
    assert teachers.describe(TeacherRef(kind, path)) == path  # the launcher's check passes


def test_replica_builds_are_quick_and_byte_identical(tmp_path):
    """Every worker (and machine) that builds a replica gets the same files: weights, trained vocabularies."""
    for family in REAL:
        a, b = tmp_path / f"{family}-a", tmp_path / f"{family}-b"
        a.mkdir(), b.mkdir()
        started = time.monotonic()
        registry.build_tiny(KIND[family], family, str(a))
        assert time.monotonic() - started < 30  # seconds; ~0.2 when the machine is idle
        registry.build_tiny(KIND[family], family, str(b))
        for name in os.listdir(a):
            assert (a / name).read_bytes() == (b / name).read_bytes(), (family, name)


@pytest.mark.parametrize("family", CAPTIONERS)
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


@pytest.mark.parametrize("family", TAGGERS)
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
    with pytest.raises(ValueError, match="unknown tiny captioner 'tiny:clip'; registered: tiny:blip, "):
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

    local_dir = Path(teachers.resolve(TeacherRef("tagger", "tiny"), cache_dir=str(tmp_path / "build")))
    mem = fsspec.filesystem("memory")
    for name in os.listdir(local_dir):
        mem.pipe(f"/models/siglip/{name}", (local_dir / name).read_bytes())
    mem.pipe("/models/siglip/pytorch_model.bin", b"pickled weights are never fetched")
    out = tmp_path / "copy"
    loading._copy_remote_dir("memory://models/siglip", str(out))
    assert (out / "model.safetensors").exists() and not (out / "pytorch_model.bin").exists()
    tagger = teachers.load_tagger(str(out), TagParams(threshold=0.0, max_tags=2), device="cpu")
    assert len(tagger(IMAGES[:1])[0]) == 2


def _pickled_only(tmp_path) -> str:
    """A saved captioner whose weights are only a pickle (pytorch_model.bin)."""
    src = teachers.resolve(TeacherRef("captioner", "tiny"), cache_dir=str(tmp_path / "build"))
    unsafe = tmp_path / "unsafe"
    shutil.copytree(src, unsafe)
    (unsafe / "model.safetensors").unlink()
    (unsafe / "pytorch_model.bin").write_bytes(b"not loaded: could run code")
    return str(unsafe)


def _model_dir(tmp_path, config: dict) -> str:
    """A directory with just this config.json and a (never read) safetensors file."""
    path = tmp_path / "model"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    (path / "model.safetensors").write_bytes(b"")
    return str(path)


def test_pickled_weights_alone_are_refused(tmp_path):
    unsafe = _pickled_only(tmp_path)
    match = r"captioner '.*unsafe' has only pickled weights \(pytorch_model.bin\), no safetensors: refused"
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.describe(TeacherRef("captioner", unsafe))  # on the launcher
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.load_captioner(unsafe, CaptionParams(1, 1, 3), device="cpu")  # and on a worker


@pytest.mark.parametrize("kind,config,match", [
    ("captioner", {"model_type": "bert"},
     "is a 'bert' model, which transformers cannot load as an image-to-text model \\(AutoModelForImageTextToText\\)"),
    ("tagger", {"model_type": "acme-vlm"}, "is a 'acme-vlm' model, a family transformers .* does not know"),
])
def test_an_unsupported_family_is_refused(tmp_path, kind, config, match):
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.describe(TeacherRef(kind, _model_dir(tmp_path, config)))


def test_a_tagger_must_be_an_image_text_model(tmp_path):
    """AutoModel loads a text-only BERT too; the tagger needs image and text towers."""
    from teachers.replicas.common import bundled_bert_dir

    bert = tmp_path / "bert"
    bert.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
        shutil.copyfile(os.path.join(bundled_bert_dir(), name), bert / name)  # a real BERT's files
    (bert / "model.safetensors").write_bytes(b"")  # the check reads no weights
    with pytest.raises(TeacherUnavailable, match="tagger '.*bert' is a 'bert' model \\(BertModel\\), not an image-text"):
        teachers.describe(TeacherRef("tagger", str(bert)))


def test_a_captioners_checkpoint_is_no_tagger(tmp_path):
    """A BLIP captioner's folder loads with AutoModel as BlipModel, which has both towers, but its
    image-text projections would start random: refused on the launcher and on a worker."""
    blip = tmp_path / "blip"
    blip.mkdir()
    registry.build_tiny("captioner", "blip", str(blip))
    match = "tagger '.*blip' is a 'blip' checkpoint of BlipForConditionalGeneration, not an image-text model"
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.describe(TeacherRef("tagger", str(blip)))
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.load_tagger(str(blip), TagParams(), device="cpu")
    assert teachers.describe(TeacherRef("captioner", str(blip))) == str(blip)  # in its own role it is fine


def test_a_remote_code_only_model_needs_trust_remote_code(tmp_path):
    path = _model_dir(tmp_path, {"model_type": "acme-vlm",
                                 "auto_map": {"AutoModelForImageTextToText": "modeling_acme.AcmeForCaptioning"}})
    ref = TeacherRef("captioner", path)
    match = "is a 'acme-vlm' model that only its own code .* pass --trust-remote-code"
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.describe(ref, trust_remote_code=False)
    # A launcher that does not say whether code is trusted leaves it to the workers, which know.
    assert teachers.describe(ref) == path
    with pytest.raises(TeacherUnavailable, match=match):
        teachers.load_captioner(path, CaptionParams(1, 1, 3), device="cpu")


def test_a_missing_package_is_named():
    """transformers' own messages (several lines, the package named in the first) -> the pip name."""
    from transformers.utils.import_utils import PROTOBUF_IMPORT_ERROR, SENTENCEPIECE_IMPORT_ERROR

    ref = TeacherRef("tagger", "google/siglip-so400m-patch14-384")
    backend = ImportError(SENTENCEPIECE_IMPORT_ERROR.format("SiglipTokenizer")
                          + PROTOBUF_IMPORT_ERROR.format("SiglipTokenizer"))
    assert loading._missing_package_message(ref, backend) == (
        "tagger 'google/siglip-so400m-patch14-384' needs the Python packages 'sentencepiece', 'protobuf' "
        "(pip install sentencepiece protobuf)")
    assert loading._missing_packages(ModuleNotFoundError("No module named 'google'", name="google.protobuf")) == [
        "protobuf"]
    remote = ImportError("This modeling file requires the following packages that were not found in your "
                         "environment: einops, timm. Run `pip install einops timm`")
    assert loading._missing_packages(remote) == ["einops", "timm"]
    assert "\n" not in loading._missing_package_message(ref, ImportError("cannot import name X\nfrom y"))


@pytest.mark.parametrize("case", ["pickled", "family", "remote-code"])
def test_an_unloadable_teacher_stops_the_job_before_any_work(tmp_path, case):
    """Through the real CLI: exit 2, one line, no output written."""
    captioner = {"pickled": lambda: _pickled_only(tmp_path),
                 "family": lambda: _model_dir(tmp_path, {"model_type": "bert"}),
                 "remote-code": lambda: _model_dir(tmp_path, {"model_type": "acme-vlm", "auto_map": {
                     "AutoModelForImageTextToText": "modeling_acme.AcmeForCaptioning"}})}[case]()
    out = tmp_path / "out"
    proc = run_cli("--runner", "DirectRunner", "--captioner", captioner, "--tagger", "tiny", "--output", out,
                   "--limit", "1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"pseudo_label: error: captioner {captioner!r} ")
    assert {"pickled": "only pickled weights", "family": "is a 'bert' model",
            "remote-code": "pass --trust-remote-code"}[case] in line
    assert not out.exists()


def test_trust_remote_code_is_off_by_default_and_warned_about(caplog):
    import inspect

    assert inspect.signature(teachers.load_captioner).parameters["trust_remote_code"].default is False
    with caplog.at_level("WARNING", logger="teachers.loading"):
        teachers.load_captioner("tiny", CaptionParams(1, 1, 2), device="cpu", trust_remote_code=True)
    assert any("trust_remote_code is on" in r.message for r in caplog.records)


def test_only_the_unused_bos_and_eos_id_warnings_are_dropped_while_a_tagger_loads():
    import logging

    from teachers.tagger import unused_text_token_ids_unreported

    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("transformers.configuration_utils")
    keep = Keep()
    logger.addHandler(keep)
    try:
        with unused_text_token_ids_unreported():
            for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
                logger.warning(f"Model config: {name} must be `None` or an integer within the vocabulary, got 49406")
        logger.warning("Model config: bos_token_id must be `None` or an integer within the vocabulary, got 7")
    finally:
        logger.removeHandler(keep)
    assert [m.split()[2] for m in seen] == ["pad_token_id", "bos_token_id"]  # the filter lives only while loading
