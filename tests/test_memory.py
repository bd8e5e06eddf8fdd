"""What keeps the image jobs' memory flat on one machine: ids on disk, and the benchmark that
measures it (no memory or timing assertions: benchmarks measure, they do not judge)."""
import json
import math
import os
import subprocess
import sys

import pytest

from pipelines.data.idset import IdSet, KeyGroups
from tests.conftest import REPO


def test_idset_is_a_set_on_disk_and_leaves_nothing_behind(tmp_path):
    with IdSet(str(tmp_path)) as ids:
        assert ids.add("a") and not ids.add("a") and ids.add("b", mark=2)
        ids.add_all(f"x{i}" for i in range(25_000))  # more than one batch
        assert "a" in ids and "zz" not in ids and ids.mark("b") == 2 and ids.mark("zz") is None
        assert ids.mark("a") == 0 and len(ids) == 25_002
        assert len(os.listdir(tmp_path)) == 1  # its private directory
    assert os.listdir(tmp_path) == []


def test_key_groups_find_shared_keys_exactly_on_disk(tmp_path):
    with KeyGroups(str(tmp_path)) as groups:
        groups.add_all((f"k{i % 10_007}", f"id{i}") for i in range(25_000))  # more than one batch
        groups.add_all([("solo", "z"), ("pair", "y"), ("pair", "x")])
        assert len(os.listdir(tmp_path)) == 1
        assert groups.distinct() == 10_007 + 2
        # 25,000 ids over 10,007 keys: 4,986 keys hold 3 ids, the other 5,021 hold 2; "pair" holds 2.
        assert groups.shared(2) == (10_007 + 1, 25_000 + 2) and groups.shared(3) == (4_986, 3 * 4_986)
        assert groups.largest(2, min_size=3) == [("k0", 3, "id0"), ("k1", 3, "id1")]
        members = list(groups.members(3))
        assert len(members) == 3 * 4_986 and members[:3] == [("k0", "id0", 3, "id0"), ("k0", "id10007", 3, "id0"),
                                                             ("k0", "id20014", 3, "id0")]
        assert [m for m in groups.members() if m[0] == "pair"] == [("pair", "x", 2, "x"), ("pair", "y", 2, "x")]
    assert os.listdir(tmp_path) == []


@pytest.mark.slow  # two fresh interpreters, each importing torch and Beam
def test_memory_benchmark_fits_a_slope(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--teachers", "off", "--sizes", "20", "60",
                           "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| slope (least squares, 2 sizes) |" in proc.stdout
    report = json.loads(out.read_text())
    assert math.isfinite(report["slope_kb_per_image"]) and report["dedupe"] == "auto"
    assert [r["images"] for r in report["results"]] == [20, 60]
    for r in report["results"]:
        assert r["dedupe"] == "disk" and r["counts"]["labeled"] == r["images"]
        assert r["counts"]["extra_copies_removed"] == 0
