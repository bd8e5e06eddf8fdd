"""The efficiency benchmark runs end to end and writes the promised JSON (no timing assertions)."""
import json
import math
import os

import pytest

from benchmarks.efficiency import BUSY_CODE, STUDY, TORCH_BUSY_CODE, BaselineVision, busy_cpu, run

KEYS = ("baseline_params", "minivlm_params", "baseline_ms", "minivlm_ms", "baseline_vision_ms", "tee_ms",
        "baseline_gflops", "minivlm_gflops", "baseline_caption_ms", "minivlm_caption_ms", "caption_ratio")


def _running(pid: int) -> bool:
    """A live (not zombie) process with this pid running the busy loop."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except FileNotFoundError:
        return False
    return state != "Z" and BUSY_CODE.encode() in cmdline


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """--threads sets this process's torch threads: give later tests theirs back."""
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_efficiency_benchmark_writes_well_formed_json(tmp_path, capsys):
    out = tmp_path / "eff.json"
    run(["--repeats", "1", "--warmup", "0", "--classes", "20", "--image", "120x160", "--regions", "8",
         "--proposals", "16", "--max-length", "2", "--busy", "1", "--threads", "2", "--json", str(out)])
    data = json.loads(out.read_text())
    for k in KEYS:
        assert isinstance(data[k], (int, float)) and math.isfinite(data[k]) and data[k] > 0, k
    assert data["minivlm_params"] < data["baseline_params"]  # structural: the student is the smaller model
    assert set(data["targets_met"]) == {"params_ratio", "time_ratio", "vision_time_ratio"}
    assert data["baseline_regions"] == data["minivlm_regions"] == 8  # equal work: forced on both sides
    assert data["threads"] == 2 and data["busy"] == 1
    # the TEE runs in the library's inference form (every batch norm folded), the trained form beside it
    assert data["settings"]["tee"] == {"batchnorms_folded": 76, "class_agnostic_boxes": True}  # tee-d0's own
    assert data["tee_unfolded_ms"] > 0 and data["tee_fold_speedup"] > 0
    caption = data["settings"]["caption"]
    assert (caption["beam"], caption["max_length"]) == (5, 2)
    if caption["forced_length"]:  # [SEP] banned: both sides decode exactly max_length steps
        assert data["caption_steps"]["baseline_caption"] == data["caption_steps"]["minivlm_caption"] == [2]
    if caption["cache"]:
        assert data["minivlm_caption_uncached_ms"] > 0
    # the busy child ran through the timed section and is gone (killed and reaped) afterwards
    (pid,) = data["settings"]["busy_pids"]
    assert data["settings"]["busy_alive"] == 1
    assert not _running(pid)
    table = capsys.readouterr().out
    for row in ("| total ms", "| regions per image (forced) | 8 | 8 |", "| caption ms, image -> caption",
                "| decoding steps per caption"):
        assert row in table, row
    assert "paper" in table and "2 threads, --busy 1" in table
    assert "| vision ms, TEE batch norms not folded |" in table and "76 batch norms folded" in table
    # the deployment rows: the same MiniVLM exported (pipelines.export's graphs) and run by ONNX Runtime
    for k in ("onnx_caption_ms", "int8_caption_ms", "onnx_vision_ms", "minivlm_mb", "onnx_mb", "int8_mb"):
        assert isinstance(data[k], float) and data[k] > 0, k
    assert data["int8_mb"] < data["onnx_mb"] and data["int8_cider_ratio"] is None  # no trained model given
    assert "| ONNX Runtime int8 (fusion linear layers) |" in table and "not given (--int8-quality JSON)" in table


@pytest.mark.slow
def test_class_agnostic_tee_is_counted_smaller(tmp_path):
    common = ["--repeats", "1", "--warmup", "0", "--classes", "20", "--image", "120x160", "--regions", "8",
              "--proposals", "16", "--no-caption"]
    per_class, agnostic = run(common + ["--no-fold", "--no-class-agnostic-boxes"]), run(common)
    assert per_class["tee_params"] - agnostic["tee_params"] == 513 * 21 * 4 - 513 * 4  # (D+1) x (K+1) x 4 -> (D+1) x 4
    assert "tee_unfolded_ms" not in per_class and not per_class["settings"]["tee"]["class_agnostic_boxes"]
    assert agnostic["settings"]["tee"]["class_agnostic_boxes"]


def test_baseline_rpn_is_bottom_up_attentions():
    """A 3x3 conv 1024 -> 512 and 12 anchors (4 sizes x 3 ratios), as in bottom-up attention's R101 model."""
    rpn = BaselineVision(num_classes=2).rpn
    assert rpn.anchor_generator.num_anchors_per_location() == [12]
    head = rpn.head
    assert (head.conv.in_channels, head.conv.out_channels, head.conv.kernel_size) == (1024, 512, (3, 3))
    assert head.cls_logits.out_channels == 12 and head.bbox_pred.out_channels == 48


def test_busy_children_are_killed_even_when_the_timed_section_fails():
    with pytest.raises(RuntimeError), busy_cpu(2) as procs:
        pids = [p.pid for p in procs]
        assert all(_running(pid) for pid in pids)
        raise RuntimeError("the timed section failed")
    assert not any(_running(pid) for pid in pids)


@pytest.mark.slow
def test_study_probe_times_the_tee_and_a_caption_beside_a_torch_neighbour():
    """One --study setting (the study runs each in its own process); no timing assertions."""
    r = run(["--probe", "--repeats", "1", "--warmup", "0", "--caption-repeats", "1", "--max-length", "2",
             "--classes", "20", "--regions", "8", "--busy-torch", "1", "--threads", "1"])
    assert r["threads"] == 1 and r["busy_torch"] == 1
    for part in ("tee", "caption"):
        assert r[part]["median_ms"] > 0 and r[part]["cpu_per_wall"] > 0
    assert len({label for label, _, _ in STUDY}) == len(STUDY)


def test_torch_neighbour_is_killed_too():
    with busy_cpu(1, TORCH_BUSY_CODE) as procs:
        (pid,) = [p.pid for p in procs]
        assert procs[0].poll() is None
    assert not os.path.exists(f"/proc/{pid}")  # killed and reaped
