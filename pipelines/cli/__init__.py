"""What every command shares at its edge: exit codes, the usage error, the sample's path.

A command turns a `UsageError` (bad flags, unusable inputs) into one line on stderr and
`EXIT_USAGE`, before any work starts; `EXIT_FAILED` means the work ran and did not
(wholly) succeed.
"""
from __future__ import annotations

import argparse
import os

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE_MANIFEST = os.path.join(REPO_ROOT, "data", "sample", "images.csv")


class UsageError(ValueError):
    """Bad flags or unusable inputs: one line on stderr, exit code 2, before any work starts."""


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError (one line) instead of printing usage and exiting."""

    def error(self, message):
        raise UsageError(message)
