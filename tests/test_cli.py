"""The `rayapp` command line as a person meets it: every option explains itself."""

import click
import typer.main

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
