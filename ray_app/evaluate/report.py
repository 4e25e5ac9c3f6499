"""The gate report as one self-contained HTML page: the verdict, every check with its reason,
the confusion matrix, and the figures inline (PNG), so the page opens anywhere, offline."""

from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ray_app.evaluate.checks import CheckResult
    from ray_app.evaluate.job import GateReport

IMPORTANCE_ROWS = 10
esc = html.escape


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    return f"<img alt='{esc(alt)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _of(report: GateReport, dimension: str) -> list[CheckResult]:
    return [r for r in report.results if r.dimension == dimension]


def render_html(report: GateReport) -> str:
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
    robustness = _table(
        ["perturbation: metric", "clean", "perturbed", "limit"],
        [
            [r.name, f"{r.details['clean']:.4f}", f"{r.value:.4f}", f"{r.limit:.4f}"]
            for r in _of(report, "robustness")
        ],
    )
    importance = [
        [i["feature"], f"{i['mean_abs_shap']:.4f}", f"{i['share']:.1%}"]
        for r in _of(report, "explainability")
        for i in r.details["importance"][:IMPORTANCE_ROWS]
    ]
    timing = _table(
        ["batch", "p50 ms", "p95 ms", "p99 ms", "requests × rounds (best round)"],
        [
            [
                r.name,
                f"{r.details['p50']:.1f}",
                f"{r.value:.1f}",
                f"{r.details['p99']:.1f}",
                f"{r.details['requests']} × {r.details['rounds']}",
            ]
            for r in _of(report, "latency")
        ],
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Gate {esc(report.model_name)} v{report.version}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
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
{_img(report.figures.get("reliability"), "reliability curve")}
<h2>Robustness</h2>{robustness}
<h2>Explainability</h2>
<p>SHAP values from XGBoost's TreeSHAP on a sample of test rows, in log-odds.</p>
{_table(["feature", "mean |SHAP|", "share"], importance)}
{_img(report.figures.get("shap_summary"), "SHAP summary")}
<h2>Latency</h2>
<p>The serving path in-process: validate the JSON body, build features, predict, respond.</p>
{timing}
</body></html>
"""
