"""The `rayapp` command line as a person meets it: every option explains itself, each
command's summary reads as one text, and an MLflow it cannot reach is one line."""

import inspect
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main
import typer.rich_utils
from conftest import free_port
from typer.main import get_command
from typer.testing import CliRunner

from ray_app.cli import app


def _commands(command: click.Command, path: str = "rayapp"):
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")
    else:
        yield path, command


def test_every_option_and_argument_has_help_text():
    missing = [
        f"{path} {param.name}"
        for path, command in _commands(typer.main.get_command(app))
        for param in command.params
        if param.name != "help" and not getattr(param, "help", None)
    ]
    assert missing == []


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


def test_an_unreachable_mlflow_is_one_line_naming_it_without_its_password(tmp_path):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://ops:hunter2@127.0.0.1:{free_port()}",  # nothing listens
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "RAYAPP_HOME": str(tmp_path),
    }
    rayapp = Path(sys.executable).with_name("rayapp")
    out = subprocess.run(
        [str(rayapp), "history", "--model", "churn_model"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 1, out.stderr
    assert out.stderr.startswith("MLflow at http://ops:***@127.0.0.1:"), out.stderr
    assert "Connection refused" in out.stderr
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr + out.stdout
