"""The CLI's own help: what a new user reads first."""

from __future__ import annotations

import inspect

import pytest
import typer.rich_utils
from typer.main import get_command
from typer.testing import CliRunner

from ray_app.cli import app


def _groups() -> list:
    root = get_command(app)
    return [pytest.param([], root, id="rayapp")] + [
        pytest.param([name], group, id=name)
        for name, group in root.commands.items()
        if hasattr(group, "commands")
    ]


@pytest.mark.parametrize("path, group", _groups())
def test_each_command_is_listed_with_its_summary_as_one_text(path, group, monkeypatch):
    """A docstring's line breaks are where the source wraps, not the reader's terminal: the
    summary of each command reads as one sentence in the list, not a ragged column."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 400)
    out = CliRunner().invoke(app, [*path, "--help"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    for name, command in group.commands.items():
        summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
        summary = summary.replace("`", "")
        assert any(name in line and summary in line for line in lines), (name, summary)
