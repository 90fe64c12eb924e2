"""Reading runs for a fit: CSV, Parquet or JSONL with one run per row.

Columns are named by flags or found among common names: ``N`` (parameters), ``D`` (tokens) or ``C`` (training
FLOPs, then ``D = C / 6N``, Kaplan et al. 2020 Sec. 2.1), and the loss. Every value must be finite and positive;
a bad value is an error naming its row.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from isoflop import structured
from isoflop.errors import IsoflopError, first_line, quote
from isoflop.laws.filters import RowFilter, apply_filters, parse_filters
from isoflop.laws.fit import training_flops

N_NAMES = ("N", "n", "params", "n_params", "parameters", "Model Size", "model_size")
D_NAMES = ("D", "d", "tokens", "n_tokens", "train_tokens", "Training Tokens")
C_NAMES = ("C", "c", "flops", "FLOPs", "compute", "Training FLOP", "training_flops")
NON_EMBEDDING_NAMES = ("params_no_embed", "non_embedding_params", "params_non_embedding", "N_non_embedding")
LOSS_NAMES = ("loss", "Loss", "final_loss", "eval_loss", "val_loss")


@dataclass
class Runs:
    n: np.ndarray
    d: np.ndarray
    loss: np.ndarray
    c: np.ndarray
    columns: dict[str, str]  # role -> column used
    source: str


def read_table(path: str | Path) -> dict[str, list[Any]]:
    """Columns of a CSV, Parquet or JSONL file as lists (one entry per row)."""
    path = Path(path)
    if not path.is_file():
        raise IsoflopError(f"runs file {path} does not exist; give a CSV, Parquet or JSONL file")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise IsoflopError(
                "reading Parquet needs pyarrow; `pip install pyarrow` or convert the file to CSV"
            ) from None
        try:
            return pq.read_table(path).to_pydict()
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise IsoflopError(f"malformed Parquet file {path}: {exc}") from None
    if suffix in (".jsonl", ".ndjson", ".json"):
        rows: list[dict[str, Any]] = structured.read_jsonl(path, "JSONL file", "one JSON object per line")
        for i, row in enumerate(rows, 1):
            if not isinstance(row, dict):
                raise IsoflopError(f"{path}, record {i} is not a JSON object; one object per run")
        keys = list(dict.fromkeys(k for row in rows for k in row))
        return {k: [row.get(k) for row in rows] for k in keys}
    text = structured.read_text(path, "runs file", "save it as UTF-8 CSV")
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames:
            raise IsoflopError(f"{path} has no header row; the first line must name the columns")
        table: dict[str, list[Any]] = {k: [] for k in reader.fieldnames}
        for row in reader:
            for k in reader.fieldnames:
                table[k].append(row.get(k))
    except csv.Error as exc:
        raise IsoflopError(f"malformed CSV {path}: {first_line(str(exc))}; fix the file") from None
    return table


def _pick(table: dict[str, list[Any]], flag: str | None, names: tuple[str, ...], role: str, option: str) -> str | None:
    if flag is not None:
        if flag not in table:
            raise IsoflopError(f"column {flag!r} ({role}) is not in the file; columns are: {', '.join(table)}")
        return flag
    return next((name for name in names if name in table), None)


def _numbers(table: dict[str, list[Any]], column: str, source: str) -> np.ndarray:
    out = np.empty(len(table[column]))
    for i, value in enumerate(table[column]):
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            raise IsoflopError(
                f"{source}: row {i + 1}, column {column!r} is {quote(value, 40)}, not a number; fix or drop that row"
            ) from None
        if not (np.isfinite(out[i]) and out[i] > 0):
            raise IsoflopError(
                f"{source}: row {i + 1}, column {column!r} is {quote(value, 40)}; values must be finite and positive"
            )
    return out


def read_runs(
    path: str | Path,
    *,
    n_col: str | None = None,
    d_col: str | None = None,
    c_col: str | None = None,
    loss_col: str | None = None,
    where: Sequence[str | RowFilter] | dict[str, str] | None = None,
    param_kind: str = "total",
    table: dict[str, list[Any]] | None = None,
) -> Runs:
    """Runs from ``path`` (or from an already read ``table``).

    ``where`` keeps the rows that satisfy every filter (``isoflop.laws.filters``), e.g. ``["params<=4.2e8",
    "chinchilla_multiplier in 20,320"]`` or ``{"train_dataset": "c4_original"}``. With ``param_kind=
    "non_embedding"`` the parameter column must count non-embedding parameters: one of ``NON_EMBEDDING_NAMES``
    or the one ``n_col`` names.
    """
    table = read_table(path) if table is None else table
    source = str(path)
    table = apply_filters(table, parse_filters(where))
    if param_kind == "non_embedding" and n_col is None:
        n_col = next((name for name in NON_EMBEDDING_NAMES if name in table), None)
        if n_col is None:
            raise IsoflopError(
                f"{source} has no non-embedding parameter column ({', '.join(NON_EMBEDDING_NAMES)}); name the column "
                "with --n-col, or fit total parameters (--param-kind total)"
            )
    n_name = _pick(table, n_col, N_NAMES, "parameters", "--n-col")
    loss_name = _pick(table, loss_col, LOSS_NAMES, "loss", "--loss-col")
    d_name = _pick(table, d_col, D_NAMES, "tokens", "--d-col") if c_col is None else None
    c_name = _pick(table, c_col, C_NAMES, "FLOPs", "--c-col") if d_name is None else None
    missing = [flag for flag, name in (("--n-col", n_name), ("--loss-col", loss_name)) if name is None]
    if d_name is None and c_name is None:
        missing.append("--d-col or --c-col")
    if missing:
        raise IsoflopError(
            f"{source}: could not find the column(s) for {', '.join(missing)}; columns are: {', '.join(table)}"
        )
    n = _numbers(table, n_name, source)
    loss = _numbers(table, loss_name, source)
    if d_name is not None:
        d = _numbers(table, d_name, source)
        c = training_flops(n, d)
    else:
        c = _numbers(table, c_name, source)
        d = c / (6.0 * n)
    if len(n) == 0:
        raise IsoflopError(f"{source} has no runs; add rows")
    columns = {"N": n_name, "loss": loss_name, **({"D": d_name} if d_name else {"C": c_name})}
    return Runs(n=n, d=d, loss=loss, c=c, columns=columns, source=source)
