"""Curation recipes: which quality filters run, and how documents are deduplicated and decontaminated.

A recipe is data (YAML/JSON). The built-in ones live in ``isoflop/curate/recipes/``; a user passes a file of the same
shape. This module needs neither datatrove nor torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from isoflop.errors import IsoflopError, describe_validation_error
from isoflop.structured import read_json_or_yaml

RECIPE_DIR = Path(__file__).parent / "recipes"
FILTER_NAMES = ("gopher_quality", "gopher_repetition", "c4", "fineweb", "code")


class MinhashSpec(BaseModel):
    """MinHash LSH (Broder 1997; Leskovec et al., *Mining of Massive Datasets*, Sec. 3.4.3).

    Each document gets ``bands * rows`` min-hashes of its word ``n_grams``; two documents become duplicate
    candidates when all ``rows`` hashes of at least one band agree, which happens with probability
    ``1 - (1 - J**rows)**bands`` for Jaccard similarity ``J``. The S-curve's midpoint is ``(1/bands)**(1/rows)``.
    Candidates are then checked exactly: a pair is a duplicate only when the Jaccard similarity of its shingle sets
    is at least ``jaccard_threshold`` (LSH alone also pairs documents below it; Leskovec et al., Sec. 3.4.3).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_grams: int = Field(5, ge=1, le=64)
    bands: int = Field(14, ge=1, le=512)
    rows: int = Field(8, ge=1, le=64)
    jaccard_threshold: float = Field(0.8, gt=0, le=1, description="exact shingle Jaccard a candidate pair must reach")

    @property
    def threshold(self) -> float:
        """Jaccard similarity at which the LSH S-curve is steepest, ``(1/b)^(1/r)``."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def detect_probability(self, jaccard: float) -> float:
        """Probability that a pair with this Jaccard similarity shares at least one band."""
        return 1.0 - (1.0 - jaccard**self.rows) ** self.bands


class DedupSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    exact: bool = True
    minhash: MinhashSpec | None = Field(default_factory=MinhashSpec)


class Recipe(BaseModel):
    """Filters in order (each a ``{name: {kwargs}}`` mapping), then deduplication, then decontamination n-grams."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    description: str = ""
    language: str = "en"
    word_tokenizer: Literal["regex", "spacy"] = Field(
        "regex", description="regex: fast \\w+ words; spacy: datatrove's tokenizer for `language` (as in FineWeb)"
    )
    filters: list[dict[str, dict[str, Any]]] = Field(default_factory=list)
    dedup: DedupSpec = Field(default_factory=DedupSpec)
    decont_n_grams: int = Field(12, ge=4, le=64, description="n-gram length matched against evaluation files")

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, value: list[dict[str, dict[str, Any]]]) -> list[dict[str, dict[str, Any]]]:
        for item in value:
            if len(item) != 1:
                raise ValueError(f"each filter is a one-key mapping {{name: {{options}}}}, got {item}")
            (name,) = item
            if name not in FILTER_NAMES:
                raise ValueError(f"unknown filter {name!r}; known: {', '.join(FILTER_NAMES)}")
            if item[name] is None:
                item[name] = {}
            if not isinstance(item[name], dict):
                raise ValueError(f"options of filter {name!r} must be a mapping")
        return value


def builtin_recipes() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name_or_path: str) -> Recipe:
    """A built-in recipe by name, or a YAML/JSON recipe file; bad input is an ``IsoflopError``."""
    fix = f"give one of {', '.join(builtin_recipes())} or a YAML recipe file (see isoflop/curate/recipes/)"
    path = RECIPE_DIR / f"{name_or_path}.yaml"
    name = name_or_path
    if not path.is_file():
        path = Path(name_or_path).expanduser()
        name = path.stem
        if not path.is_file():
            raise IsoflopError(f"recipe {name_or_path!r} is neither built in nor a file; {fix}")
    raw = read_json_or_yaml(path, "recipe", fix)
    if not isinstance(raw, dict):
        raise IsoflopError(f"recipe {path} is not a mapping; {fix}")
    raw.setdefault("name", name)
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        raise IsoflopError(f"recipe {path}: {describe_validation_error(exc)}; {fix}") from None
