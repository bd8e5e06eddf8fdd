"""The shared training loop through train_tee: data stream, exact resume, torchrun, evaluation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from benchmarks.synthetic_scenes import write_dataset
from models.tee import TEE
from pipelines.train.loop import TrainConfig
from pipelines.train.streams import ResumableStream, by_index, shuffled
from pipelines.train_tee import run as train_tee

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Numbers(ResumableStream):
    """Samples are their own positions: (epoch, index), so splits and skips are visible."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        self.n = n

    def items(self, epoch, readers, slot):
        import random

        return by_index(shuffled(iter(range(self.n)), 4, random.Random(epoch)), readers, slot)

    def load(self, item, rng):
        return torch.tensor([item, int(rng.integers(1000))])


def _take(stream, batches, workers):
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers)
    it = iter(loader)
    return [next(it).tolist() for _ in range(batches)]


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_restarts_exactly_where_it_stopped(workers):
    full = _take(Numbers(10, seed=1, batch_size=3), 8, workers)
    resumed = Numbers(10, seed=1, batch_size=3)
    resumed.start_batch = 5
    assert _take(resumed, 3, workers) == full[5:8]


def test_stream_splits_ranks_without_overlap_and_covers_an_epoch():
    seen = []
    for rank in range(2):
        batches = _take(Numbers(12, seed=0, batch_size=3, rank=rank, world=2), 2, 0)  # one epoch each
        seen += [row[0] for b in batches for row in b]
    assert sorted(seen) == list(range(12))


def test_stream_with_fewer_samples_than_readers_says_so():
    with pytest.raises(ValueError, match="fewer samples than readers"):
        _take(Numbers(1, seed=0, batch_size=1, rank=1, world=2), 1, 0)


def test_shuffle_is_a_permutation_with_a_small_buffer():
    import random

    out = list(shuffled(iter(range(100)), 7, random.Random(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))


def test_trainer_flags_take_their_defaults_from_train_config():
    import argparse
    from dataclasses import MISSING, fields

    from pipelines.train.flags import add_train_flags, train_config

    ap = argparse.ArgumentParser()
    add_train_flags(ap)
    cfg = train_config(ap.parse_args(["--output", "x", "--max-steps", "3"]))
    for f in fields(TrainConfig):
        if f.default is not MISSING:
            assert getattr(cfg, f.name) == f.default, f.name
    ap = argparse.ArgumentParser()
    add_train_flags(ap, lr=5e-5, num_workers=0)
    cfg = train_config(ap.parse_args(["--output", "x", "--max-steps", "3"]))
    assert (cfg.lr, cfg.num_workers, cfg.batch_size) == (5e-5, 0, TrainConfig.batch_size)
    with pytest.raises(ValueError, match="no TrainConfig default to override: learning_rate"):
        add_train_flags(argparse.ArgumentParser(), learning_rate=1.0)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="--max-steps"):
        TrainConfig(output="x", max_steps=0)
    with pytest.raises(ValueError, match="--optimizer"):
        TrainConfig(output="x", max_steps=1, optimizer="lion")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    tr = write_dataset(str(root), 24, seed=1, size=96, subset="train", prefix="train-")
    va = write_dataset(str(root), 6, seed=2, size=96, subset="validation", prefix="validation-")
    return tr, va


def _args(tr, out, steps, *extra):
    return ["--images", tr["images_csv"], "--annotations", tr["boxes_csv"], "--classes", tr["classes_csv"],
            "--tee", "tee-tiny", "--output", str(out), "--max-steps", str(steps), "--batch-size", "2",
            "--warmup-steps", "2", "--log-every", "1", "--checkpoint-every", "2", "--num-workers", "0",
            "--no-progress", *extra]


def _weights(out):
    return TEE.from_pretrained(str(out / "model")).state_dict()


def test_resume_ends_with_the_same_weights_as_an_uninterrupted_run(scenes, tmp_path):
    tr, _ = scenes
    assert train_tee(_args(tr, tmp_path / "straight", 4)) == 0
    assert train_tee(_args(tr, tmp_path / "resumed", 4, "--stop-at", "2")) == 0
    assert train_tee(_args(tr, tmp_path / "resumed", 4, "--resume")) == 0
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "resumed")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    rows = [json.loads(ln) for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    straight = [json.loads(ln) for ln in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == [r["loss"] for r in straight]
    ckpts = sorted(os.listdir(tmp_path / "resumed" / "checkpoints"))
    assert ckpts == ["latest", "step-00000002", "step-00000004"]


def test_checkpoints_need_resume_or_overwrite_and_resume_on_nothing_starts_anew(scenes, tmp_path, capsys):
    tr, _ = scenes
    assert train_tee(_args(tr, tmp_path / "a", 2, "--resume")) == 0
    assert f"train_tee: note: nothing to resume in {tmp_path / 'a'}: starting a new run" in capsys.readouterr().err
    assert train_tee(_args(tr, tmp_path / "a", 2)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume to continue it, --overwrite to replace it" in err[0], err


def test_bad_annotation_rows_are_counted_and_skipped(scenes, tmp_path, capsys):
    tr, _ = scenes
    lines = open(tr["boxes_csv"]).read().splitlines()
    first_id = lines[1].split(",")[0]
    bad = [f"{first_id},x,/synth/circle,1,1.5,1.7,0.1,0.2,0,0,0,0,0",  # outside [0, 1]
           f"{first_id},x,/synth/circle,1,0.5,0.2,0.1,0.2,0,0,0,0,0",  # XMin > XMax
           f"{first_id},x,/m/unknown,1,0.1,0.2,0.1,0.2,0,0,0,0,0"]  # not a class
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("\n".join([lines[0], *bad, *lines[1:]]) + "\n")
    args = _args({**tr, "boxes_csv": str(boxes)}, tmp_path / "run", 1)
    assert train_tee(args) == 0
    err = capsys.readouterr().err
    assert "annotation rows skipped: 3" in err
    for reason in ("skipped_out_of_range", "skipped_inverted", "skipped_unknown_label"):
        assert f"'{reason}': 1" in err
    info = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert info["data"]["skipped_rows"] == 3 and info["data"]["images"] == 24


def test_training_with_validation_and_the_evaluate_command(scenes, tmp_path):
    tr, va = scenes
    out = tmp_path / "run"
    assert train_tee(_args(tr, out, 2, "--val-images", va["images_csv"], "--val-annotations", va["boxes_csv"])) == 0
    val = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if '"val"' in ln]
    assert len(val) == 1 and 0.0 <= val[0]["map50"] <= 1.0 and val[0]["val_images"] == 6
    proc = subprocess.run([sys.executable, "-m", "pipelines.evaluate_tee", "--tee", str(out / "model"),
                           "--images", va["images_csv"], "--annotations", va["boxes_csv"],
                           "--output", str(tmp_path / "eval")], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mAP@0.5" in proc.stdout
    result = json.loads((tmp_path / "eval" / "tee_eval.json").read_text())
    assert result["images"] == 6 and result["extractor"] == TEE.from_pretrained(str(out / "model")).extractor_id()
    assert np.isclose(result["map50"], val[0]["map50"])


@pytest.mark.slow
def test_torchrun_two_processes(scenes, tmp_path):
    tr, _ = scenes
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "pipelines.train_tee", *_args(tr, out, 2)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["train"]["max_steps"] == 2
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]  # rank 0 alone writes
    assert (out / "model" / "model.safetensors").exists()


def test_box_heads_follow_the_flag_and_cannot_be_changed_on_a_saved_tee(scenes, tmp_path, capsys):
    tr, _ = scenes
    assert train_tee(_args(tr, tmp_path / "default", 1)) == 0  # the registered config: class-agnostic
    assert train_tee(_args(tr, tmp_path / "specific", 1, "--no-class-agnostic-boxes")) == 0
    default, specific = (TEE.from_pretrained(str(tmp_path / d / "model")) for d in ("default", "specific"))
    assert default.config.class_agnostic_boxes and default.roi_heads.box_predictor.bbox_pred.out_features == 4
    assert not specific.config.class_agnostic_boxes
    assert specific.roi_heads.box_predictor.bbox_pred.out_features == (specific.config.num_classes + 1) * 4
    capsys.readouterr()
    for saved, flag in (("specific", "--class-agnostic-boxes"), ("default", "--no-class-agnostic-boxes")):
        assert train_tee([*_args(tr, tmp_path / f"again-{saved}", 1), "--tee", str(tmp_path / saved / "model"),
                          flag]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"{flag} cannot change the box head of a saved TEE" in err[0], err


def test_attribute_head_trains_on_relationships_and_reports_region_attributes(scenes, tmp_path, capsys):
    """Colour and size as Open Images "is" relationships: the head trains, regions carry attributes,
    the extractor id and config say so, and a saved TEE's attribute list cannot be swapped."""
    tr, _ = scenes
    out = tmp_path / "attr"
    args = [*_args(tr, out, 2), "--attributes", tr["attributes_csv"], "--attribute-classes",
            tr["attribute_classes_csv"]]
    assert train_tee(args) == 0
    err = capsys.readouterr().err
    assert "train_tee: " in err and " attributes on " in err and "not matching a kept box 0" in err
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["loss_attributes"] > 0 for r in rows)
    tee = TEE.from_pretrained(str(out / "model"))
    names = [n for _, n in tee.config.attributes]
    assert "blue" in names and "small" in names and tee.attribute_head.out_features == len(names)
    assert json.loads((out / "model" / "config.json").read_text())["attributes"][0][0].startswith("/synth/attr/")
    regions = tee.extract([np.zeros((64, 64, 3), np.uint8), np.full((40, 80, 3), 200, np.uint8)])
    for r in regions:
        assert len(r.attributes) == len(r.names) == len(r.attribute_scores)
        for found, scores in zip(r.attributes, r.attribute_scores):
            assert set(found) <= set(names) and scores == sorted(scores, reverse=True)
            assert all(tee.config.attribute_thresh <= s <= 1 for s in scores)
    assert json.loads((out / "model" / "config.json").read_text())["extractor_id"] == tee.extractor_id()
    # Without the flags: no head, no attributes on regions, and the saved TEE refuses a different list.
    assert train_tee(_args(tr, tmp_path / "plain", 1)) == 0
    no_head = TEE.from_pretrained(str(tmp_path / "plain" / "model"))
    assert no_head.attribute_head is None and no_head.extract([np.zeros((64, 64, 3), np.uint8)])[0].attributes is None
    assert "attributes" not in json.loads((tmp_path / "plain" / "model" / "config.json").read_text())
    capsys.readouterr()
    assert train_tee([*_args(tr, tmp_path / "swap", 1), "--tee", str(tmp_path / "plain" / "model"),
                      "--attributes", tr["attributes_csv"], "--attribute-classes", tr["attribute_classes_csv"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fine-tuning needs the same attribute list" in err[0], err
    assert train_tee([*_args(tr, tmp_path / "half", 1), "--attributes", tr["attributes_csv"]]) == 2
    assert "--attributes and --attribute-classes go together" in capsys.readouterr().err
