import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_CSV = REPO / "data" / "sample" / "images.csv"


def pytest_configure(config):
    # Tests never reach a model hub; tiny teachers are built once per session here.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("MINIVLM_CACHE", str(Path(config.rootpath) / ".pytest_cache" / "minivlm"))


def run_cli(*args, cwd=REPO, timeout=600, env=None):
    """Run the labeling job as a user does: a separate process, real CLI."""
    cmd = [sys.executable, "-m", "pipelines.pseudo_label", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="session")
def sample_run(tmp_path_factory):
    """The bundled sample labeled once with the tiny teachers; shared by the tests that read it."""
    out = tmp_path_factory.mktemp("sample_run") / "out"
    proc = run_cli("--runner", "DirectRunner", "--captioner", "tiny", "--tagger", "tiny", "--output", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc
