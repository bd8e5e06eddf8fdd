"""benchmarks.compare: paired differences between two runs' per-image scores, on files made by hand."""
import json

import pytest

from benchmarks.caption_learning import paired_difference
from benchmarks.compare import main


def write(path, value):
    path.write_text(json.dumps(value))
    return str(path)


def test_a_constant_shift_is_exact_and_reads_nested_keys(tmp_path, capsys):
    a = write(tmp_path / "a.json", {"per_image_cider_d": {"x": 1.0, "y": 2.0, "z": 3.0}})
    b = write(tmp_path / "b.json", {"per_image": {"distilled": {"x": 2.0, "y": 3.0, "z": 4.0, "w": 9.0}}})
    out = tmp_path / "out.json"
    assert main([a, b, "--key-b", "per_image.distilled", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == 3 and r["only_b"] == 1 and r["only_a"] == 0  # w is scored on one side only
    assert r["difference"] == {"point": 1.0, "low": 1.0, "high": 1.0}  # every pair differs by exactly +1
    assert r["ratio"]["point"] == 1.5 and r["correlation"] == pytest.approx(1.0)
    assert r["b"] == {"file": b, "key": "per_image.distilled"}
    printed = capsys.readouterr().out
    assert "| B - A [95% paired bootstrap] | +1.000 [+1.000, +1.000] |" in printed


def test_the_interval_is_the_paired_bootstrap_the_benchmarks_use(tmp_path):
    a_scores = {str(i): float(i % 7) for i in range(50)}
    b_scores = {str(i): float((i * 3) % 5) for i in range(50)}
    a = write(tmp_path / "a.json", {"per_image_cider_d": a_scores})
    b = write(tmp_path / "b.json", {"per_image_cider_d": b_scores})
    out = tmp_path / "out.json"
    assert main([a, b, "--seed", "3", "--json", str(out)]) == 0
    d = json.loads(out.read_text())["difference"]
    assert [d["low"], d["point"], d["high"]] == paired_difference(b_scores, a_scores, seed=3)
    assert d["low"] < d["point"] < d["high"]


@pytest.mark.parametrize("a_value, b_value, key, message", [
    ({"per_image_cider_d": {"x": 1.0}}, {"per_image_cider_d": {"y": 1.0}}, None, "no image is scored in both runs"),
    ({"per_image_cider_d": {"x": 1.0}}, {"other": {}}, None, "has no per_image_cider_d (there: other)"),
    ({"per_image": {"a": {"x": 1.0}}}, {"per_image": {"a": {"x": 1.0}}}, "per_image.b", "has no per_image.b"),
    ({"per_image_cider_d": {"x": "high"}}, {"per_image_cider_d": {"x": 1.0}}, None, "is not a finite number"),
    ({"per_image_cider_d": []}, {"per_image_cider_d": {"x": 1.0}}, None, "not a non-empty mapping"),
])
def test_what_cannot_be_compared_is_one_line_and_exit_2(tmp_path, capsys, a_value, b_value, key, message):
    a, b = write(tmp_path / "a.json", a_value), write(tmp_path / "b.json", b_value)
    assert main([a, b, *(["--key", key] if key else [])]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_missing_file_and_a_bad_flag(tmp_path, capsys):
    a = write(tmp_path / "a.json", {"per_image_cider_d": {"x": 1.0}})
    assert main([a, str(tmp_path / "absent.json")]) == 2
    assert "absent.json" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([a, a, "--nope"])
    assert e.value.code == 2
