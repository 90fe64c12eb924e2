"""Output conventions shared by every command: a rich table by default, exact JSON with ``--json``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from isoflop.atomic import json_safe
from isoflop.errors import IsoflopError

JSON_OPTION = typer.Option(False, "--json", help="Print exact machine-readable JSON instead of a table.")
MODEL_OPTION = typer.Option(
    None, "--model", "-m", help="Preset name, spec file (YAML/JSON) or Hugging Face config.json."
)
MODEL_ARGUMENT = typer.Argument(
    None, help="Preset name, spec file (YAML/JSON) or Hugging Face config.json.", show_default=False
)

# Wide enough for tables when output is piped (rich assumes 80 columns otherwise).
console = Console(width=None if sys.stdout.isatty() else 160)


def to_json(data: Any) -> str:
    return json.dumps(json_safe(data), indent=2, allow_nan=False)


def emit(data: Any, as_json: bool, render: Callable[[Console], None]) -> None:
    """Print ``data`` as JSON when ``as_json``; otherwise call ``render`` with the shared console."""
    if as_json:
        sys.stdout.write(to_json(data) + "\n")
    else:
        render(console)


def pick_model(positional: str | None, option: str | None) -> str:
    """Accept a model both positionally and as ``--model``; exactly one must be given."""
    if positional and option and positional != option:
        raise IsoflopError(f"model given twice ({positional!r} and --model {option!r}); give it once")
    model = positional or option
    if not model:
        raise IsoflopError("no model given; pass a preset name, spec file or config.json, e.g. `isoflop count gpt2`")
    return model
