"""ONNX export and ONNX Runtime captioning: parity with eager, no torch at run time, honest failures."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.captioning import load_student_captioner
from models.export import NotExportable, export_captioner
from models.runtime import ExportProblem, letterbox, load_onnx_captioner
from models.tee import IMAGENET_MEAN, IMAGENET_STD, TEE
from models.tee import letterbox as torch_letterbox
from pipelines.export import run as export_cli
from pipelines.infer.captions import caption_paths, expand
from tests.test_cached_decoding import shaken_captioner
from tests.test_captioning import REPO, SAMPLE_IMAGES, finetuned, tee  # noqa: F401  (fixtures)

SIZES = [(100, 150), (128, 128), (300, 90), (64, 200), (90, 90), (200, 120), (37, 51)]
# what a device without PyTorch has: the caption command must run with these imports failing
# what a device without PyTorch has: the caption command must run with these imports failing, and
# must not even try them (a library that tries and falls back would hide an import of ours)
BLOCKER = """
import sys
refused = []
class Blocked:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "torchvision", "transformers", "timm"}:
            refused.append(name)
            raise ImportError(f"{name} is blocked: this test is a device without it")
sys.meta_path.insert(0, Blocked())
from pipelines.caption import run
code = run(sys.argv[1:])
print("refused imports:", sorted(set(refused)), file=sys.stderr)
sys.exit(code)
"""


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def varying_tee(tee_model) -> TEE:  # noqa: F811  (the imported fixture's name)
    """The tiny TEE with a sharpened classifier and a low score threshold: how many regions clear
    it differs from image to image (a random TEE otherwise keeps exactly min_regions everywhere)."""
    config = replace(tee_model.config, min_regions=2, num_regions=20, score_thresh=0.08, candidate_thresh=0.05)
    model = TEE(config)
    model.load_state_dict(tee_model.state_dict())
    with torch.no_grad():
        weight = model.roi_heads.box_predictor.cls_score.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0)) * 8.0)
    model.fold_batchnorms()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tee, tmp_path_factory):  # noqa: F811
    """A shaken tiny captioner on a TEE whose region counts vary, and its fp32 export."""
    captioner = shaken_captioner(varying_tee(tee))
    directory = str(tmp_path_factory.mktemp("export"))
    export_captioner(captioner.model, captioner.tokenizer, directory, source="tiny test")
    return captioner, directory


def test_numpy_letterbox_matches_torch_within_float_rounding():
    for image in _images():
        ours, scale, content = letterbox(image, 128, IMAGENET_MEAN, IMAGENET_STD)
        theirs, their_scale, their_content = torch_letterbox(torch.from_numpy(image).permute(2, 0, 1), 128)
        assert (scale, content) == (their_scale, their_content)
        assert np.abs(ours - theirs.numpy()).max() < 1e-4  # measured: <= 2e-5 (docs/deploy.md)


def test_exported_tee_keeps_the_regions_eager_keeps_however_many(exported):
    captioner, directory = exported
    onnx = load_onnx_captioner(directory)
    images = _images()
    eager, ours = captioner.model.tee.extract(images), onnx.regions(images)
    counts = [len(r.features) for r in eager]
    assert len(set(counts)) >= 2, counts  # the counts vary, so a count frozen at trace time would show
    assert [len(r["features"]) for r in ours] == counts
    for a, b in zip(eager, ours):
        assert a.names == b["names"] and a.labels == b["labels"]
        np.testing.assert_allclose(a.boxes, b["boxes"], atol=1e-3)
        np.testing.assert_allclose(a.scores, b["scores"], atol=1e-4)
        np.testing.assert_allclose(a.features, b["features"], atol=2e-3)


@pytest.mark.parametrize("decoding", [dict(greedy=True), dict(beam_size=4)])
def test_onnx_runtime_captions_are_the_eager_captions(exported, decoding):
    captioner, directory = exported
    onnx = load_onnx_captioner(directory)
    images = _images(1)
    eager, ours = captioner(images, max_length=8, **decoding), onnx(images, max_length=8, **decoding)
    assert [(c.text, c.tags) for c in ours] == [(c.text, c.tags) for c in eager]
    assert [c.score for c in ours] == pytest.approx([c.score for c in eager], abs=1e-4)
    assert len({c.text for c in eager}) > 1  # the captions depend on the image


def test_tokenizers_decode_and_tag_ids_are_transformers(exported):
    captioner, directory = exported
    onnx = load_onnx_captioner(directory)
    rng = np.random.default_rng(0)
    for _ in range(50):
        words = rng.integers(999, captioner.config.vocab_size, rng.integers(1, 12)).tolist()
        assert onnx.tokenizer.decode(words, skip_special_tokens=True).strip() == \
            captioner.tokenizer.decode(words, skip_special_tokens=True).strip()
    tags = [["dog", "grass"], [], ["traffic light", "zebra crossing", "skyscraper"] * 3]
    from models.captioning import tag_token_ids

    assert onnx.tag_ids(tags) == tag_token_ids(captioner.tokenizer, tags, captioner.config.max_tag_tokens)


def test_an_attribute_head_exports_with_its_attributes(tee, tmp_path):  # noqa: F811
    config = replace(tee.config, attributes=(("a/blue", "blue"), ("a/small", "small"), ("a/red", "red")),
                     attribute_thresh=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TEE(config)
    model.load_state_dict(tee.state_dict(), strict=False)  # the attribute head stays as seeded
    model.fold_batchnorms()
    captioner = shaken_captioner(model.eval())
    export_captioner(captioner.model, captioner.tokenizer, str(tmp_path), source="attributes")
    images = _images(2)
    eager, ours = captioner.model.tee.extract(images), load_onnx_captioner(str(tmp_path)).regions(images)
    assert [r.attributes for r in eager] == [r["attributes"] for r in ours]
    assert any(any(a) for r in eager for a in r.attributes)


def test_int8_export_quantizes_every_linear_layer_and_captions(exported, tmp_path):
    import onnx

    captioner, fp32 = exported
    export_captioner(captioner.model, captioner.tokenizer, str(tmp_path), int8=True, source="tiny test")
    record = json.loads((tmp_path / "export.json").read_text())
    assert record["precision"] == "int8" and record["tiny_random"]
    graph = onnx.load(str(tmp_path / "fusion.onnx")).graph
    assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm")
                and any(i.name in n.input for i in graph.initializer)]  # no float weight left in a product
    c = captioner.config
    int8 = [i for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(int8) >= 6 * c.num_layers + 1  # q, k, v, output, two feed-forward, per layer; the decoder
    captions = load_onnx_captioner(str(tmp_path))(_images(), max_length=8, greedy=True)
    assert len(captions) == len(SIZES) and all(c.text for c in captions)


def test_a_model_that_is_not_a_captioner_does_not_export(exported, tmp_path):
    captioner, _ = exported
    model = captioner.model
    model.config = replace(model.config, task="pretraining")
    try:
        with pytest.raises(NotExportable, match="pretraining checkpoint, not a captioning one"):
            export_captioner(model, captioner.tokenizer, str(tmp_path))
    finally:
        model.config = replace(model.config, task="captioning")


# ---- the commands ------------------------------------------------------------------------

def _blocked_caption(*args):
    return subprocess.run([sys.executable, "-c", BLOCKER, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def chain_export(finetuned, tmp_path_factory):  # noqa: F811
    """pipelines.export of the captioning checkpoint the sample chain's tests fine-tune."""
    out = tmp_path_factory.mktemp("chain") / "export"
    assert export_cli(["--checkpoint", str(finetuned / "ckpt"), "--output", str(out)]) == 0
    return out


def test_export_command_checks_its_export(chain_export):
    check = json.loads((chain_export / "export.json").read_text())["check"]
    assert check["regions_equal"] == check["images"] == 4 and check["captions_equal"] == 4


def test_caption_command_runs_an_export_without_torch_and_says_what_eager_says(finetuned, chain_export):  # noqa: F811
    proc = _blocked_caption("--checkpoint", chain_export, "--greedy", "--quiet", SAMPLE_IMAGES)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused imports: []" in proc.stderr  # nothing even tried to import them
    assert "tiny-random" in proc.stderr  # what made these captions
    eager = load_student_captioner(str(finetuned / "ckpt"))
    expected = [f"{p}\t{c.text}" for p, c, _ in caption_paths(eager, list(expand([SAMPLE_IMAGES])), greedy=True)]
    assert proc.stdout.splitlines() == expected


def test_caption_command_refuses_a_broken_export_with_one_line(chain_export, tmp_path):
    def broken(name, change):
        target = tmp_path / name
        subprocess.run(["cp", "-r", str(chain_export), str(target)], check=True)
        change(target)
        return target

    def corrupt(d):
        data = bytearray((d / "fusion.onnx").read_bytes())
        data[len(data) // 2] ^= 0xFF
        (d / "fusion.onnx").write_bytes(bytes(data))

    def other_tokenizer(d):  # a tokenizer that is not the model's, export.json made to vouch for it
        record = json.loads((d / "export.json").read_text())
        tok = json.loads((d / "tokenizer.json").read_text())
        tok["model"]["vocab"] = dict(list(tok["model"]["vocab"].items())[:1000])
        (d / "tokenizer.json").write_text(json.dumps(tok))
        import hashlib

        record["sha256"]["tokenizer.json"] = hashlib.sha256((d / "tokenizer.json").read_bytes()).hexdigest()
        (d / "export.json").write_text(json.dumps(record))

    cases = [
        (broken("missing", lambda d: (d / "vision.onnx").unlink()), "vision.onnx is missing"),
        (broken("corrupt", corrupt), "fusion.onnx differs from the file exported"),
        (broken("swapped", lambda d: (d / "tokenizer.json").write_text((d / "tokenizer.json").read_text()[:-2]
                                                                        + " }")),
         "tokenizer.json differs from the file exported"),
        (broken("vocab", other_tokenizer), "not the tokenizer it was trained with"),
    ]
    for directory, match in cases:
        proc = _blocked_caption("--checkpoint", directory, SAMPLE_IMAGES)
        assert proc.returncode == 2, (match, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 2 and match in lines[0] and lines[1] == "refused imports: []", (match, lines)
    proc = _blocked_caption("--checkpoint", chain_export, "--device", "cuda", SAMPLE_IMAGES)
    assert proc.returncode == 2 and "CPU provider" in proc.stderr and "refused imports: []" in proc.stderr


def test_export_command_refuses_what_cannot_export_with_one_line(finetuned, chain_export, tmp_path, capsys):  # noqa: F811
    cases = [
        (["--checkpoint", str(finetuned / "pretrained"), "--output", str(tmp_path / "a")], "not a captioning one"),
        (["--checkpoint", str(finetuned / "corpus"), "--output", str(tmp_path / "b")], "not a saved MiniVLM"),
        (["--checkpoint", str(finetuned / "ckpt"), "--output", str(chain_export)], "--overwrite"),
        (["--checkpoint", str(finetuned / "ckpt"), "--output", str(chain_export / "export.json")], "is a file"),
        (["--checkpoint", str(finetuned / "ckpt"), "--output", str(tmp_path / "c"), "--int9"], "--int8"),
    ]
    for argv, match in cases:
        assert export_cli(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], (match, err)
    assert not (tmp_path / "a").exists() or not os.listdir(tmp_path / "a")


def test_export_to_a_bucket_then_caption_from_it(finetuned, chain_export, tmp_path, monkeypatch, capsys):  # noqa: F811
    """--output gs://: made and checked locally, uploaded, the temporary copy removed; `caption` reads it
    from the bucket and says what the local export says. Refusals are checked on the bucket."""
    import tempfile

    import fsspec

    from pipelines.caption import run as caption_cli
    from tests import servers

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # whatever the export puts there must be gone after
    images = [os.path.join(SAMPLE_IMAGES, name) for name in sorted(os.listdir(SAMPLE_IMAGES))[:2]]
    ckpt = str(finetuned / "ckpt")
    with servers.gcs_emulator("exports") as env, servers.environ(env):
        assert export_cli(["--checkpoint", ckpt, "--output", "gs://exports/exp"]) == 0
        printed = capsys.readouterr().out
        assert "export: gs://exports/exp: vision.onnx" in printed and "captions equal 4/4" in printed, printed
        fs = fsspec.filesystem("gs")
        names = {p.rsplit("/", 1)[1] for p in fs.ls("exports/exp", detail=False)}
        assert {"vision.onnx", "fusion.onnx", "export.json", "tokenizer.json", "tokenizer_config.json"} <= names
        assert json.loads(fs.cat_file("exports/exp/export.json"))["check"]["regions_equal"] == 4
        assert not os.listdir(tmp_path)

        # the command a user types, in its own process, against the bucket
        proc = subprocess.run([sys.executable, "-m", "pipelines.caption", "--checkpoint", "gs://exports/exp",
                               "--quiet", *images], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, **env})
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert caption_cli(["--checkpoint", str(chain_export), "--quiet", *images]) == 0  # the local export
        local = capsys.readouterr().out.splitlines()
        assert len(local) == 2 and proc.stdout.splitlines() == local

        refusals = [("gs://exports/exp", [], 2, "already holds files; pass --overwrite"),
                    ("gs://exports/exp/export.json", [], 2, "is a file, not a directory"),
                    ("gs://no-such-bucket/exp", ["--no-check"], 1,
                     "cannot upload the export to gs://no-such-bucket/exp: not found, does the bucket exist?")]
        for url, extra, code, match in refusals:
            assert export_cli(["--checkpoint", ckpt, "--output", url, *extra]) == code, match
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and match in err[0], (match, err)
        assert not os.listdir(tmp_path)


def test_an_export_is_named_as_such_where_a_student_is_wanted(chain_export):
    from pipelines.infer.captions import checkpoint_problem

    assert "an ONNX export" in checkpoint_problem("--checkpoint", str(chain_export))


def test_a_runtime_problem_is_one_line(exported, tmp_path):
    (tmp_path / "export.json").write_text(json.dumps({"format": "minivlm-onnx", "version": 99}))
    with pytest.raises(ExportProblem, match="version 99"):
        load_onnx_captioner(str(tmp_path))
    record = json.loads(open(os.path.join(exported[1], "export.json")).read())
    del record["fusion"]["special_tokens"]
    (tmp_path / "export.json").write_text(json.dumps(record))
    with pytest.raises(ExportProblem, match="lacks fusion.special_tokens: export the checkpoint again"):
        load_onnx_captioner(str(tmp_path))


def test_export_help_loads_no_torch():
    from tests.help_probe import run_help

    probe, proc = run_help("export")
    assert probe == {"code": 0, "heavy": []}, proc.stderr[-2000:]
    assert "--int8" in proc.stdout and "--checkpoint" in proc.stdout
