"""benchmarks.replicas builds every registered tiny teacher and reports what the docs quote of it."""
import json

import teachers  # noqa: F401  (registers every replica)
from benchmarks.replicas import main
from teachers.registry import KINDS, tiny_families


def test_every_registered_replica_is_built_measured_and_byte_stable(tmp_path, capsys):
    out = tmp_path / "replicas.json"
    assert main(["--repeats", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["kind"], r["family"]) for r in rows] == [(k, f) for k in KINDS for f in tiny_families(k)]
    for r in rows:
        assert 0 < r["weights_mb"] <= r["disk_mb"] and r["build_seconds"] > 0
        assert r["sizes_identical"]  # two builds, the same sizes on disk
    printed = capsys.readouterr().out
    assert "| captioner | blip | `Salesforce/blip-image-captioning-large` |" in printed
