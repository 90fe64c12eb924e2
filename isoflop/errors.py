"""User-facing errors: one line naming the problem and the fix; the CLI exits with code 2."""

from __future__ import annotations

from typing import Any

QUOTE_LIMIT = 200


class IsoflopError(Exception):
    """Bad input from the user. The message is printed as one line, and the CLI exits 2."""


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)`` cut to about ``limit`` characters, on one line, so no input can flood a message.

    Containers are summarised before ``repr`` so that a huge (or alias-shared) structure is never rendered whole.
    """
    if isinstance(value, (dict, list, tuple, set)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    text = repr(_shallow(value, limit)) if isinstance(value, (dict, list, tuple)) else repr(value)
    text = " ".join(text.split())
    return text if len(text) <= limit else f"{text[: limit - 1]}… ({len(text)} chars)"


def _shallow(value: Any, limit: int) -> Any:
    """A copy of ``value`` whose nested containers are replaced by a short summary (bounded repr cost)."""

    def short(item: Any) -> Any:
        if isinstance(item, (dict, list, tuple, set)):
            return _Summary(f"<{type(item).__name__} of {len(item)} items>")
        if isinstance(item, (str, bytes)) and len(item) > limit:
            return item[:limit]
        return item

    if isinstance(value, dict):
        return {short(k): short(v) for k, v in value.items()}
    return type(value)(short(v) for v in value)


class _Summary(str):
    def __repr__(self) -> str:
        return str(self)


def first_line(text: str, limit: int = QUOTE_LIMIT) -> str:
    """The first non-empty line of ``text``, cut to ``limit`` characters."""
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= limit else f"{line[: limit - 1]}…"


def clip(message: str, limit: int = 3 * QUOTE_LIMIT) -> str:
    """``message`` on one line, its middle cut when longer than ``limit`` (the start names the problem, the end
    the fix): the last guard before a message reaches the terminal."""
    text = " ".join(str(message).split())
    if len(text) <= limit:
        return text
    tail = limit // 3
    return f"{text[: limit - tail - 3]} … {text[-tail:]}"


def describe_validation_error(exc: ValidationError) -> str:  # noqa: F821 (pydantic type, imported lazily)
    """One line out of a pydantic ``ValidationError``: ``field: message; field: message`` (inputs quoted briefly)."""
    parts = []
    for err in exc.errors()[:5]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "input"
        parts.append(f"{where}: {first_line(err.get('msg', 'invalid'))} (got {quote(err.get('input'), 80)})")
    return "; ".join(parts)
