"""Domain mixing of a curated folder: sampling weights, the epochs each domain repeats, and the effective tokens
those repeats are worth under the data-constrained law (Muennighoff et al. 2023, Eq. 5). Needs no datatrove.

Weights come from one of: given weights; temperature sampling ``w_d ∝ U_d^(1/T)`` (Arivazhagan et al. 2019;
``T = 1`` is proportional to size); or upsampling chosen domains by a factor on top of proportional weights
(Blakeney et al. 2024 upsample high-quality domains late in training).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from isoflop.curate.manifest import Manifest
from isoflop.errors import IsoflopError
from isoflop.laws.forms import PRESETS


@dataclass(frozen=True)
class DomainShare:
    domain: str
    unique_tokens: int
    weight: float
    tokens_drawn: float
    epochs: float
    effective_tokens: float


@dataclass(frozen=True)
class MixPlan:
    tokens: float
    method: str
    domains: list[DomainShare]
    effective_tokens: float
    r_d_star: float


def effective_tokens(unique: float, drawn: float, r_d_star: float) -> float:
    """Muennighoff et al. 2023, Eq. 5: ``D' = U + U R* (1 - exp(-R/R*))`` with ``R = D/U - 1`` repetitions;
    a domain drawn less than once is worth the tokens drawn."""
    if drawn <= unique:
        return drawn
    return unique + unique * r_d_star * (1.0 - math.exp(-(drawn / unique - 1.0) / r_d_star))


def mix_weights(
    unique: dict[str, int],
    weights: dict[str, float] | None = None,
    temperature: float | None = None,
    upsample: dict[str, float] | None = None,
) -> tuple[dict[str, float], str]:
    """Normalized weights per domain, and the method's name; at most one of the three ways may be given."""
    if sum(x is not None for x in (weights, temperature, upsample)) > 1:
        raise IsoflopError("give one of --weights, --temperature and --upsample; they are alternatives")
    for name in list(weights or {}) + list(upsample or {}):
        if name not in unique:
            raise IsoflopError(f"domain {name!r} is not in the manifest; domains: {', '.join(unique)}")
    if weights is not None:
        raw, method = {d: weights.get(d, 0.0) for d in unique}, "weights"
    elif temperature is not None:
        if not temperature > 0:
            raise IsoflopError(f"--temperature must be > 0, got {temperature}")
        raw, method = {d: u ** (1.0 / temperature) for d, u in unique.items()}, f"temperature {temperature:g}"
    else:
        up = upsample or {}
        raw, method = {d: u * up.get(d, 1.0) for d, u in unique.items()}, "upsample" if up else "proportional"
    if any(v < 0 or not math.isfinite(v) for v in raw.values()) or sum(raw.values()) <= 0:
        raise IsoflopError("mixing weights must be finite, non-negative and not all zero; check --weights/--upsample")
    total = sum(raw.values())
    return {d: v / total for d, v in raw.items()}, method


def plan_mix(manifest: Manifest, tokens: float, **how) -> MixPlan:
    """Share of ``tokens`` training tokens per domain of ``manifest``, with epochs and effective tokens."""
    if not (math.isfinite(tokens) and tokens > 0):
        raise IsoflopError(f"--tokens must be a positive number, got {tokens}")
    unique = {d: c.tokens for d, c in manifest.domains.items() if c.tokens > 0}
    if not unique:
        raise IsoflopError("the manifest holds no tokens; curate a non-empty source first")
    weights, method = mix_weights(unique, **how)
    r_star = float(PRESETS["muennighoff"]["params"]["R_D_star"])
    shares = [
        DomainShare(d, u, w, w * tokens, w * tokens / u, effective_tokens(u, w * tokens, r_star))
        for d, u in unique.items()
        for w in (weights[d],)
    ]
    return MixPlan(tokens, method, shares, sum(s.effective_tokens for s in shares), r_star)
