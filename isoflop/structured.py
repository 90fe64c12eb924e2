"""Reading the JSON/YAML files users hand to isoflop (model specs, law files): one parser, one error style."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from isoflop.errors import IsoflopError


def read_json_or_yaml(path: Path, what: str, fix: str) -> Any:
    """The parsed content of ``path`` (JSON by suffix, else YAML via ``yaml.safe_load``, which runs no code).

    A file that does not decode or parse is an ``IsoflopError``: ``malformed <what> <path>: <first line>; <fix>``.
    """
    try:
        raw = path.read_text(encoding="utf-8")
        return json.loads(raw) if path.suffix == ".json" else yaml.safe_load(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise IsoflopError(f"malformed {what} {path}: {first}; {fix}") from None
