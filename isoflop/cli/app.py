"""The root Typer application; each ``isoflop/cli/<command>.py`` module adds its commands to it."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="isoflop",
    help="Compute-optimal LLM training: plan a budget, train it, and check every prediction against measurement.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
