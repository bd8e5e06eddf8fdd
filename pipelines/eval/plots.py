"""How the data card looks: its matplotlib plots and the HTML page around them.

pipelines.report reads and aggregates; everything here takes those plain aggregates.
Figures are built with the object API on an Agg canvas, never through pyplot, so no
global figure state or GUI backend is involved and the report runs headless anywhere.
The page is one file: plots and thumbnails as data: URIs, inline CSS, one inline script
(allowed by its hash in the page's Content-Security-Policy, which also forbids loading
anything from elsewhere). Every caption, tag, path and message is untrusted text and
goes through html.escape.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
import re
import warnings
from collections.abc import Sequence

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Tried in order for each character (matplotlib's font fallback): a caption's word in any
# script draws as itself where these are installed (.ci/run installs the Noto and Droid
# fonts), as a box where not. Arabic is drawn unshaped, left to right: a plot label only.
FONTS = ("DejaVu Sans", "Noto Sans", "Noto Sans Arabic", "Noto Sans Hebrew", "Noto Sans Devanagari",
         "Noto Sans Bengali", "Noto Sans Thai", "Noto Sans CJK JP", "Droid Sans Fallback")
COLOR = "#3b6ea8"
SECOND = "#e08a2c"
DPI = 100


@functools.cache
def _installed_fonts() -> list[str]:
    from matplotlib import font_manager

    installed = {f.name for f in font_manager.fontManager.ttflist}
    return [name for name in FONTS if name in installed] or ["sans-serif"]


def _any_script(draw):
    """Draw the figure with the fallback fonts (only while drawing: no global setting is left)."""
    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context({"font.family": _installed_fonts()}):
            return draw(*args, **kwargs)
    return wrapped


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        # Captions in any script: a missing glyph draws a box, which is all a plot label needs.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(width: float = 6.4, height: float = 3.2) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), layout="constrained")
    return fig, fig.add_subplot()


@_any_script
def int_histogram(series: dict[str, dict[int, int]], *, title: str, xlabel: str, ylabel: str = "count") -> bytes:
    """Bars of integer-valued counts (caption lengths, tags per image); several series side by side."""
    fig, ax = _figure()
    width = 0.8 / max(1, len(series))
    for i, (name, counts) in enumerate(series.items()):
        xs = sorted(counts)
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], [counts[x] for x in xs], width=width,
               color=(COLOR, SECOND)[i % 2], label=name)
    if len(series) > 1:
        ax.legend()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.yaxis.get_major_locator().set_params(integer=True)
    values = sorted({x for counts in series.values() for x in counts})
    if values and len(values) <= 25:
        ax.set_xticks(values)  # a tick under every bar; with one bar the default ticks would be fractions
        ax.set_xlim(values[0] - 1, values[-1] + 1)
    else:
        ax.xaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


@_any_script
def value_histogram(series: dict[str, Sequence[float]], *, title: str, xlabel: str, bins: int = 40) -> bytes:
    """A histogram of sampled real values (scores, similarities)."""
    fig, ax = _figure()
    for i, (name, values) in enumerate(series.items()):
        ax.hist(list(values), bins=bins, color=(COLOR, SECOND)[i % 2], alpha=0.75 if len(series) > 1 else 1.0,
                label=name)
    if len(series) > 1:
        ax.legend()
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    return _png(fig)


@_any_script
def weighted_histogram(series: dict[str, dict[float, int]], *, title: str, xlabel: str, ylabel: str = "count",
                       bins: int = 40, pad: float = 0.5, marks: dict[str, float] | None = None) -> bytes:
    """A histogram of exact value -> count tallies (image sizes, aspect ratios), shared bins across series.

    `pad` widens the range on both sides (half a unit for integers), so no value sits on the edge.
    """
    fig, ax = _figure()
    values = [v for counts in series.values() for v in counts]
    low, high = min(values), max(values)
    edges = np.linspace(low - pad, high + pad, bins + 1)
    for i, (name, counts) in enumerate(series.items()):
        ax.hist(list(counts), bins=edges, weights=list(counts.values()), color=(COLOR, SECOND)[i % 2],
                alpha=0.7 if len(series) > 1 else 1.0, label=name)
    for label, x in (marks or {}).items():
        if low <= x <= high:
            ax.axvline(x, color="#888", linestyle=":", linewidth=1)
            ax.text(x, 0.98, f" {label}", transform=ax.get_xaxis_transform(), ha="left", va="top", fontsize=8,
                    color="#555")
    if len(series) > 1:
        ax.legend()
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.yaxis.get_major_locator().set_params(integer=True)
    return _png(fig)


@_any_script
def top_bars(items: Sequence[tuple[str, int]], *, title: str, xlabel: str = "count") -> bytes:
    """Horizontal bars, largest on top; the figure grows with the number of items so labels stay legible."""
    fig, ax = _figure(6.4, max(2.0, 0.6 + 0.22 * len(items)))
    labels = [_short(name) for name, _ in reversed(items)]
    ax.barh(range(len(items)), [c for _, c in reversed(items)], color=COLOR)
    ax.set_yticks(range(len(items)), labels, fontsize=8)
    ax.set_ylim(-0.6, len(items) - 0.4)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set(title=title, xlabel=xlabel)
    return _png(fig)


@_any_script
def failure_bars(by_stage: dict[str, int], by_type: dict[str, int]) -> bytes:
    fig = Figure(figsize=(9.6, max(2.4, 0.6 + 0.25 * max(len(by_stage), len(by_type)))), layout="constrained")
    for ax, counts, title in zip(fig.subplots(1, 2), (by_stage, by_type), ("by stage", "by error type")):
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ax.barh(range(len(items)), [c for _, c in reversed(items)], color=SECOND)
        ax.set_yticks(range(len(items)), [_short(k) for k, _ in reversed(items)], fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set(title=f"Failures {title}", xlabel="images")
    return _png(fig)


@_any_script
def pr_curve(curve: Sequence[dict], threshold: float, at_threshold: dict) -> bytes:
    """Precision against recall over the tagger's thresholds, the run's own threshold marked."""
    fig, ax = _figure(5.2, 4.0)
    points = sorted((p["recall"], p["precision"]) for p in curve
                    if p.get("precision") is not None and p.get("recall") is not None)
    if points:
        ax.plot([r for r, _ in points], [p for _, p in points], color=COLOR, marker=".", label="tagger")
    if at_threshold.get("precision") is not None and at_threshold.get("recall") is not None:
        ax.plot([at_threshold["recall"]], [at_threshold["precision"]], "o", color=SECOND, markersize=9,
                label=f"run threshold {threshold:g}")
    ax.set(title="Tag precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower left")
    else:  # no threshold had both a precision and a recall: say so rather than draw an empty frame
        ax.text(0.5, 0.5, "no tag matched a verified label", ha="center", va="center", transform=ax.transAxes)
    return _png(fig)


def _short(text: str, limit: int = 40) -> str:
    # Long tag names or error types would squeeze the bars to nothing.
    # `$` would start matplotlib mathtext; a stray pair in a tag name must not.
    text = text if len(text) <= limit else text[: limit - 1] + "\u2026"
    return text.replace("$", r"\$")


# ---- the page ----------------------------------------------------------------------------

SECTIONS = (("overview", "Overview"), ("fix", "What to fix"), ("captions", "Captions"), ("tags", "Tags"),
            ("images", "Images"), ("failures", "Failures"), ("samples", "Samples"), ("tag-quality", "Tag quality"))

# Lets a headless browser (the tests) tell that every image decoded: it reads these back.
SCRIPT = """window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesTotal = imgs.length;
  document.body.dataset.imagesLoaded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});"""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", "Noto Sans", "Droid Sans Fallback", sans-serif;
       color: #1d232a; margin: 0;
       background: #f4f6f8; }
header { background: #1f3b57; color: #fff; padding: 16px 28px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header .sub { opacity: .8; font-size: 13px; word-break: break-all; }
nav a { color: #cfe3f7; margin-right: 14px; text-decoration: none; }
main { max-width: 1240px; margin: 0 auto; padding: 8px 28px 40px; }
section { background: #fff; border-radius: 8px; padding: 8px 22px 18px; margin: 18px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { border-bottom: 2px solid #e3e8ee; padding-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 14px; }
th, td { border-bottom: 1px solid #e3e8ee; padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: #f0f3f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.kv th { min-width: 120px; }
.cols { display: flex; flex-wrap: wrap; gap: 0 40px; align-items: flex-start; }
.cols h3 { margin-bottom: 4px; }
details { margin: 8px 0; }
summary { cursor: pointer; color: #1f3b57; font-weight: 600; }
.warning { background: #fff4e5; border-left: 6px solid #e08a2c; padding: 10px 14px; margin: 12px 0;
           font-weight: 600; }
.warning.danger { background: #fdecea; border-left-color: #c62828; font-size: 16px; }
.note { color: #5b6773; font-size: 13px; }
.plots { display: grid; grid-template-columns: repeat(auto-fit, minmax(460px, 1fr)); gap: 14px; align-items: start; }
.plots img, figure img { max-width: 100%; height: auto; }
figure { margin: 0; }
pre { background: #f0f3f6; padding: 8px; overflow-x: auto; font-size: 12px; max-height: 320px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.card { border: 1px solid #e3e8ee; border-radius: 6px; padding: 8px; font-size: 12px; overflow-wrap: anywhere; }
.card .thumb { height: 160px; display: flex; align-items: center; justify-content: center; background: #f0f3f6; }
.placeholder { color: #a33; padding: 8px; text-align: center; font-size: 11px; }
.card ol { padding-left: 18px; margin: 4px 0; }
.card .caption { margin: 6px 0 4px; font-size: 13px; }
.card summary { font-weight: normal; font-size: 11px; }
.chip { display: inline-block; background: #e8f0f9; border-radius: 10px; padding: 0 7px; margin: 2px 2px 0 0; }
.id { font-family: ui-monospace, monospace; color: #5b6773; }
.bad { color: #a33; }
"""


# Controls and bidi formatting characters in untrusted text: shown as \uXXXX, never acted on
# (a stray U+202E would turn the rest of a line around). Tab and newline stay (JSON, messages).
INVISIBLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]")


def esc(value) -> str:
    text = html.escape("" if value is None else str(value))
    return INVISIBLE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def table(head: Sequence[str], rows: Sequence[Sequence], cls: str = "") -> str:
    """Every cell escaped; numbers right-aligned and formatted."""
    def cell(v):
        numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
        return f'<td class="num">{esc(fmt(v))}</td>' if numeric else f"<td>{esc(fmt(v))}</td>"
    body = "".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in rows)
    return (f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in head)
            + f"</tr></thead><tbody>{body}</tbody></table>")


def kv_table(pairs: Sequence[tuple[str, object]]) -> str:
    return '<table class="kv">' + "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in pairs) + "</table>"


def img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{esc(alt)}" id="plot-{esc(name)}"></figure>'


def render_page(data: dict, pngs: dict[str, bytes]) -> str:
    s = data["summary"]
    present = [(sid, title) for sid, title in SECTIONS if sid != "tag-quality" or data["tag_eval"]]
    script_hash = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    csp = f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'"
    body = [_overview(data), _fix(s, data["lowest"]), _captions(s["labels"], pngs), _tags(s["labels"], pngs),
            _images(s["curation"], pngs), _failures(s["failures"], pngs), _samples(data["grid"], s["samples"])]
    if data["tag_eval"]:
        body.append(_tag_quality(data["tag_eval"], data["run"], pngs))
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title in present)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Data card: {esc(s["inputs"]["labels"])}</title>
<style>{CSS}</style>
<script>{SCRIPT}</script>
</head><body>
<header><h1>Data card of a labeling run</h1>
<div class="sub">{esc(s["inputs"]["labels"])} &middot; generated {esc(s["generated_at"])}</div>
<nav>{nav}</nav></header>
<main>
{"".join(body)}
</main></body></html>
"""


def _overview(data: dict) -> str:
    s, run = data["summary"], data["run"]
    labels, c = s["labels"], s["counts"]
    parts = ['<section id="overview"><h2>Overview</h2>']
    if s["tiny_random"]:
        parts.append('<div class="warning danger" id="tiny-random-warning">&#9888; These labels come from '
                     "<code>tiny-random</code> teachers: randomly initialised test models. The captions and tags "
                     "are noise and must not be used for training.</div>")
    if not c["labeled"]:
        parts.append('<div class="warning" id="empty">The labels table has no rows: nothing was labeled.</div>')
    rc = run.get("counts") if run and isinstance(run.get("counts"), dict) else None
    if rc and (rc.get("labeled") not in (None, c["labeled"])
               or (s["failures"] and rc.get("failed") not in (None, c["failed"]))):
        parts.append(f'<div class="warning">run.json counts {esc(fmt(rc.get("labeled")))} labeled and '
                     f'{esc(fmt(rc.get("failed")))} failed; the tables hold {c["labeled"]:,} and {c["failed"]:,}.'
                     "</div>")
    teachers = (table(["captioner", "tagger", "images"],
                      [(t["captioner"], t["tagger"], t["images"]) for t in labels["teachers"]])
                if labels["teachers"] else '<p class="note">No rows, no teachers recorded.</p>')
    cols = ["<div><h3>Images</h3>" + kv_table([("labeled", c["labeled"]), ("failed", c["failed"]),
                                                ("total", c["total"])]) + "</div>",
            f"<div><h3>Teachers</h3>{teachers}</div>"]
    if run:
        cols.append("<div><h3>Run</h3>" + kv_table([(k, run.get(k)) for k in (
            "job", "status", "runner", "started_at", "finished_at", "wall_seconds") if k in run]) + "</div>")
    parts.append('<div class="cols">' + "".join(cols) + "</div>")
    for p in labels["teacher_params"]:
        try:
            pretty = json.dumps(json.loads(p["params"]), indent=2, sort_keys=True)
        except ValueError:
            pretty = p["params"]
        parts.append(f'<details open><summary>teacher_params of {p["images"]:,} images</summary>'
                     f"<pre>{esc(pretty)}</pre></details>")
    if rc:
        parts.append("<details><summary>Counts recorded in run.json</summary>" + table(
            ["count", "value"], [(k, v if not isinstance(v, dict) else json.dumps(v, sort_keys=True))
                                 for k, v in sorted(rc.items())]) + "</details>")
    if run and isinstance(run.get("options"), dict):
        parts.append("<details><summary>Run options</summary>" + table(
            ["option", "value"], [(k, json.dumps(v)) for k, v in sorted(run["options"].items())]) + "</details>")
    parts.append("<details><summary>Inputs</summary>" + kv_table([(k, v) for k, v in s["inputs"].items() if v])
                 + "</details></section>")
    return "".join(parts)


def _stat_rows(name: str, v: dict | None) -> list[tuple[str, object]]:
    if not v:
        return [(name, None)]
    return [(f"{name} min / mean / max", f"{v['min']:.4g} / {v['mean']:.4g} / {v['max']:.4g}"),
            (f"{name} values", v["count"])]


def _captions(labels: dict, pngs) -> str:
    caps = labels["captions"]
    if not caps["total"]:
        return '<section id="captions"><h2>Captions</h2><p>No captions.</p></section>'
    approx = " (approximate: distinct-word estimate)" if caps["counts_approximate"] else ""
    rows = [("captions", caps["total"]), ("mean words, best caption", caps["mean_words_best"]),
            ("mean words, all captions", caps["mean_words_all"]), ("vocabulary size" + approx, caps["vocabulary_size"])]
    rows += _stat_rows("score", caps["score"])
    rows += _stat_rows("similarity", caps["similarity"]) if caps["similarity"] else [
        ("similarity", "none (captions were not reranked)")]
    note = ('<p class="note">Word counts are approximate: more than 200,000 distinct words were seen, so only the '
            "most frequent were kept.</p>" if caps["counts_approximate"] else "")
    return (f'<section id="captions"><h2>Captions</h2>{kv_table(rows)}'
            '<p class="note">Words: lower-cased runs of letters and digits over all captions. Score histograms are '
            "drawn from a uniform sample of at most 20,000 values.</p>"
            + '<div class="plots">' + img(pngs, "caption_lengths", "caption length histogram")
            + img(pngs, "captions_per_image", "captions per image") + img(pngs, "caption_scores", "caption scores")
            + img(pngs, "caption_similarity", "caption similarity") + "</div>"
            + "<h3>Top 30 words</h3>" + note + '<div class="plots">' + img(pngs, "top_words", "top words")
            + table(["word", "count"], caps["top_words"]) + "</div></section>")


def _tags(labels: dict, pngs) -> str:
    tags = labels["tags"]
    if not tags["total"]:
        return '<section id="tags"><h2>Tags</h2><p>No tags.</p></section>'
    rows = [("tags", tags["total"]), ("distinct tags" + (" (estimate)" if tags["counts_approximate"] else ""),
                                      tags["distinct"])] + _stat_rows("score", tags["score"])
    return (f'<section id="tags"><h2>Tags</h2>{kv_table(rows)}<div class="plots">'
            + img(pngs, "top_tags", "top tags") + "<div>" + img(pngs, "tag_scores", "tag scores")
            + img(pngs, "tags_per_image", "tags per image") + "</div></div>"
            + "<details><summary>Top tags as a table</summary>"
            + table(["name", "label", "images"], [(t["name"], t["label"], t["count"]) for t in tags["top"]])
            + "</details></section>")


def _failures(failures: dict | None, pngs) -> str:
    head = '<section id="failures"><h2>Failures</h2>'
    if failures is None:
        return head + '<p class="note">No failures table was given.</p></section>'
    if not failures["total"]:
        return head + "<p>No failures.</p></section>"
    return (head + kv_table([("failed images", failures["total"])]) + img(pngs, "failures", "failures")
            + table(["stage", "error type", "images", "example image", "example message"],
                    [(e["stage"], e["error_type"], e["count"], e["image_id"], e["message"])
                     for e in failures["examples"]]) + "</section>")


def _samples(grid: list[dict], info: dict) -> str:
    head = (f'<section id="samples"><h2>Samples</h2><p class="note">{info["shown"]} images drawn uniformly at '
            f'random (seed {info["seed"]}); {info["unreadable"]} could not be shown. Thumbnails follow EXIF '
            "orientation.</p>")
    if not grid:
        return head + "<p>No images to show.</p></section>"
    return head + _cards(grid) + "</section>"


def _cards(rows: list[dict], flag: str | None = None) -> str:
    """Thumbnail cards; `flag` names the value each row was picked by (row["key"])."""
    cards = []
    for r in rows:
        if r["thumbnail"]:
            thumb = f'<img src="{r["thumbnail"]}" alt="{esc(r["image_id"])}">'
        else:
            thumb = f'<div class="placeholder">image unavailable<br>{esc(r["thumbnail_error"][:300])}</div>'
        # <bdi>: a right-to-left caption reads right to left without reordering its score.
        caps = [f'<bdi>{esc(c["text"])}</bdi> <span class="note">({c["score"]:.3g})</span>' for c in r["captions"]]
        caption = f'<p class="caption" dir="auto">{caps[0]}</p>' if caps else '<p class="note">no caption</p>'
        if len(caps) > 1:
            caption += (f"<details><summary>{len(caps) - 1} more</summary><ol start=\"2\">"
                        + "".join(f"<li>{c}</li>" for c in caps[1:]) + "</ol></details>")
        tags = "".join(f'<span class="chip"><bdi>{esc(t["name"])}</bdi> {t["score"]:.2f}</span>' for t in r["tags"])
        turned = ('<div class="note">decoded sideways to the recorded size: a manifest Rotation is not applied '
                  "here</div>") if r.get("orientation_differs") else ""
        picked = f'<div class="bad">{esc(flag)} {r["key"]:.4g}</div>' if flag else ""
        cards.append(f'<div class="card"><div class="thumb">{thumb}</div><div class="id">{esc(r["image_id"])} '
                     f'&middot; {r["width"]}&times;{r["height"]}</div>{picked}{turned}{caption}{tags}</div>')
    return '<div class="grid">' + "".join(cards) + "</div>"


def _tag_quality(ev: dict, run: dict | None, pngs) -> str:
    o = ev["overall"]
    rows = [("threshold", ev["threshold"])] + [(k, o.get(k)) for k in ("precision", "recall", "f1", "tp", "fp", "fn",
                                                                         "images") if k in o]
    run_threshold = ((run or {}).get("teachers", {}).get("tagger", {}) or {}).get("params", {}).get("threshold")
    note = ""
    if isinstance(run_threshold, (int, float)) and run_threshold != ev["threshold"]:
        note = (f'<div class="warning">The evaluation used threshold {ev["threshold"]:g}; the run tagged with '
                f"{run_threshold:g}.</div>")
    per_class = sorted((p for p in ev.get("per_class", []) if isinstance(p, dict)),
                       key=lambda p: -(p.get("tp", 0) + p.get("fn", 0)))[:20]
    classes = table(["name", "label", "precision", "recall", "f1", "tp", "fp", "fn"],
                    [(p.get("name"), p.get("label"), p.get("precision"), p.get("recall"), p.get("f1"), p.get("tp"),
                      p.get("fp"), p.get("fn")) for p in per_class]) if per_class else ""
    return (f'<section id="tag-quality"><h2>Tag quality</h2>{note}<div class="plots">{kv_table(rows)}'
            + img(pngs, "tag_pr_curve", "tag precision-recall curve") + "</div>"
            + (f"<details><summary>The 20 most frequent classes</summary>{classes}</details>" if classes else "")
            + "</section>")


def _fix(s: dict, lowest: dict) -> str:
    cur, images = s["curation"], s["counts"]["labeled"]
    flagged, best = cur["flagged"], cur["best_captions"]
    parts = ['<section id="fix"><h2>What to fix</h2>']
    if not images:
        return parts[0] + "<p>Nothing to check: no image was labeled.</p></section>"
    warnings_ = []
    if cur["duplicates"]["groups"]:
        d = cur["duplicates"]
        warnings_.append(f"{d['images']:,} images are byte-identical to another ({d['groups']:,} groups by "
                         f"sha256): {d['images'] - d['groups']:,} of them could go.")
    if cur["repeated_ids"]["groups"]:
        warnings_.append(f"{cur['repeated_ids']['images']:,} rows share an image_id with another row: the tables "
                         "hold the same image more than once.")
    if best["captioned"] and best["distinct"] * 2 <= best["captioned"]:
        plural = "" if best["distinct"] == 1 else "s"
        warnings_.append(f"{best['captioned']:,} images have only {best['distinct']:,} distinct best caption{plural}: "
                         "the captioner says the same thing about different images.")
    parts += [f'<div class="warning flag">{esc(w)}</div>' for w in warnings_]
    by_reason = [(r.replace("_", " "), n) for r, n in flagged["by_reason"].items()]
    parts.append('<div class="cols"><div><h3>Flagged images</h3>'
                 + table(["reason", "rows"], by_reason + [("all", flagged["rows"])])
                 + f'<p>Every flagged image id, with the reason and detail: <a href="{esc(flagged["file"])}" '
                 f'id="flagged-link">{esc(flagged["file"])}</a> (beside this page).</p></div>')
    distinct = best["distinct"] / best["captioned"] if best["captioned"] else None
    parts.append("<div><h3>Best captions</h3>" + kv_table([
        ("images with a caption", best["captioned"]), ("distinct best captions", best["distinct"]),
        ("distinct / images", distinct),
        (f"captions shared by {best['min_repeats']}+ images", best["groups"]),
        ("images with such a caption", best["images"]),
        ("exact duplicate images", cur["duplicates"]["images"]), ("repeated image ids", cur["repeated_ids"]["images"]),
    ]) + "</div></div>")
    parts.append('<p class="note">Best caption: each image\'s first, the captioner\'s top-ranked. Captions are '
                 "compared without case, extra spaces or a final full stop. Counts here are exact.</p>")
    if best["largest"]:
        parts.append("<h3>Most repeated best captions</h3>" + table(
            ["caption", "images", "first image"], [(g["key"], g["images"], g["first"]) for g in best["largest"]]))
    if cur["duplicates"]["largest"]:
        parts.append("<h3>Exact duplicates</h3>" + table(
            ["sha256", "images", "first image"],
            [(g["key"][:16] + "\u2026", g["images"], g["first"]) for g in cur["duplicates"]["largest"]]))
    for key, what in (("score", "Lowest caption scores"), ("similarity", "Lowest image-text similarity")):
        rows = lowest[key]
        if rows:
            parts.append(f'<h3 id="lowest-{key}">{what}</h3><p class="note">The {len(rows)} images whose best caption '
                         f"has the lowest {key}, lowest first: the first place to look for wrong captions.</p>"
                         + _cards(rows, key))
    return "".join(parts) + "</section>"


def _images(cur: dict, pngs) -> str:
    sizes, attr = cur["sizes"], cur["attribution"]
    head = '<section id="images"><h2>Images</h2>'
    if not sizes["images"]:
        return head + "<p>No images.</p></section>"
    w, h = sizes["width_range"], sizes["height_range"]
    rows = [("width min / median / max", f"{w['min']:,} / {w['median']:,} / {w['max']:,}"),
            ("height min / median / max", f"{h['min']:,} / {h['median']:,} / {h['max']:,}")]
    authors = (" (approximate: more than 200,000 distinct authors)" if attr["authors_approximate"] else "")
    licenses = table(["license", "images"], attr["licenses"]) if attr["licenses"] else "<p>No license recorded.</p>"
    top_authors = table(["author", "images"], attr["authors"]) if attr["authors"] else "<p>No author recorded.</p>"
    return (head + kv_table(rows) + '<div class="plots">' + img(pngs, "image_sizes", "image sizes")
            + img(pngs, "aspect_ratios", "aspect ratios") + "</div><h3>Attribution</h3>"
            + kv_table([("images without a license", attr["without_license"]),
                        ("images without an author", attr["without_author"]),
                        ("distinct licenses", attr["distinct_licenses"]),
                        ("distinct authors" + authors, attr["distinct_authors"])])
            + f'<div class="cols"><div><h4>Licenses</h4>{licenses}</div>'
            + f"<div><h4>Top {len(attr['authors'])} authors</h4>{top_authors}</div></div></section>")
