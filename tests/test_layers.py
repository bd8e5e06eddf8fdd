"""The layers of the house, checked on every import the code makes (function-level ones too).

schemas import nothing of ours; teachers and models import schemas only (never pipelines,
never each other); pipelines import anything below them; benchmarks import anything and
nothing imports benchmarks. Inside pipelines the commands (pipelines/*.py) stand on the
sub-packages, never on each other, and the sub-packages never import a command.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("schemas", "teachers", "models", "pipelines", "benchmarks")
LIBRARIES = {"schemas", "teachers", "models"}
# What each part may import besides itself. A new edge is a design decision: add it here.
ALLOWED = {
    "schemas": set(),
    "teachers": {"schemas"},
    "models": {"schemas"},
    "pipelines.cli": set(),
    "pipelines.data": {"schemas", "pipelines.cli"},
    "pipelines.beam": {"schemas", "teachers", "models", "pipelines.cli", "pipelines.data"},
    "pipelines.train": {"schemas", "models", "pipelines.cli", "pipelines.data"},
    "pipelines.eval": {"schemas", "models", "pipelines.data", "pipelines.train"},
    "pipelines.infer": {"schemas", "models", "pipelines.data"},
}


def _module(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str, root: Path) -> bool:
    base = root.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, module) for every import of ours in the file, at any depth; `from a import b` is a.b when b is a module."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" if _exists(f"{node.module}.{a.name}", root) else node.module
                     for a in node.names]
        else:
            continue  # relative imports are not used here
        found += [(node.lineno, n) for n in names if n.split(".")[0] in PACKAGES]
    return found


def part(module: str, commands: set[str]) -> str:
    """The layer a module belongs to: a package, a pipelines sub-package, or a command."""
    parts = module.split(".")
    if parts[0] == "pipelines" and len(parts) > 1:
        return "pipelines.<command>" if parts[1] in commands else f"pipelines.{parts[1]}"
    return parts[0]


def violations(root: Path) -> list[str]:
    commands = {p.stem for p in (root / "pipelines").glob("*.py") if p.stem != "__init__"}
    found = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            me = _module(path, root)
            mine = part(me, commands)
            for line, target in imports(path, root):
                theirs = part(target, commands)
                where = f"{path.relative_to(root)}:{line} imports {target}"
                if theirs == "benchmarks" and mine != "benchmarks":
                    found.append(f"{where}: nothing imports benchmarks")
                elif mine == "benchmarks" or theirs == mine and mine != "pipelines.<command>":
                    continue
                elif mine == "pipelines.<command>":
                    if theirs == "pipelines.<command>" and target != me:
                        found.append(f"{where}: a command never imports another command (move the shared "
                                     "piece into a pipelines sub-package)")
                elif mine.startswith("pipelines.") and (target == "pipelines" or theirs == "pipelines.<command>"):
                    found.append(f"{where}: only commands and benchmarks import commands")
                elif theirs not in ALLOWED.get(mine, set()):
                    found.append(f"{where}: {mine} may import only {sorted(ALLOWED.get(mine, ())) or 'nothing of ours'}")
    return found


def module_cycles(root: Path) -> list[list[str]]:
    """Import cycles between modules (function-level imports included)."""
    graph: dict[str, set[str]] = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            me = _module(path, root)
            graph[me] = {t for _, t in imports(path, root) if t != me and not t.startswith(me + ".")
                         and not me.startswith(t + ".")}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt in graph and nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_every_import_respects_the_layers():
    assert violations(REPO) == []


def test_no_import_cycles():
    assert module_cycles(REPO) == []


def test_pipelines_top_holds_only_commands():
    for path in sorted((REPO / "pipelines").glob("*.py")):
        if path.name == "__init__.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert "def main(" in text and 'if __name__ == "__main__":' in text, f"{path.name} is not a command"


def test_every_command_is_installed_as_a_console_script():
    from importlib.metadata import entry_points

    commands = {p.stem for p in (REPO / "pipelines").glob("*.py") if p.name != "__init__.py"}
    scripts = {ep.name: ep for ep in entry_points(group="console_scripts") if ep.value.startswith("pipelines.")}
    assert set(scripts) == {f"minivlm-{c.replace('_', '-')}" for c in commands}
    for name, ep in scripts.items():
        assert ep.value == f"pipelines.{name[len('minivlm-'):].replace('-', '_')}:main"
        assert callable(ep.load())


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    for package in PACKAGES:
        shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_a_planted_upward_import_inside_a_function_fails(tmp_path):
    root = _tree(tmp_path)
    assert violations(root) == []
    (root / "models" / "planted.py").write_text("def load():\n    import pipelines\n    return pipelines\n")
    assert violations(root) == ["models/planted.py:2 imports pipelines: models may import only ['schemas']"]


def test_sideways_and_command_imports_fail(tmp_path):
    root = _tree(tmp_path)
    (root / "teachers" / "planted.py").write_text("from models.tee import load_tee\n")
    (root / "pipelines" / "data" / "planted.py").write_text("def f():\n    from pipelines import pseudo_label\n")
    (root / "pipelines" / "report.py").write_text(
        (root / "pipelines" / "report.py").read_text() + "\n\ndef g():\n    from pipelines.caption import run\n")
    (root / "schemas" / "planted.py").write_text("import benchmarks.efficiency\n")
    found = violations(root)
    assert any(v.startswith("teachers/planted.py:1 imports models.tee: teachers may import only") for v in found)
    assert any(v.startswith("pipelines/data/planted.py:2 imports pipelines.pseudo_label: only commands") for v in found)
    assert any("pipelines/report.py" in v and "a command never imports another command" in v for v in found)
    assert any(v.startswith("schemas/planted.py:1 imports benchmarks.efficiency: nothing imports benchmarks")
               for v in found)
    assert len(found) == 4, found


def test_a_planted_cycle_is_found(tmp_path):
    root = _tree(tmp_path)
    (root / "pipelines" / "data" / "storage.py").write_text(
        (root / "pipelines" / "data" / "storage.py").read_text() + "\n\ndef f():\n    from pipelines.data import sources\n")
    cycles = module_cycles(root)
    assert any(set(c) == {"pipelines.data.storage", "pipelines.data.sources"} for c in cycles), cycles


def test_every_parquet_read_goes_through_schemas_io():
    """schemas/io.py reads Parquet on the calling thread only (why: its docstring); a read
    elsewhere could bring back the abort at exit."""
    import re

    reads = re.compile(r"pq\.(ParquetFile|read_table|read_schema|read_metadata|ParquetDataset)\(|\.iter_batches\(")
    found = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            if path.relative_to(REPO).as_posix() == "schemas/io.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if reads.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert found == []
