"""The TEE speed benchmark's forms table: every form of one TEE, side by side (no timing assertions)."""
import json

from benchmarks.tee_speed import FORMS, main


def test_forms_times_every_form_and_counts_the_smaller_box_head(tmp_path, capsys):
    out = tmp_path / "forms.json"
    assert main(["--forms", "--tee", "tee-tiny", "--classes", "5", "--repeats", "1", "--json", str(out)]) == 0
    rows = {r["form"]: r for r in json.loads(out.read_text())}
    assert set(rows) == set(FORMS)
    d = 64  # tee-tiny's region feature
    assert rows["as trained"]["params"] - rows["class-agnostic"]["params"] == (d + 1) * 6 * 4 - (d + 1) * 4
    assert rows["folded"]["params"] == rows["as trained"]["params"]  # counted as saved, not as folded
    assert rows["as trained"]["speedup"] == 1.0 and all(r["ms_median"] > 0 for r in rows.values())
    assert "| tee-tiny | class-agnostic, folded |" in capsys.readouterr().out
