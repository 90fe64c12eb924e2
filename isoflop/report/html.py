"""Write ``report.html``: the held-out verdict, the fits, every figure and a table of runs.

PNGs are written beside the page (``plots/*.png``) and also embedded as data URIs, so the page reads
offline, moved or mailed alone. A tiny script marks ``<body data-plots-loaded=N>`` once N images decoded
(the report test reads it from headless Chromium).
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt

from isoflop.atomic import atomic_write_bytes, atomic_write_text
from isoflop.report.plots import FIGURES

_STYLE = """
body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
figure { margin: 1.5em 0; }
img { max-width: 100%; border: 1px solid #ddd; }
.verdict { font-size: 1.15em; padding: 0.6em 1em; background: #f6f8fa; border-left: 4px solid #4a7; }
.verdict.miss { border-left-color: #c44; }
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.querySelectorAll('img.plot'), ok = 0;
  imgs.forEach(function (im) { if (im.complete && im.naturalWidth > 0) ok++; });
  document.body.setAttribute('data-plots-loaded', String(ok));
  document.body.setAttribute('data-plots-total', String(imgs.length));
});
"""


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return html.escape(str(value))


def _verdict(held: dict[str, Any]) -> str:
    if not held.get("predicted_loss"):
        return "<p class='verdict miss'>No held-out prediction yet (the ladder has not been fitted).</p>"
    lo, hi = held.get("ci95") or (None, None)
    text = (
        f"Held-out run at C = {held['budget']:.3g} FLOPs (N = {held.get('n', 0):,}, D = {held.get('tokens', 0):,}): "
        f"predicted <b>{held['predicted_loss']:.4f}</b> [95% CI {_fmt(lo)}, {_fmt(hi)}] by "
        f"{html.escape(held.get('method', ''))}"
    )
    if held.get("actual_loss") is None:
        return f"<p class='verdict miss'>{text}; not trained yet.</p>"
    inside = lo is not None and lo <= held["actual_loss"] <= hi
    where = "inside" if inside else "outside"
    text += f", actual <b>{held['actual_loss']:.4f}</b>, error {held['error_pct']:+.2f}% ({where} the interval)."
    return f"<p class='verdict{'' if inside else ' miss'}'>{text}</p>"


def _predictions_table(held: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td style='text-align:left'>{html.escape(p['method'])}"
        f"{' (primary)' if p['method'] == held.get('method') else ''}</td>"
        f"<td>{p['predicted_loss']:.4f}</td><td>{_fmt((p.get('ci95') or [None])[0])}</td>"
        f"<td>{_fmt((p.get('ci95') or [None, None])[1])}</td><td>{_fmt(p.get('error_pct'), '+.2f')}</td></tr>"
        for p in held.get("predictions", [])
    )
    return (
        (
            "<table><tr><th>method</th><th>predicted</th><th>CI low</th><th>CI high</th><th>error %</th></tr>"
            f"{rows}</table>"
        )
        if rows
        else ""
    )


def _runs_table(analysis: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td>{p['budget']:.3g}</td><td>{p['n']:,}</td><td>{p.get('n_total', 0):,}</td><td>{p['tokens']:,}</td>"
        f"<td>{p['flops']:.3g}</td><td>{_fmt(p.get('loss'))}</td><td>{_fmt(p.get('step_time_s'))}</td>"
        f"<td>{html.escape(str(p.get('status', '')))}</td></tr>"
        for p in analysis["points"]
    )
    return (
        "<table><tr><th>budget C</th><th>N (non-emb.)</th><th>N (total)</th><th>tokens D</th><th>FLOPs</th>"
        f"<th>val loss</th><th>s/step</th><th>status</th></tr>{rows}</table>"
    )


def write_report(analysis: dict[str, Any], out_dir: str | Path) -> Path:
    """Draw every figure of ``analysis`` into ``out_dir/plots`` and write ``out_dir/report.html``; returns its path."""
    out = Path(out_dir)
    sections = []
    for key, (draw, title) in FIGURES.items():
        data = _png(draw(analysis))
        atomic_write_bytes(out / "plots" / f"{key}.png", data)
        uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
        sections.append(
            f"<figure id='{key}'><figcaption><h3>{html.escape(title)}</h3></figcaption>"
            f"<img class='plot' alt='{html.escape(title)}' src='{uri}'></figure>"
        )
    held = analysis.get("heldout") or {}
    fits = json.dumps(analysis.get("fits", {}), indent=2, default=str)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>isoflop ladder report: {html.escape(analysis.get("ladder", ""))}</title>
<style>{_STYLE}</style></head>
<body>
<h1>isoflop ladder report: {html.escape(analysis.get("ladder", ""))}</h1>
{_verdict(held)}
{f"<p><i>Note: {html.escape(held['note'])}</i></p>" if held.get("note") else ""}
{_predictions_table(held)}
{"".join(sections)}
<h2>Runs</h2>
{_runs_table(analysis)}
<h2>Fitted laws</h2>
<pre>{html.escape(fits)}</pre>
<script>{_SCRIPT}</script>
</body></html>
"""
    return atomic_write_text(out / "report.html", page)
