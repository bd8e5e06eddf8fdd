"""The TEE's cheaper forms: batch norms folded into their convolutions for inference, and
class-agnostic box regression (one refinement per region for every class)."""
import numpy as np
import pytest
import torch
from torch import nn

from models.fusion_bn import find_conv_bn_pairs, fold_batchnorms
from models.tee import TEE, build_tee, select_regions

CLASSES = (("/c/a", "apple"), ("/c/b", "ball"), ("/c/c", "cup"))


def _trained_looking(model: TEE, seed: int = 0) -> TEE:
    """Batch norms with statistics and affine terms far from their defaults, as after training."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.25)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


def _image(seed=0, shape=(96, 140)):
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", ["tee-tiny", "tee-d0"])
def test_folding_takes_every_batch_norm_and_keeps_the_pyramid(name):
    plain = _trained_looking(build_tee(name, classes=CLASSES))
    folded = build_tee(name, classes=CLASSES).eval()
    folded.load_state_dict(plain.state_dict())
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert folded.fold_batchnorms() == norms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    with torch.inference_mode():
        pixels = plain.prepare([_image()]).pixels
        a, b = plain.pyramid(pixels), folded.pyramid(pixels)
    for level in a:
        scale = a[level].abs().max().item()
        assert (a[level] - b[level]).abs().max().item() <= 1e-4 * max(scale, 1.0), level


def test_folded_tee_gives_the_same_regions():
    plain = _trained_looking(build_tee("tee-tiny", classes=CLASSES), seed=1)
    folded = build_tee("tee-tiny", classes=CLASSES).eval()
    folded.load_state_dict(plain.state_dict())
    folded.fold_batchnorms()
    for seed in range(3):
        (a,), (b,) = plain.extract([_image(seed)]), folded.extract([_image(seed)])
        assert a.labels == b.labels
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-4)
        np.testing.assert_allclose(a.features, b.features, atol=1e-4, rtol=1e-4)


def test_folded_tee_keeps_its_id_and_refuses_training_and_saving(tmp_path):
    model = build_tee("tee-tiny", classes=CLASSES).eval()
    identity = model.extractor_id()
    model.fold_batchnorms()
    assert model.folded and model.extractor_id() == identity
    assert model.fold_batchnorms() == 0  # once only
    with pytest.raises(RuntimeError, match="cannot train"):
        model.train()
    with pytest.raises(RuntimeError, match="folded for inference"):
        model.save_pretrained(str(tmp_path / "tee"))
    assert not (tmp_path / "tee").exists()
    model.eval()  # eval stays allowed: extract() switches to it and back


class Residual(nn.Module):
    """conv -> bn, but the conv's output is also added back: folding would change the sum."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)
        self.act, self.bn2 = nn.ReLU(), nn.BatchNorm2d(3)
        self.conv2, self.bn3 = nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        z = self.bn(y) + y
        z = self.bn2(self.act(z))  # a norm after an activation: nothing to fold into
        return self.bn3(self.conv2(z))  # the one foldable pair


def test_only_a_conv_feeding_nothing_but_its_norm_is_folded():
    model = Residual().eval()
    for bn in (model.bn, model.bn2, model.bn3):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    assert find_conv_bn_pairs(model, lambda: model(x)) == [("conv2", "bn3")]
    expected = model(x)
    assert fold_batchnorms(model, lambda: model(x)) == 1
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorms(Residual().train(), lambda: None)


def test_class_agnostic_box_head_is_smaller_trains_and_extracts():
    per_class = build_tee("tee-tiny", classes=CLASSES, seed=0, class_agnostic_boxes=False)
    agnostic = build_tee("tee-tiny", classes=CLASSES, seed=0, class_agnostic_boxes=True)
    d, k = agnostic.config.feature_dim, len(CLASSES)
    removed = sum(p.numel() for p in per_class.parameters()) - sum(p.numel() for p in agnostic.parameters())
    assert removed == (d + 1) * (k + 1) * 4 - (d + 1) * 4
    agnostic.train()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 60.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # a negative image
    losses = agnostic(torch.rand(2, 3, 128, 128), [(128, 128), (100, 128)], targets)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_box_reg"] > 0
    sum(losses.values()).backward()
    assert agnostic.roi_heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0
    (r,) = agnostic.eval().extract([_image()])
    assert r.boxes.shape == (len(r.scores), 4) and (r.boxes >= 0).all() and (r.boxes <= 1).all()


def test_class_agnostic_selection_equals_the_same_box_for_every_class():
    g = torch.Generator().manual_seed(0)
    r, k = 40, 5
    xy = torch.rand(r, 2, generator=g) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(r, 2, generator=g) * 40], 1)  # (R, 4)
    probs = torch.softmax(torch.randn(r, k + 1, generator=g) * 3, 1)
    feats = torch.randn(r, 8, generator=g)
    kw = dict(candidate_thresh=0.01, nms_thresh=0.3, score_thresh=0.2, min_regions=5, num_regions=20)
    a = select_regions(boxes[:, None], probs, feats, (100, 120), **kw)
    b = select_regions(boxes[:, None].expand(r, k + 1, 4), probs, feats, (100, 120), **kw)
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_the_new_config_field_leaves_old_tees_their_ids(tmp_path):
    plain = build_tee("tee-tiny", classes=CLASSES, class_agnostic_boxes=False)
    assert "class_agnostic_boxes" not in plain.config.to_dict()  # older TEEs' config.json and ids unchanged
    agnostic = build_tee("tee-tiny", classes=CLASSES)  # the registered configs are class-agnostic
    assert agnostic.config.to_dict()["class_agnostic_boxes"] is True
    eid = agnostic.save_pretrained(str(tmp_path / "tee"))
    back = TEE.from_pretrained(str(tmp_path / "tee"))
    assert back.config.class_agnostic_boxes and back.extractor_id() == eid


def test_the_feature_job_runs_the_folded_tee_under_the_launchers_id():
    from models.tee import load_tee
    from pipelines.beam.handlers import HandlerOptions, TEEHandler

    eid = load_tee("tiny")[0].extractor_id()
    extractor = TEEHandler("tiny", eid, HandlerOptions()).load_model()
    assert extractor.model.folded and extractor.model.extractor_id() == eid
