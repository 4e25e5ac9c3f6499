"""Validation reports as JSON and as a readable HTML page, written atomically to a folder."""

from __future__ import annotations

import html
import json
from pathlib import Path

from ray_app.data.validate import ValidationReport

JSON_NAME, HTML_NAME = "validation.json", "validation.html"
HEADER = "<tr><th>check</th><th>column</th><th>bad rows</th><th>allowed</th><th>examples</th></tr>"


def to_html(report: ValidationReport) -> str:
    esc = html.escape
    verdict = "passed" if report.success else f"FAILED ({len(report.failures)} checks)"
    failed = {(f.expectation, f.column) for f in report.failures}
    rows = "\n".join(
        f"<tr class='bad'><td>{esc(f.expectation)}</td><td>{esc(f.column)}</td>"
        f"<td>{f.bad_rows}</td><td>{f.allowed_rows}</td><td>{esc(', '.join(f.examples))}</td></tr>"
        for f in report.failures
    )
    checked = "\n".join(
        f"<li>{esc(c)}</li>"
        for c in report.checked
        if tuple(c.rstrip(")").split("(", 1)) not in failed
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Validation {esc(report.version)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}.bad td{{background:#fdecea}}
.ok{{color:#1b5e20}}.fail{{color:#b71c1c}}</style></head><body>
<h1>Data validation: <span class="{"ok" if report.success else "fail"}">{verdict}</span></h1>
<p>Source <code>{esc(report.source)}</code>, dataset version <code>{esc(report.version)}</code>,
{report.rows} rows, {len(report.checked)} checks.</p>
<h2>Failed checks</h2>
{f"<table>{HEADER}{rows}</table>" if rows else "<p>None.</p>"}
<h2>Passed checks</h2><ul>{checked}</ul>
</body></html>
"""


def documents(report: ValidationReport) -> dict[str, str]:
    """The report's files by name: JSON for machines, HTML for people."""
    return {JSON_NAME: json.dumps(report.to_dict(), indent=2), HTML_NAME: to_html(report)}


def write(report: ValidationReport, folder: Path) -> Path:
    """Write validation.json and validation.html into `folder`; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in documents(report).items():
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)
    return folder / HTML_NAME
