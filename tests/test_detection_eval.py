import math

import numpy as np
import pytest

from pipelines.eval.detection import average_precision, box_iou, evaluate_detections

A = [0, 0, 10, 10]
B = [20, 20, 30, 30]
NOWHERE = [50, 50, 60, 60]


def _det(boxes, scores, labels):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "scores": np.array(scores, float),
            "labels": np.array(labels, int)}


def _gt(boxes, labels):
    return {"boxes": np.array(boxes, float).reshape(-1, 4), "labels": np.array(labels, int)}


def test_average_precision_by_hand():
    # 2 GT; detections by score: TP, FP, TP.
    # precision 1/1, 1/2, 2/3 at recall 0.5, 0.5, 1.0
    # envelope: 1 up to recall 0.5, 2/3 up to 1.0 -> AP = 0.5 * 1 + 0.5 * 2/3 = 5/6
    assert average_precision([0.9, 0.8, 0.7], [True, False, True], 2) == pytest.approx(5 / 6)
    # Input order does not matter, only scores: same detections shuffled.
    assert average_precision([0.7, 0.9, 0.8], [True, True, False], 2) == pytest.approx(5 / 6)
    # FP first: precision 0, 1/2, 2/3 at recall 0, 0.5, 1.0 -> envelope 2/3 everywhere -> AP 2/3
    assert average_precision([0.9, 0.8, 0.7], [False, True, True], 2) == pytest.approx(2 / 3)
    # One of two objects found, nothing else: recall stops at 0.5 -> AP 0.5
    assert average_precision([0.5], [True], 2) == pytest.approx(0.5)
    assert average_precision([], [], 3) == 0.0


def test_average_precision_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        average_precision([0.1, 0.2], [True], 1)
    with pytest.raises(ValueError, match="at least one ground-truth"):
        average_precision([0.1], [False], 0)
    with pytest.raises(ValueError, match="2 true positives but only 1"):
        average_precision([0.1, 0.2], [True, True], 1)


def test_hand_computed_case_through_matching():
    gt = [_gt([A, B], [1, 1])]
    dets = [_det([A, NOWHERE, B], [0.9, 0.8, 0.7], [1, 1, 1])]
    result = evaluate_detections(dets, gt, num_classes=1)
    assert result["map"] == pytest.approx(5 / 6)
    assert result["per_class"][1] == {"ap": pytest.approx(5 / 6), "num_gt": 2, "num_det": 3}
    assert result["iou_threshold"] == 0.5 and result["num_images"] == 1


def test_perfect_detector_scores_one():
    gt = [_gt([A, B], [1, 2]), _gt([B], [2]), _gt([], [])]
    dets = [_det([A, B], [0.3, 0.9], [1, 2]), _det([B], [0.5], [2]), _det([], [], [])]
    result = evaluate_detections(dets, gt, num_classes=2)
    assert result["map"] == 1.0
    assert {c: v["ap"] for c, v in result["per_class"].items()} == {1: 1.0, 2: 1.0}


def test_duplicates_are_false_positives():
    # A found twice (0.9, 0.8) before B (0.7): TP, FP, TP -> 5/6 as by hand above, not 1.0
    gt = [_gt([A, B], [1, 1])]
    dets = [_det([A, [0, 0, 10, 9.5], B], [0.9, 0.8, 0.7], [1, 1, 1])]
    assert evaluate_detections(dets, gt, num_classes=1)["map"] == pytest.approx(5 / 6)


def test_wrong_class_does_not_match():
    result = evaluate_detections([_det([A], [0.9], [2])], [_gt([A], [1])], num_classes=2)
    assert result["per_class"][1] == {"ap": 0.0, "num_gt": 1, "num_det": 0}
    assert result["per_class"][2] == {"ap": None, "num_gt": 0, "num_det": 1}
    assert result["map"] == 0.0


def test_class_without_ground_truth_is_left_out_of_the_mean():
    gt = [_gt([A], [1])]
    dets = [_det([A, B], [0.9, 0.9], [1, 3])]
    result = evaluate_detections(dets, gt, num_classes=3)
    assert result["per_class"][3] == {"ap": None, "num_gt": 0, "num_det": 1}
    assert result["per_class"][2] == {"ap": None, "num_gt": 0, "num_det": 0}
    assert result["map"] == 1.0


def test_no_ground_truth_at_all_is_nan():
    result = evaluate_detections([_det([A], [0.9], [1]), {}], [_gt([], []), _gt([], [])], num_classes=1)
    assert math.isnan(result["map"]) and result["per_class"][1]["ap"] is None


@pytest.mark.parametrize("height,expected", [(4.9, 0.0), (5.0, 1.0), (5.1, 1.0)])
def test_iou_threshold_edges(height, expected):
    # IoU of [0,0,10,h] with [0,0,10,10] is h/10.
    assert box_iou(np.array([[0, 0, 10, height]], float), np.array([A], float))[0, 0] == pytest.approx(height / 10)
    result = evaluate_detections([_det([[0, 0, 10, height]], [0.9], [1])], [_gt([A], [1])], num_classes=1)
    assert result["map"] == expected


def test_threshold_is_a_parameter():
    det, gt = [_det([[0, 0, 10, 6]], [0.9], [1])], [_gt([A], [1])]
    assert evaluate_detections(det, gt, 1, iou_threshold=0.5)["map"] == 1.0
    assert evaluate_detections(det, gt, 1, iou_threshold=0.75)["map"] == 0.0


def test_second_detection_takes_the_other_overlapping_object():
    # Two overlapping objects; both detections overlap the left one most, but the second
    # still covers the right one enough: matched to it (VOC's devkit would call it a FP).
    left, right = [0, 0, 10, 10], [4, 0, 14, 10]
    dets = [_det([[1, 0, 11, 10], [2, 0, 12, 10]], [0.9, 0.8], [1, 1])]
    result = evaluate_detections(dets, [_gt([left, right], [1, 1])], num_classes=1)
    assert result["map"] == 1.0


def test_dicts_keyed_by_image_id():
    gt = {"img1": _gt([A], [1]), "img2": _gt([B], [1]), "neg": _gt([], [])}
    dets = {"img1": _det([A], [0.9], [1])}  # img2 missed, neg has nothing
    result = evaluate_detections(dets, gt, num_classes=1)
    # by score: TP at 0.9, then nothing: recall stops at 0.5 -> AP 0.5
    assert result["map"] == pytest.approx(0.5) and result["num_images"] == 3
    with pytest.raises(ValueError, match="without ground truth, e.g. 'other'"):
        evaluate_detections({"other": _det([], [], [])}, gt, num_classes=1)


def test_accepts_tensors():
    torch = pytest.importorskip("torch")
    det = {"boxes": torch.tensor([A], dtype=torch.float32), "scores": torch.tensor([0.5]),
           "labels": torch.tensor([1])}
    gt = {"boxes": torch.tensor([A], dtype=torch.float32), "labels": torch.tensor([1])}
    assert evaluate_detections([det], [gt], num_classes=1)["map"] == 1.0


@pytest.mark.parametrize("dets,gts,message", [
    ([_det([A], [0.9], [1])], [], "differ in length: detections has more than 0"),
    ([_det([A], [0.9], [0])], [_gt([A], [1])], "label 0 is outside 1..2"),
    ([_det([A], [0.9], [1])], [_gt([A], [3])], "ground truth, image 0: label 3 is outside 1..2"),
    ([{"boxes": [A], "scores": [0.9, 0.8], "labels": [1]}], [_gt([A], [1])], "1 boxes but 2 scores"),
    ([{"boxes": [[0, 0, 1]], "scores": [0.9], "labels": [1]}], [_gt([A], [1])], r"shape \(n, 4\)"),
    ({"x": _det([A], [0.9], [1])}, [_gt([A], [1])], "both be dicts"),
])
def test_rejects_bad_input(dets, gts, message):
    with pytest.raises(ValueError, match=message):
        evaluate_detections(dets, gts, num_classes=2)
