"""Progress lines: done/total, rate and ETA; redrawn on a terminal, periodic lines in logs, none when quiet."""
import io

import pytest

from pipelines.beam import progress as beam_progress
from pipelines.cli.progress import Progress, eta_text, progress_line


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (12.4, "12s"), (185, "3m05s"), (7620, "2h07m")])
def test_eta_reads_as_a_person_would(seconds, text):
    assert eta_text(seconds) == text


def test_the_line_has_done_total_rate_and_eta():
    assert progress_line("caption", 10, 40, "images", 5.0) == "caption: 10/40 images (25%), 2.00 images/s, ETA 15s"
    assert progress_line("caption", 40, 40, "images", 5.0) == "caption: 40/40 images (100%), 8.00 images/s"
    assert progress_line("report", 7, None, "rows", 2.0) == "report: 7 rows, 3.50 rows/s"


def test_logs_get_a_plain_line_every_interval_and_nothing_at_the_end():
    clock, out = Clock(), io.StringIO()
    p = Progress("caption", total=30, stream=out, every=10.0, clock=clock)
    for _ in range(30):
        clock.now += 1.0
        p.add()
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == ["caption: 10/30 images (33%), 1.00 images/s, ETA 20s",
                     "caption: 20/30 images (67%), 1.00 images/s, ETA 10s",
                     "caption: 30/30 images (100%), 1.00 images/s"]


def test_a_terminal_gets_one_redrawn_line_ended_by_close():
    clock, out = Clock(), Terminal()
    p = Progress("caption", total=4, stream=out, clock=clock)
    for _ in range(4):
        clock.now += 0.5
        p.add()
    p.close()
    text = out.getvalue()
    assert text.count("\r") == 5 and text.endswith("caption: 4/4 images (100%), 2.00 images/s\033[K\n")
    assert "\n" not in text[:-1]  # one line, redrawn in place


def test_quiet_prints_nothing():
    clock, out = Clock(), Terminal()
    p = Progress("caption", total=3, stream=out, quiet=True, clock=clock)
    for _ in range(3):
        clock.now += 20
        p.add()
    p.close()
    assert out.getvalue() == "" and p.done == 3


def test_beam_jobs_line_gains_total_and_eta_where_the_selection_ran(monkeypatch, capsys):
    monkeypatch.setattr(beam_progress, "_TALLY", beam_progress._Tally())
    beam_progress.set_total(20)
    beam_progress.bump("read", "extract_features")
    line = capsys.readouterr().err
    assert line.startswith("[extract_features] 0/20 images (0%): read 1, failed 0, ")
    beam_progress._TALLY.last_print = 0.0
    beam_progress.bump("extracted", "extract_features")
    assert "1/20 images (5%): read 1, extracted 1, failed 0" in capsys.readouterr().err
    beam_progress._TALLY.last_print = 0.0
    beam_progress.bump("extracted", "extract_features", quiet=True)
    assert capsys.readouterr().err == ""
