"""The README stays short and complete, and the documentation has no dead links.

- README.md is at most 12 KB; new material goes to a page under docs/.
- The README's command table names every command module in pipelines/.
- Every relative link in README.md and docs/*.md points at an existing file or folder,
  and every #anchor into a Markdown page names one of its headings (GitHub's slugs).
- Every docs page opens with a heading and has a table of contents (links to its own
  headings).
- Every table of measured figures sits under a section that names, before the table, the
  `python -m ...` command that prints them (a module of this repo); tables that list things
  (files, flags, fields, cases) are told apart by their first header cell.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
README_MAX_BYTES = 12 * 1024

# [text](target) and ![alt](target); the target may carry a "title" after a space.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_pages() -> list[Path]:
    return sorted(DOCS.glob("*.md"))


def markdown_files() -> list[Path]:
    return [README, *doc_pages()]


def prose_lines(path: Path) -> list[str]:
    """The file's lines outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`[^`]*`", lambda m: "`" + " " * (len(m.group()) - 2) + "`", line))
    return out


def links(path: Path) -> list[str]:
    return [m.group(1) for line in prose_lines(path) for m in LINK.finditer(line)]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation other than
    '-' and '_' removed, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2, ... suffixes for repeats."""
    seen: dict[str, int] = {}
    found = set()
    fenced = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def is_external(target: str) -> bool:
    return re.match(r"^(https?:|mailto:)", target, re.I) is not None


def commands() -> list[str]:
    return sorted(p.stem for p in (REPO / "pipelines").glob("*.py") if p.name != "__init__.py")


def test_readme_is_at_most_12_kb():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, (
        f"README.md is {size} bytes, over {README_MAX_BYTES}: move material to a page under docs/")


def command_table() -> list[str]:
    """The table rows of the README's "## Commands" section."""
    rows, inside = [], False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line[3:].strip().lower() == "commands"
        elif inside and line.lstrip().startswith("|"):
            rows.append(line)
    return rows


def test_readme_command_table_names_every_command():
    rows = command_table()
    assert rows, 'README.md has no table in a "## Commands" section'
    missing = [c for c in commands() if not any(re.search(rf"\bpipelines\.{re.escape(c)}\b", r) for r in rows)]
    assert not missing, f"the README's command table lacks: {', '.join('pipelines.' + c for c in missing)}"


def test_commands_are_found():
    """The command list the table test checks against is not empty (the glob works)."""
    assert "pseudo_label" in commands()


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path):
    dead = []
    for target in links(path):
        if is_external(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            dead.append(f"{target} (no such file or folder)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            dead.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    assert not dead, f"{path.relative_to(REPO)}: dead links: " + "; ".join(dead)


def test_there_are_docs_pages():
    assert len(doc_pages()) >= 2


@pytest.mark.parametrize("path", doc_pages(), ids=lambda p: p.name)
def test_docs_page_opens_with_heading_and_table_of_contents(path):
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines and re.match(r"^# \S", lines[0]), f"{path.name} must begin with a '# ' heading"
    own = [t for t in links(path) if t.startswith("#")]
    assert own, f"{path.name} has no table of contents (no link to a #heading of its own)"


@pytest.mark.parametrize("path", doc_pages(), ids=lambda p: p.name)
def test_docs_page_links_back_to_readme(path):
    assert any(t.split("#")[0] == "../README.md" for t in links(path)), f"{path.name} does not link to the README"


def test_readme_links_every_docs_page():
    linked = {(README.parent / t.split("#")[0]).resolve() for t in links(README) if not is_external(t)}
    missing = [p.name for p in doc_pages() if p.resolve() not in linked]
    assert not missing, f"README.md does not link to: {', '.join(missing)}"


@pytest.mark.parametrize("heading, anchor", [
    ("The labeling job's overhead", "the-labeling-jobs-overhead"),
    ("Region features (`extract_features`)", "region-features-extract_features"),
    ("Initialising the fusion (`--init`)", "initialising-the-fusion---init"),
    ("The model (`models/minivlm.py`)", "the-model-modelsminivlmpy"),
])
def test_slug_follows_github(heading, anchor):
    assert slug(heading) == anchor


# A table whose first header cell is one of these lists things (files, flags, fields, cases,
# published model facts): nothing in it was measured, so it needs no command.
DESCRIPTIVE_TABLES = {"file", "flag", "field", "concept", "case", "input", "stage", "kind", "command",
                      "`--output` holds", "transient: retried"}
TABLE_RULE = re.compile(r"^\|[\s:|-]+\|?\s*$")
PYTHON_M = re.compile(r"python -m ([\w.]+)")


def tables(path: Path) -> list[tuple[int, str, str, list[str]]]:
    """(line number, section heading, the section's text before the table, header cells) of every
    table outside code fences; a section runs from one heading of any level to the next."""
    lines = path.read_text(encoding="utf-8").splitlines()
    out, heading, before, fenced, i = [], "(top)", [], False, 0
    while i < len(lines):
        line = lines[i]
        if FENCE.match(line.strip()):
            fenced = not fenced
        m = None if fenced else HEADING.match(line)
        if m:
            heading, before = m.group(2), []
        elif not fenced and line.startswith("|") and i + 1 < len(lines) and TABLE_RULE.match(lines[i + 1]):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            out.append((i + 1, heading, "\n".join(before), cells))
            while i < len(lines) and lines[i].startswith("|"):
                before.append(lines[i])
                i += 1
            continue
        before.append(line)
        i += 1
    return out


def module_exists(name: str) -> bool:
    parts = name.split(".")
    return (REPO.joinpath(*parts).with_suffix(".py").is_file()
            or (REPO.joinpath(*parts) / "__main__.py").is_file())


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: p.name)
def test_every_table_of_figures_names_the_command_that_prints_them(path):
    for line, heading, before, cells in tables(path):
        if cells[0].lower() in DESCRIPTIVE_TABLES:
            continue
        named = PYTHON_M.findall(before)
        assert named, (f"{path.name}:{line}: a table of figures ({cells[0]!r} ...) under {heading!r} with no "
                       "`python -m ...` command before it in its section")
        missing = [n for n in named if not module_exists(n)]
        assert not missing, f"{path.name}:{line}: the section names commands that do not exist: {missing}"


def test_the_table_finder_tells_figures_from_lists(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# T\n\n## A\n\n`python -m benchmarks.compare a b`\n\n| x | y |\n|---|---:|\n| 1 | 2.0 |\n\n"
                    "## B\n\n```\n| not | a table |\n|---|---|\n```\n\n| flag | default |\n|---|---|\n"
                    "| --a | 1 |\n\n| run | ms |\n|---|---:|\n| a | 3.5 |\n")
    found = tables(page)
    assert [(h, c[0], bool(PYTHON_M.findall(b))) for _, h, b, c in found] == [
        ("A", "x", True), ("B", "flag", False), ("B", "run", False)]
    assert module_exists("benchmarks.compare") and module_exists("pipelines.export")
    assert not module_exists("benchmarks.nothing_here")
