"""The TEE model: outputs for any input shape, negatives, persistence, identity, learning."""
import numpy as np
import pytest
import torch

from models.tee import TEE, TEEConfig, build_tee, letterbox, list_tees, load_tee, tee_config, tiny_name

CLASSES = (("/c/a", "apple"), ("/c/b", "ball"), ("/c/c", "cup"))


def _images(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in shapes]


@pytest.mark.parametrize("name", list_tees())
def test_every_registered_config_builds_and_extracts(name):
    model = build_tee(name, classes=CLASSES).eval()
    cfg = model.config
    found = model.extract(_images([(37, 301), (301, 37)]))
    assert len(found) == 2
    for r in found:
        n = len(r.scores)
        assert cfg.min_regions <= n <= cfg.num_regions
        assert r.boxes.shape == (n, 4) and r.boxes.dtype == np.float32
        assert r.features.shape == (n, cfg.feature_dim) and r.features.dtype == np.float32
        assert r.scores.dtype == np.float32 and r.classes.dtype == np.int64
        assert len(r.labels) == len(r.names) == n
        assert set(r.labels) <= {c[0] for c in CLASSES}


@pytest.mark.parametrize("batch", [1, 3])
def test_odd_sizes_and_batches_give_normalised_boxes(batch):
    model = build_tee("tee-tiny", classes=CLASSES).eval()
    shapes = [(17, 23), (129, 255), (400, 90)][:batch]
    for r in model.extract(_images(shapes, seed=batch)):
        assert np.isfinite(r.boxes).all() and np.isfinite(r.features).all()
        assert (r.boxes >= 0).all() and (r.boxes <= 1).all()
        assert (r.boxes[:, 0] <= r.boxes[:, 2]).all() and (r.boxes[:, 1] <= r.boxes[:, 3]).all()


def test_batch_equals_one_by_one():
    model = build_tee("tee-tiny", classes=CLASSES).eval()
    imgs = _images([(60, 80), (90, 50)], seed=3)
    together = model.extract(imgs)
    for img, r in zip(imgs, together):
        alone = model.extract([img])[0]
        np.testing.assert_allclose(alone.features, r.features, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(alone.boxes, r.boxes, rtol=1e-4, atol=1e-5)


def test_features_do_not_depend_on_the_first_batch_the_model_saw():
    probe = _images([(120, 90)], seed=3)
    results = []
    for first in ([(20, 300)], [(300, 300)]):  # a very elongated first batch, then a square one
        model = build_tee("tee-tiny", classes=CLASSES).eval()
        model.extract(_images(first, seed=1))
        results.append(model.extract(probe)[0])
    a, b = results
    assert np.array_equal(a.boxes, b.boxes) and np.allclose(a.features, b.features, atol=1e-6)


def test_blank_image_still_gives_min_regions():
    model = build_tee("tee-tiny", classes=CLASSES, score_thresh=0.999).eval()
    (r,) = model.extract([np.full((64, 64, 3), 127, np.uint8)])
    assert len(r.scores) == model.config.min_regions


def test_letterbox_keeps_aspect_and_reports_content():
    img = torch.zeros(3, 50, 200, dtype=torch.uint8)
    x, scale, (h, w) = letterbox(img, 128)
    assert x.shape == (3, 128, 128)
    assert scale == pytest.approx(128 / 200) and (h, w) == (32, 128)
    assert torch.all(x[:, 32:, :] == 0)  # padding is the mean colour (0 after normalising)


def test_save_load_round_trip(tmp_path):
    model = build_tee("tee-tiny", classes=CLASSES, seed=1).eval()
    eid = model.save_pretrained(str(tmp_path / "tee"))
    assert (tmp_path / "tee" / "config.json").exists() and (tmp_path / "tee" / "model.safetensors").exists()
    loaded = TEE.from_pretrained(str(tmp_path / "tee"))
    assert loaded.extractor_id() == eid == model.extractor_id()
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    img = _images([(70, 90)])
    a, b = model.extract(img)[0], loaded.extract(img)[0]
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.boxes, b.boxes)


def test_extractor_id_follows_weights_and_config():
    a = build_tee("tee-tiny", classes=CLASSES, seed=0)
    assert build_tee("tee-tiny", classes=CLASSES, seed=0).extractor_id() == a.extractor_id()
    assert build_tee("tee-tiny", classes=CLASSES, seed=1).extractor_id() != a.extractor_id()
    assert build_tee("tee-tiny", classes=CLASSES, seed=0, num_regions=30).extractor_id() != a.extractor_id()
    with torch.no_grad():
        next(a.parameters()).add_(1e-3)
    assert build_tee("tee-tiny", classes=CLASSES, seed=0).extractor_id() != a.extractor_id()


def test_load_tee_tiny_goes_through_from_pretrained(tmp_path):
    m1, prov = load_tee("tiny", cache_dir=str(tmp_path))
    m2, _ = load_tee("tiny", cache_dir=str(tmp_path))
    assert prov == "tiny-random/tee-tiny"
    (cached,) = (tmp_path / "tee").glob("tee-tiny-seed0-*")  # named by the registered config's digest
    assert (cached / "model.safetensors").exists() and m1.config.class_agnostic_boxes
    assert m1.extractor_id() == m2.extractor_id()
    with pytest.raises(FileNotFoundError, match="not a saved TEE"):
        load_tee(str(tmp_path / "nothing-here"))
    assert load_tee("tiny:tee-tiny", cache_dir=str(tmp_path))[0].extractor_id() == m1.extractor_id()


def test_one_spelling_for_small_random_tees():
    assert tiny_name("tiny") == tiny_name("tiny:tee-tiny") == "tee-tiny" and tiny_name("tiny:tee-d0") == "tee-d0"
    assert tiny_name("gs://bucket/tee") is None and tiny_name("tee-d0") is None
    with pytest.raises(ValueError, match="unknown TEE 'tiny:nope'; registered: tiny:tee-d0, tiny:tee-tiny"):
        tiny_name("tiny:nope")


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="multiple of 128"):
        tee_config("tee-tiny", image_size=100)
    with pytest.raises(ValueError, match="min_regions"):
        tee_config("tee-tiny", min_regions=30, num_regions=20)
    with pytest.raises(ValueError, match="at least one class"):
        TEE(tee_config("tee-tiny"))
    with pytest.raises(ValueError, match="unknown TEE config"):
        build_tee("tee-huge")
    with pytest.raises(ValueError, match="unknown TEE config keys"):
        TEEConfig.from_dict({"name": "x", "colour": "red"})


def _batch(model, seed=0):
    rng = np.random.default_rng(seed)
    imgs, targets = [], []
    for i in range(4):
        img = np.full((128, 128, 3), 90, np.uint8)
        if i == 3:  # a negative sample: no objects at all
            targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
        else:
            x0, y0 = rng.integers(0, 60, size=2)
            img[y0:y0 + 50, x0:x0 + 50] = (250, 20, 20) if i % 2 else (20, 20, 250)
            targets.append({"boxes": torch.tensor([[x0, y0, x0 + 50, y0 + 50]], dtype=torch.float32),
                            "labels": torch.tensor([1 + i % 2])})
        imgs.append(img)
    batch = model.prepare(imgs)
    return batch, targets


def test_negative_only_batch_has_finite_losses():
    model = build_tee("tee-tiny", classes=CLASSES).train()
    batch, targets = _batch(model)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * len(targets)
    losses = model(batch.pixels, batch.sizes, empty)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    model = build_tee("tee-tiny", classes=CLASSES).train()
    batch, targets = _batch(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    history = []
    for _ in range(12):
        loss = sum(model(batch.pixels, batch.sizes, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(float(loss))
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3]), history


def test_forward_without_targets_points_to_extract():
    model = build_tee("tee-tiny", classes=CLASSES)
    batch, _ = _batch(model)
    with pytest.raises(ValueError, match="extract"):
        model(batch.pixels, batch.sizes)
