"""The one reader for the JSON/YAML that isoflop reads (model specs, law files, hardware and calibration files,
run records): bounded, code-free, one error style.

Bounds: a file over ``MAX_BYTES`` is refused before it is read; nesting deeper than ``MAX_DEPTH`` is refused;
YAML aliases (``*name``) may add at most ``MAX_ALIAS_NODES`` nodes, so a few hundred bytes cannot expand into
gigabytes (the "billion laughs" attack); YAML is parsed with the safe loader, which builds no Python objects.
Every failure is an ``IsoflopError`` of one line that quotes at most ``errors.QUOTE_LIMIT`` characters of the input.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from yaml.composer import ComposerError
from yaml.events import AliasEvent

from isoflop.errors import IsoflopError, first_line

MAX_BYTES = 64 * 2**20
MAX_DEPTH = 64
MAX_ALIAS_NODES = 10_000

Format = Literal["json", "yaml"]


class ParseError(IsoflopError):
    """Input that does not parse within the bounds; ``reason`` is the short cause without the file name or fix."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that caps what aliases expand to and refuses nesting deeper than ``MAX_DEPTH``.

    Every composed node is counted, an alias as the size of the node it repeats; the nodes added through aliases
    may not exceed ``MAX_ALIAS_NODES``, so a "billion laughs" file stops after a few levels."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._alias_nodes = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            size = self._sizes.get(id(node), 1)
            self._nodes += size
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise ComposerError(
                    None,
                    None,
                    f"YAML aliases expand to over {MAX_ALIAS_NODES} nodes (*{event.anchor})",
                    event.start_mark,
                )
            return node
        self._depth += 1
        start = self._nodes
        try:
            if self._depth > MAX_DEPTH:
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        self._nodes += 1
        self._sizes[id(node)] = self._nodes - start
        return node


def _depth_ok(value: Any) -> bool:
    """True when ``value`` nests at most ``MAX_DEPTH`` containers deep (iterative: no recursion limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                return False
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return True


def loads(text: str, fmt: Format, origin: str, what: str, fix: str) -> Any:
    """Parse ``text`` as JSON or YAML within the bounds; ``origin`` names the source in the error
    (``malformed <what> <origin>: <reason>; <fix>``)."""

    def refuse(reason: str) -> ParseError:
        reason = first_line(reason)
        return ParseError(f"malformed {what} {origin}: {reason}; {fix}", reason)

    if len(text) > MAX_BYTES:
        raise refuse(f"larger than {MAX_BYTES // 2**20} MiB")
    try:
        if fmt == "json":
            value = json.loads(text)
        else:
            loader = _BoundedLoader(text)
            try:
                value = loader.get_single_data()
            finally:
                loader.dispose()
    except RecursionError:
        raise refuse(f"nested deeper than {MAX_DEPTH} levels") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise refuse(f"{exc.problem or exc.context or 'invalid YAML'}{where}") from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise refuse(str(exc) or type(exc).__name__) from None
    if not _depth_ok(value):
        raise refuse(f"nested deeper than {MAX_DEPTH} levels")
    return value


def read_text(path: Path, what: str, fix: str) -> str:
    """The UTF-8 text of ``path``, refused (one line) when missing, over ``MAX_BYTES`` or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise IsoflopError(
                f"{what} {path} is {size / 2**20:.0f} MiB, over the {MAX_BYTES // 2**20} MiB limit; {fix}"
            )
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IsoflopError(f"{what} {path} is not UTF-8 text (byte {exc.start}); {fix}") from None
    except OSError as exc:
        raise IsoflopError(f"cannot read {what} {path}: {exc.strerror or exc}; {fix}") from None


def read(path: Path, what: str, fix: str, fmt: Format | None = None) -> Any:
    """Read and parse ``path``: JSON when ``fmt`` is ``"json"`` or the suffix is ``.json``, otherwise YAML."""
    path = Path(path)
    kind: Format = fmt or ("json" if path.suffix == ".json" else "yaml")
    return loads(read_text(path, what, fix), kind, str(path), what, fix)


def read_json_or_yaml(path: Path, what: str, fix: str) -> Any:
    """The parsed content of ``path`` (JSON by suffix, else YAML); any failure is a one-line ``IsoflopError``."""
    return read(path, what, fix)


def read_jsonl(path: Path, what: str, fix: str) -> list[Any]:
    """The records of a JSON-lines file (blank lines skipped); a bad line is named by its number."""
    rows = []
    for number, line in enumerate(read_text(Path(path), what, fix).splitlines(), start=1):
        if line.strip():
            rows.append(loads(line, "json", f"{path}, line {number}", what, fix))
    return rows
