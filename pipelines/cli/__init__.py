"""What every command shares at its edge: exit codes, the usage error, one strict parser.

A command turns a `UsageError` (bad flags, unusable inputs) into one line on stderr and
`EXIT_USAGE`, before any work starts; `EXIT_FAILED` means the work ran and did not
(wholly) succeed. `CommandParser` is argparse that never guesses: no prefix abbreviations,
an unknown or misspelled flag is refused with a suggestion, and Beam jobs pass on only
flags that some Beam `PipelineOptions` class really defines.

Kept light on purpose: importing this module (and parsing `--help`) loads no torch, Beam
or transformers; checks that need them import them when they run.
"""
from __future__ import annotations

import argparse
import difflib
import os
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLE_MANIFEST = os.path.join(REPO_ROOT, "data", "sample", "images.csv")


class UsageError(ValueError):
    """Bad flags or unusable inputs: one line on stderr, exit code 2, before any work starts."""


def usage_error(prog: str, error: BaseException, file=None) -> int:
    """Report `error` as the command's one line; returns EXIT_USAGE."""
    print(f"{prog}: error: {error}", file=file or sys.stderr)
    return EXIT_USAGE


def one_line(error: BaseException) -> str:
    """An exception as one line: ours are already, a library's may span several."""
    msg = str(error) if isinstance(error, (ValueError, FileNotFoundError)) else f"{type(error).__name__}: {error}"
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


def suggestion(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def unknown_arguments(extra: list[str], known: list[str]) -> str:
    """One line naming what was not understood (the first flag, with the closest known one)."""
    for token in extra:
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            return f"unknown flag {name}{suggestion(name, known)}"
    return f"unexpected argument {extra[0]!r}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in --help where there is one to show (not on required flags, switches, or None)."""

    def _get_help_string(self, action):
        if action.required or action.default in (None, argparse.SUPPRESS) or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


class CommandParser(argparse.ArgumentParser):
    """argparse for our commands: no abbreviations, defaults in --help, one-line errors."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # a prefix must never silently mean another flag
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(message)

    def flags(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]

    def parse_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        _refuse_unknown_flags(args, self.flags())  # first: a misspelled required flag is named as such
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            raise UsageError(unknown_arguments(extra, self.flags()))
        return ns

    def parse_with_beam(self, args=None) -> tuple[argparse.Namespace, list[str]]:
        """(our flags, Beam pipeline flags); anything that is neither is a UsageError, as is an
        unknown --runner. Beam itself would drop an unknown flag with a warning and run."""
        args = sys.argv[1:] if args is None else list(args)
        if not {"-h", "--help"} & set(args):  # --help needs no Beam import
            _refuse_unknown_flags(args, self.flags() + beam_flags(_beam_parser()))
        ns, rest = self.parse_known_args(args)
        check_beam_flags(rest, self.flags())
        return ns, rest


def _refuse_unknown_flags(args: list[str], known: list[str]) -> None:
    """Name the first --flag nobody defines, before argparse would complain about something else
    (a misspelled required flag otherwise reads as "the following arguments are required")."""
    known_set = set(known) | {"--help"}
    for token in args:
        if token == "--":
            return
        if token.startswith("--") and token.split("=", 1)[0] not in known_set:
            raise UsageError(unknown_arguments([token], known))


def beam_flags(parser) -> list[str]:
    return [s for a in parser._actions for s in a.option_strings if s.startswith("--")]


def _beam_parser():
    # As Beam's own PipelineOptions.get_all_options builds it: every options class adds its flags.
    from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

    parser = _BeamArgumentParser(allow_abbrev=False)
    classes: dict[str, type] = {}
    for cls in PipelineOptions.__subclasses__():
        classes.setdefault(str(cls), cls)
    for cls in classes.values():
        cls._add_argparse_args(parser)  # noqa: SLF001 (Beam's documented extension point)
    return parser


def check_beam_flags(rest: list[str], ours: list[str]) -> None:
    parser = _beam_parser()
    known, extra = parser.parse_known_args(rest)
    if extra:
        raise UsageError(unknown_arguments(extra, ours + beam_flags(parser)))
    if known.runner is not None:
        check_runner(known.runner)


def check_runner(name: str) -> None:
    """A runner Beam knows (by name, case-insensitive, with or without 'Runner') or a dotted class path."""
    import importlib

    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import _RUNNER_MAP

    if name.lower() in _RUNNER_MAP or name.lower() + "runner" in _RUNNER_MAP:
        return
    if "." in name:
        module, _, cls = name.rpartition(".")
        try:
            getattr(importlib.import_module(module), cls)
            return
        except (ImportError, AttributeError) as e:
            raise UsageError(f"--runner {name}: cannot import it ({type(e).__name__}: {e})") from e
    raise UsageError(f"unknown --runner {name}{suggestion(name, list(StandardOptions.KNOWN_RUNNER_NAMES))} "
                     f"(known: {', '.join(StandardOptions.KNOWN_RUNNER_NAMES)}, or a dotted class path)")


def check_device(device: str, *, local: bool = True) -> None:
    """--device: auto | cpu | cuda | cuda:N. When the work runs on this machine (`local`), a CUDA
    device this machine lacks is a UsageError now, not a traceback later."""
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise UsageError(f"--device must be auto, cpu, cuda or cuda:N, not {device!r}")
    if not local or not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise UsageError(f"--device {device}: this machine has no CUDA device; use --device cpu (or auto)")
    index = int(device[5:]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")


def add_decoding_flags(ap: argparse.ArgumentParser) -> None:
    """The student's decoding flags, one spelling for every command that captions with it
    (the teachers' --num-beams / --max-new-tokens mean the same; docs/cli.md)."""
    ap.add_argument("--num-beams", "--beam-size", dest="num_beams", type=int, default=5,
                    help="beam width (alias: --beam-size, kept for compatibility)")
    ap.add_argument("--max-new-tokens", "--max-length", dest="max_new_tokens", type=int, default=20,
                    help="at most this many word pieces per caption (alias: --max-length, kept for compatibility)")
    ap.add_argument("--greedy", action="store_true", help="greedy decoding instead of beam search")
    ap.add_argument("--batch-size", type=int, default=8, help="images per forward pass")
    ap.add_argument("--threads", type=int, default=None,
                    help="CPU threads for the model (unset: PyTorch's default, one per core); where other work "
                         "shares the cores, fewer threads avoid a collapse (docs/benchmarks.md)")
