"""User-facing errors: one line naming the problem and the fix; the CLI exits with code 2."""


class IsoflopError(Exception):
    """Bad input from the user. The message is printed as one line, and the CLI exits 2."""


def describe_validation_error(exc: "ValidationError") -> str:  # noqa: F821 (pydantic type, imported lazily)
    """One line out of a pydantic ``ValidationError``: ``field: message; field: message``."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "input"
        parts.append(f"{where}: {err.get('msg', 'invalid')} (got {err.get('input')!r})")
    return "; ".join(parts)
