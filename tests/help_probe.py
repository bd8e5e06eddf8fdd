"""Run a command's --help in a fresh interpreter and report what it imported: --help must
answer without torch, transformers or apache_beam (shared by the flag tests)."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import REPO

HEAVY = ("torch", "apache_beam", "transformers")
PROBE = f"""
import json, runpy, sys
module = sys.argv[1]
sys.argv = [module, "--help"]
try:
    runpy.run_module(module, run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({{"code": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)
"""


def run_help(command: str) -> tuple[dict, subprocess.CompletedProcess]:
    """(the probe's {"code", "heavy"} report, the finished process) for `python -m pipelines.<command> --help`."""
    proc = subprocess.run([sys.executable, "-c", PROBE, f"pipelines.{command}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, check=False)
    return json.loads(proc.stderr.splitlines()[-1]), proc
