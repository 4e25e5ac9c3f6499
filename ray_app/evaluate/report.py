"""The gate report as one self-contained HTML page: verdict, every check with its reason,
the confusion matrix and the reliability curve (an inline PNG, so the page opens anywhere)."""

from __future__ import annotations

import base64
import html
import io
from typing import TYPE_CHECKING

import matplotlib

if TYPE_CHECKING:
    from ray_app.evaluate.job import GateReport


def _reliability_png(curve: list[dict]) -> str:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([p["predicted"] for p in curve], [p["observed"] for p in curve], "o-", label="model")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="reliability")
    ax.legend()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def render_html(report: GateReport) -> str:
    esc = html.escape
    verdict = "PASSED" if report.passed else "FAILED"
    rows = "\n".join(
        f"<tr class='{'ok' if r.passed else 'bad'}'><td>{esc(r.dimension)}</td>"
        f"<td>{esc(r.name)}</td><td>{'pass' if r.passed else 'FAIL'}</td>"
        f"<td>{esc(r.reason)}</td></tr>"
        for r in report.results
    )
    m = report.metrics
    c = m["confusion"]
    scalar = " ".join(f"<li>{esc(k)}: {v:.4f}</li>" for k, v in m.items() if isinstance(v, float))
    curve = next(r.details["reliability"] for r in report.results if r.dimension == "calibration")
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Gate {esc(report.model_name)} v{report.version}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.bad td{{background:#fdecea}}
.ok td{{background:#f1f8e9}}</style></head><body>
<h1>Gate: {esc(report.model_name)} version {report.version}: {verdict}</h1>
<p>Run <code>{esc(report.run_id)}</code>, data version <code>{esc(report.dataset_version)}</code>,
decision threshold {report.threshold:.4f} (chosen on validation), champion:
{f"version {report.champion_version}" if report.champion_version else "none"}.</p>
<h2>Checks</h2>
<table><tr><th>dimension</th><th>check</th><th>result</th><th>reason</th></tr>{rows}</table>
<h2>Test metrics</h2><ul>{scalar}</ul>
<table><tr><th></th><th>predicted 0</th><th>predicted 1</th></tr>
<tr><th>actual 0</th><td>{c["tn"]}</td><td>{c["fp"]}</td></tr>
<tr><th>actual 1</th><td>{c["fn"]}</td><td>{c["tp"]}</td></tr></table>
<h2>Calibration</h2>
<img alt="reliability curve" src="data:image/png;base64,{_reliability_png(curve)}">
</body></html>
"""
