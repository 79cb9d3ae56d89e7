"""Render a report as one self-contained HTML page (inline CSS and SVG charts; opens offline)."""

from __future__ import annotations

import datetime
import html
import json
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;vertical-align:top}th{background:#f5f5f5}.num{text-align:right;font-variant-numeric:tabular-nums}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem}
.card b{display:block;font-size:1.3rem}code,.ex{font-family:ui-monospace,monospace;font-size:.8rem;
white-space:pre-wrap;word-break:break-word}svg text{font-size:11px;font-family:inherit}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def bar_chart(items: list[tuple[str, float]], *, title: str, width: int = 760, color: str = "#4c78a8") -> str:
    """A horizontal bar chart as inline SVG."""
    if not items:
        return "<p><i>none</i></p>"
    row, label_w = 20, 290
    top = max(v for _, v in items) or 1.0
    h = row * len(items) + 30
    parts = [f'<svg role="img" aria-label="{_e(title)}" width="{width}" height="{h}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>']
    for i, (label, v) in enumerate(items):
        y = 10 + i * row
        w = (width - label_w - 80) * (v / top)
        parts.append(f'<text x="{label_w - 6}" y="{y + 13}" text-anchor="end">{_e(label[:46])}</text>'
                     f'<rect x="{label_w}" y="{y + 2}" width="{w:.1f}" height="{row - 6}" fill="{color}"/>'
                     f'<text x="{label_w + w + 4:.1f}" y="{y + 13}">{v:,.0f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def histogram(dist: dict[str, Any], *, title: str, width: int = 640, height: int = 180) -> str:
    """A histogram (log2 bins) as inline SVG."""
    hist = dist.get("histogram")
    if not hist:
        return "<p><i>no data</i></p>"
    counts, edges = hist["counts"], hist["edges"]
    top = max(counts) or 1
    bw = (width - 40) / max(len(counts), 1)
    parts = [f'<svg role="img" aria-label="{_e(title)}" width="{width}" height="{height + 40}" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{_e(title)}</title>']
    for i, c in enumerate(counts):
        bh = height * c / top
        x = 30 + i * bw
        parts.append(f'<rect x="{x:.1f}" y="{height - bh + 5:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" '
                     f'fill="#72b7b2"><title>{int(edges[i])}-{int(edges[i + 1])}: {c}</title></rect>')
        if i % 2 == 0:
            parts.append(f'<text x="{x:.1f}" y="{height + 22}">{_short(edges[i])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _short(v: float) -> str:
    for unit, div in (("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.0f}{unit}"
    return f"{v:.0f}"


def _table(columns: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(
        f'<td class="num">{v:,}</td>' if isinstance(v, int) and not isinstance(v, bool) else f"<td>{_e(v)}</td>"
        for v in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(rep: dict[str, Any]) -> str:
    """The whole page."""
    d = rep.get("duplicates", {})
    cards = [("documents", f"{rep.get('documents', 0):,}"), ("text", f"{rep.get('text_bytes', 0) / 1e6:,.1f} MB"),
             ("exact dup rate", f"{d.get('exact_rate', 0):.2%}"), ("near dup rate", f"{d.get('near_rate', 0):.2%}"),
             ("dropped", f"{sum(x['count'] for x in rep.get('drops', [])):,}"),
             ("quarantined", f"{rep.get('quarantine', {}).get('count', 0):,}")]
    out = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Granary report: {_e(rep['name'])}"
           f"</title><style>{_CSS}</style></head><body>",
           f"<h1>Quality report: {_e(rep['name'])}</h1><p>generated "
           f"{datetime.datetime.fromtimestamp(rep.get('generated_at', 0), datetime.UTC):%Y-%m-%d %H:%M} UTC</p>",
           '<div class="cards">' + "".join(f'<div class="card">{_e(k)}<b>{_e(v)}</b></div>' for k, v in cards)
           + "</div>"]
    if rep.get("pipeline"):
        out.append("<h2>Pipeline</h2>" + _table(
            ["step", "docs in", "docs out", "MB in", "MB out", "seconds"],
            [[s["step"], s["docs_in"], s["docs_out"], f"{s['bytes_in'] / 1e6:.2f}", f"{s['bytes_out'] / 1e6:.2f}",
              s["seconds"]] for s in rep["pipeline"]]))
        out.append(bar_chart([(s["step"], s["docs_in"] - s["docs_out"]) for s in rep["pipeline"]],
                             title="documents removed per step", color="#e45756"))
    out.append("<h2>Drop reasons</h2>")
    drops = rep.get("drops", [])
    out.append(bar_chart([(f"{x['step']}: {x['reason']}", x["count"]) for x in drops[:25]],
                         title="documents dropped per reason", color="#e45756"))
    for x in drops[:25]:
        ex = "".join(f"<tr><td>{_e(e['id'])}</td><td class='ex'>{_e(e['text'])}</td><td>{_e(e['detail'])}</td></tr>"
                     for e in x["examples"])
        out.append(f"<details><summary>{_e(x['step'])} / {_e(x['reason'])} ({x['count']:,})</summary>"
                   f"<table><tr><th>id</th><th>text (start)</th><th>reason</th></tr>{ex}</table></details>")
    lengths = rep.get("lengths", {})
    out.append("<h2>Lengths</h2>")
    for key in ("chars", "words"):
        dist = lengths.get(key, {})
        if dist.get("count"):
            out.append(f"<p>{key} per document: median {dist['p50']:,.0f}, p10 {dist['p10']:,.0f}, "
                       f"p90 {dist['p90']:,.0f}, max {dist['max']:,.0f}</p>")
            out.append(histogram(dist, title=f"{key} per document (log2 bins)"))
    for title, key, sub in (("Languages", "languages", "counts"), ("PII by type", "pii", "counts")):
        sec = rep.get(key, {})
        out.append(f"<h2>{title}</h2><p>{_e(sec.get('method', ''))}</p>")
        out.append(bar_chart(list(sec.get(sub, {}).items())[:20], title=title))
    out.append("<h2>Sources</h2>" + bar_chart(list(rep.get("sources", {}).items())[:20], title="sources"))
    comp = rep.get("completeness", {})
    out.append("<h2>Completeness</h2>" + _table(["column", "nulls", "empty"],
                                                [[k, v["nulls"], v["empty"]] for k, v in comp.items()]))
    dup = rep.get("duplicates", {})
    out.append("<h2>Duplicates</h2>" + _table(["measure", "value"], [[k, v] for k, v in dup.items()]))
    q = rep.get("quarantine", {})
    out.append("<h2>Quarantine</h2>" + _table(["reason", "records"], [[k, v] for k, v in q.get("reasons", {}).items()]))
    out.append("<h2>Outliers (length)</h2>" + _table(["id", "chars", "words", "z"], [
        [o["id"], o["chars"], o["words"], o["z"]] for o in rep.get("outliers", [])]))
    out.append("<h2>Raw report</h2><details><summary>JSON</summary><pre class='ex'>"
               + _e(json.dumps(rep, indent=1, default=str)[:200000]) + "</pre></details></body></html>")
    return "".join(out)
