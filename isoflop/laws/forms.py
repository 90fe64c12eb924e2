"""Scaling-law forms as objects: ``predict``, ``fit``, bootstrap intervals and (de)serialisation.

* ``ChinchillaLaw``: ``L = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, Eq. 2).
* ``KaplanLaw``: ``L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan et al. 2020, Eq. 1.5).
* ``DataConstrainedLaw``: the Chinchilla form on effective data and parameters (Muennighoff et al. 2023, Eq. 5):
  ``D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*))`` with ``R_D = D / U_D - 1`` repetitions, and likewise
  ``N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*))`` with ``U_N = min(N, N_opt(U_D))``, the parameter count for which
  the unique tokens are compute-optimal, and ``R_N = N / U_N - 1``.
* ``SaturatingPowerLaw``: ``L = L_inf + (x_0 / x)^alpha`` in one variable (e.g. minimum loss against compute).
* ``AllocationLaw``: ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` (Approaches 1 and 2 of Hoffmann et al. 2022),
  optionally with a ``SaturatingPowerLaw`` for the loss at the optimum.

Presets (``preset_law``): ``hoffmann``, ``besiroglu``, ``kaplan``, ``muennighoff``; see ``PRESETS``.

Every law says which parameters its ``N`` counts (``param_kind``): ``total``, or ``non_embedding`` as in Kaplan
et al. 2020 (Sec. 1.2; their ``C = 6 N D``, Eq. 2.1, also counts non-embedding N). Planning with a law must
build and cost the model in that count.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from isoflop.atomic import atomic_write_text
from isoflop.errors import IsoflopError
from isoflop.structured import read_json_or_yaml


PARAM_KINDS = ("total", "non_embedding")


def check_param_kind(kind: str) -> str:
    """``kind`` if it is one of ``PARAM_KINDS``, else a one-line ``IsoflopError``."""
    if kind not in PARAM_KINDS:
        raise IsoflopError(f"param_kind must be 'total' or 'non_embedding' (which parameters the law's N counts), got {kind!r}")
    return kind


def _ci(samples: np.ndarray) -> list[float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return [float(lo), float(hi)]


class Law:
    """Common machinery: named float parameters, bootstrap samples, ``ci95``, dict/JSON/YAML round trips.
    ``param_kind``: which parameters ``N`` counts, ``total`` or ``non_embedding`` (see the module docstring)."""

    form: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, name: str = "custom", citation: str = "", *, param_kind: str = "total", **params: float) -> None:
        missing = [p for p in self.param_names if p not in params]
        extra = [p for p in params if p not in self.param_names]
        if params and missing or extra:
            raise IsoflopError(f"{self.form} law needs parameters {', '.join(self.param_names)} (missing {missing}, unknown {extra})")
        for key, value in params.items():
            if value is None or not math.isfinite(float(value)):
                raise IsoflopError(f"{self.form} law parameter {key} is {value!r}; it must be a finite number")
        # No parameters at all: an unfitted law (sklearn style, ``ChinchillaLaw().fit(N, D, L)``).
        self.params: dict[str, float] = {k: float(params[k]) for k in self.param_names} if params else {}
        self.name = name
        self.citation = citation
        self.param_kind = check_param_kind(param_kind)
        self.samples: np.ndarray | None = None  # bootstrap draws, shape (R, len(param_names))
        self.info: dict[str, Any] = {}  # fit diagnostics (objective, points, bootstrap counts ...)

    def __getattr__(self, item: str) -> float:
        params = self.__dict__.get("params", {})
        if item in params:
            return params[item]
        raise AttributeError(item)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:.6g}" for k, v in self.params.items())
        return f"{type(self).__name__}({self.name}: {inner})"

    def with_params(self, values: np.ndarray | dict[str, float]) -> "Law":
        """A copy with other parameter values (used for bootstrap draws); samples are not copied."""
        vals = values if isinstance(values, dict) else dict(zip(self.param_names, (float(v) for v in values)))
        clone = type(self).__new__(type(self))
        clone.__dict__.update({k: v for k, v in self.__dict__.items() if k not in ("params", "samples", "info")})
        clone.params = {k: float(vals[k]) for k in self.param_names}
        clone.samples, clone.info = None, {}
        return clone

    def sample_laws(self) -> list["Law"]:
        """One law per bootstrap draw (empty without a bootstrap)."""
        if self.samples is None:
            return []
        return [self.with_params(row) for row in self.samples]

    def _fitted(self) -> dict[str, float]:
        if not self.params:
            raise IsoflopError(f"this {self.form} law has no parameters yet; fit it or load a preset/law file")
        return self.params

    @property
    def ci95(self) -> dict[str, list[float] | None]:
        """95% percentile bootstrap intervals per parameter; ``None`` without bootstrap samples."""
        if self.samples is None or len(self.samples) < 2:
            return {k: None for k in self.param_names}
        return {k: _ci(self.samples[:, i]) for i, k in enumerate(self.param_names)}

    def derived(self) -> dict[str, float]:
        return {}

    def _refit(self, *arrays: np.ndarray) -> dict[str, float]:
        """Parameters fitted to ``arrays`` (the same arrays ``fit`` takes), starting from the current ones."""
        raise IsoflopError(f"{self.form} laws cannot be refitted; fit a Chinchilla, Kaplan, data-constrained or saturating law")

    def bootstrap(self, n_samples: int = 1000, seed: int = 0) -> "Law":
        """Refit on ``n_samples`` resamples (with replacement) of the fitted points; failed refits are dropped
        and counted in ``info['bootstrap']`` (never kept as samples). Returns self."""
        data = getattr(self, "_data", None)
        if data is None:
            raise IsoflopError("bootstrap needs the fitted runs; call fit(...) first")
        if n_samples < 2:
            raise IsoflopError(f"bootstrap needs at least 2 resamples, got {n_samples}")
        rng = np.random.default_rng(seed)
        size, rows, dropped = len(data[0]), [], 0
        for _ in range(n_samples):
            idx = rng.integers(0, size, size)
            try:
                params = self._refit(*(x[idx] for x in data))
            except IsoflopError:
                dropped += 1
                continue
            row = [params[k] for k in self.param_names]
            if all(math.isfinite(v) for v in row):
                rows.append(row)
            else:
                dropped += 1
        if len(rows) < max(2, n_samples // 2):
            raise IsoflopError(f"only {len(rows)} of {n_samples} bootstrap refits converged; the points do not constrain the law")
        self.samples = np.asarray(rows)
        self.info["bootstrap"] = {"requested": n_samples, "converged": len(rows), "dropped": dropped, "seed": seed}
        return self

    def to_dict(self) -> dict[str, Any]:
        self._fitted()
        out: dict[str, Any] = {"form": self.form, "name": self.name, "citation": self.citation, "param_kind": self.param_kind,
                               "params": dict(self.params)}
        out.update(self._extra_dict())
        out["ci95"] = self.ci95
        out.update(self.derived())
        if self.info:
            out["fit"] = self.info
        if self.samples is not None:
            out["bootstrap_samples"] = self.samples.tolist()
        return out

    def _extra_dict(self) -> dict[str, Any]:
        return {}

    def save(self, path: str | Path) -> Path:
        """Write the law as JSON (``.json``) or YAML (anything else), atomically."""
        path = Path(path)
        data = self.to_dict()
        text = json.dumps(data, indent=2) + "\n" if path.suffix == ".json" else yaml.safe_dump(data, sort_keys=False)
        return atomic_write_text(path, text)

    # subclasses: predict
    def predict(self, n: Any, d: Any) -> np.ndarray:
        raise AttributeError(f"{self.form} law does not predict loss from (N, D)")


class ChinchillaLaw(Law):
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, Eq. 2; N parameters, D tokens)."""

    form = "chinchilla"
    param_names = ("E", "A", "B", "alpha", "beta")

    def predict(self, n: Any, d: Any) -> np.ndarray:
        p = self._fitted()
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    @property
    def a_opt(self) -> float:
        """Exponent of ``N_opt ~ C^a``: ``a = beta / (alpha + beta)`` (Hoffmann et al. 2022, Eq. 4)."""
        return self.params["beta"] / (self.params["alpha"] + self.params["beta"])

    @property
    def b_opt(self) -> float:
        """Exponent of ``D_opt ~ C^b``: ``b = alpha / (alpha + beta)`` (Hoffmann et al. 2022, Eq. 4)."""
        return self.params["alpha"] / (self.params["alpha"] + self.params["beta"])

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form compute-optimal ``(N_opt, D_opt)`` under ``C = 6 N D`` (Hoffmann et al. 2022, Eq. 4):
        ``N_opt = G (C/6)^a``, ``D_opt = G^-1 (C/6)^b``, ``G = (alpha A / (beta B))^(1 / (alpha + beta))``."""
        p = self._fitted()
        g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
        c6 = np.asarray(flops, dtype=float) / 6.0
        return g * c6 ** self.a_opt, c6 ** self.b_opt / g

    def derived(self) -> dict[str, float]:
        return {"a_opt": self.a_opt, "b_opt": self.b_opt}

    def fit(self, n: Any, d: Any, loss: Any, *, drop_highest: int = 0, weights: Any = None) -> "ChinchillaLaw":
        """Fit by Approach 3 (``isoflop.laws.fit.fit_approach3``); keeps the data for ``bootstrap``. Returns self."""
        from isoflop.laws.fit import check_runs, drop_highest_loss, fit_approach3, fit_warnings

        n, d, loss = check_runs(n, d, loss, 5, "Approach 3")
        n, d, loss = drop_highest_loss(n, d, loss, drop_highest)
        res = fit_approach3(n, d, loss, weights=weights)
        if not res.converged:
            raise IsoflopError(f"Approach 3 did not converge (params {res.params}); the runs do not constrain the law, add runs over a wider range of N and D")
        self.params = res.params
        self.samples = None
        self.info = {"approach": 3, "objective": res.objective, "n_points": int(len(n)), "dropped_highest_loss": int(drop_highest),
                     "warnings": fit_warnings(res.params, loss)}
        self._data = (n, d, loss)
        self._theta = res.theta
        return self

    def bootstrap(self, n_samples: int = 1000, seed: int = 0) -> "ChinchillaLaw":
        """Resample the fitted runs with replacement ``n_samples`` times and refit (Besiroglu et al. 2024, Sec. 3).
        Resamples whose fit does not converge are dropped and counted in ``info['bootstrap']``. Returns self."""
        from isoflop.laws.bootstrap import bootstrap_approach3

        data = getattr(self, "_data", None)
        if data is None:
            raise IsoflopError("bootstrap needs the fitted runs; call fit(N, D, loss) first")
        samples, stats = bootstrap_approach3(*data, theta=self._theta, n_samples=n_samples, seed=seed)
        self.samples = samples
        self.info["bootstrap"] = stats
        return self


class KaplanLaw(Law):
    """``L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan et al. 2020, Eq. 1.5; N counts
    non-embedding parameters, L in nats per token on WebText2)."""

    form = "kaplan"
    param_names = ("N_c", "D_c", "alpha_N", "alpha_D")

    def predict(self, n: Any, d: Any) -> np.ndarray:
        p = self._fitted()
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return ((p["N_c"] / n) ** (p["alpha_N"] / p["alpha_D"]) + p["D_c"] / d) ** p["alpha_D"]

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        """Minimise ``L(N, C / 6N)``: the bracket ``k N^-p + m N`` (``p = alpha_N / alpha_D``, ``k = N_c^p``,
        ``m = 6 D_c / C``) is smallest at ``N = (p k / m)^(1 / (p + 1))`` (derivative set to zero)."""
        p_ = self._fitted()
        c = np.asarray(flops, dtype=float)
        p = p_["alpha_N"] / p_["alpha_D"]
        k, m = p_["N_c"] ** p, 6.0 * p_["D_c"] / c
        n = (p * k / m) ** (1.0 / (p + 1.0))
        return n, c / (6.0 * n)

    def fit(self, n: Any, d: Any, loss: Any) -> "KaplanLaw":
        """Least squares on log loss from the current parameters (the Kaplan preset when unfitted), by L-BFGS-B
        on log parameters. Returns self; ``bootstrap`` refits resamples the same way."""
        from isoflop.laws.fit import check_runs

        if not self.params:
            self.params = dict(PRESETS["kaplan"]["params"])
        self._data = check_runs(n, d, loss, len(self.param_names) + 1, "a Kaplan fit")
        self.params = self._refit(*self._data)
        self.samples, self.info = None, {"n_points": int(len(self._data[0]))}
        return self

    def _refit(self, n: np.ndarray, d: np.ndarray, loss: np.ndarray) -> dict[str, float]:
        from isoflop.laws.fit import fit_generic

        return fit_generic(self, n, d, loss)


class DataConstrainedLaw(Law):
    """Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models", Eq. 5 and App. A): the Chinchilla
    form evaluated on effective tokens ``D'`` and effective parameters ``N'``; fitted decay constants
    ``R_D* = 15.4`` and ``R_N* = 5.3`` (their Sec. 3.1). Unique tokens beyond the tokens seen count as ``D``."""

    form = "data_constrained"
    param_names = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")

    def base(self) -> ChinchillaLaw:
        p = self.params
        return ChinchillaLaw(self.name, self.citation, param_kind=self.param_kind, E=p["E"], A=p["A"], B=p["B"], alpha=p["alpha"], beta=p["beta"])

    def effective(self, n: Any, d: Any, unique_tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """Effective ``(N', D')`` for ``n`` parameters trained on ``d`` tokens drawn from ``unique_tokens``."""
        p = self._fitted()
        n, d, u = (np.asarray(x, dtype=float) for x in (n, d, unique_tokens))
        u_d = np.minimum(u, d)
        r_d = d / u_d - 1.0
        d_eff = u_d + u_d * p["R_D_star"] * (1.0 - np.exp(-r_d / p["R_D_star"]))
        g = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1.0 / (p["alpha"] + p["beta"]))
        n_for_u = g ** ((p["alpha"] + p["beta"]) / p["alpha"]) * u_d ** (p["beta"] / p["alpha"])  # inverse of D_opt(N)
        u_n = np.minimum(n, n_for_u)
        r_n = n / u_n - 1.0
        n_eff = u_n + u_n * p["R_N_star"] * (1.0 - np.exp(-r_n / p["R_N_star"]))
        return n_eff, d_eff

    def predict(self, n: Any, d: Any, unique_tokens: Any = None) -> np.ndarray:
        """Loss with ``unique_tokens`` unique tokens; without them the data are unlimited (the Chinchilla law)."""
        if unique_tokens is None:
            return self.base().predict(n, d)
        n_eff, d_eff = self.effective(n, d, unique_tokens)
        return self.base().predict(n_eff, d_eff)

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        """Compute-optimal ``(N, D)`` with unlimited unique data (the base Chinchilla law)."""
        return self.base().optimal(flops)

    def fit(self, n: Any, d: Any, unique_tokens: Any, loss: Any) -> "DataConstrainedLaw":
        """Fit all seven parameters by least squares on log loss (L-BFGS-B on log parameters), starting from the
        current parameters or Muennighoff et al.'s. Runs need ``unique_tokens`` (U_D) each. Returns self."""
        from isoflop.laws.fit import check_runs

        if not self.params:
            self.params = dict(PRESETS["muennighoff"]["params"])
        n, d, loss = check_runs(n, d, loss, len(self.param_names) + 1, "a data-constrained fit")
        u = check_runs(unique_tokens, d, loss, 1, "a data-constrained fit")[0]
        self._data = (n, d, u, loss)
        self.params = self._refit(*self._data)
        self.samples, self.info = None, {"n_points": int(len(n))}
        return self

    def _refit(self, n: np.ndarray, d: np.ndarray, u: np.ndarray, loss: np.ndarray) -> dict[str, float]:
        from isoflop.laws.fit import fit_generic

        return fit_generic(self, n, d, loss, extra=(u,))


class SaturatingPowerLaw(Law):
    """``L(x) = L_inf + (x_0 / x)^alpha`` in one variable (e.g. Hestness et al. 2017; Henighan et al. 2020, Eq. 1.1)."""

    form = "saturating"
    param_names = ("L_inf", "x0", "alpha")

    def predict(self, x: Any, d: Any = None) -> np.ndarray:  # noqa: ARG002 (one variable)
        p = self._fitted()
        return p["L_inf"] + (p["x0"] / np.asarray(x, dtype=float)) ** p["alpha"]

    def inverse(self, loss: float) -> float:
        """The ``x`` at which the law reaches ``loss`` (must be above ``L_inf``)."""
        p = self.params
        if loss <= p["L_inf"]:
            raise IsoflopError(f"target loss {loss} is at or below the irreducible loss {p['L_inf']:.4f}; choose a higher target")
        return p["x0"] * (loss - p["L_inf"]) ** (-1.0 / p["alpha"])

    def fit(self, x: Any, loss: Any) -> "SaturatingPowerLaw":
        """Huber-free least squares on log loss (L-BFGS-B on ``(log L_inf, log x0, alpha)``). Returns self."""
        from isoflop.laws.fit import check_runs

        x, _, loss = check_runs(x, np.ones(np.size(x)), loss, 3, "a saturating power law")
        self._data = (x, loss)
        self.params = self._refit(x, loss)
        self.samples, self.info = None, {"n_points": int(len(x))}
        return self

    def _refit(self, x: np.ndarray, loss: np.ndarray) -> dict[str, float]:
        from isoflop.laws.fit import fit_saturating

        return fit_saturating(x, loss).params


class AllocationLaw(Law):
    """``N_opt = k_N C^a``, ``D_opt = k_D C^b`` from Approach 1 or 2 (Hoffmann et al. 2022, Sec. 3.1-3.2, Table 2);
    ``loss`` (optional) is a ``SaturatingPowerLaw`` of the minimum loss against compute."""

    form = "allocation"
    param_names = ("k_N", "a", "k_D", "b")

    def __init__(self, name: str = "custom", citation: str = "", loss: SaturatingPowerLaw | None = None, *,
                 param_kind: str = "total", **params: float) -> None:
        super().__init__(name, citation, param_kind=param_kind, **params)
        self.loss_law = loss
        self.minima: list[dict[str, float]] = []

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        p = self._fitted()
        c = np.asarray(flops, dtype=float)
        return p["k_N"] * c ** p["a"], p["k_D"] * c ** p["b"]

    def _refit(self, n: np.ndarray, d: np.ndarray, loss: np.ndarray, c: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
        """Refit with the same approach (used by ``bootstrap`` on resampled runs)."""
        from isoflop.laws.fit import fit_approach1, fit_approach2

        if self.info.get("approach") == 1:
            return fit_approach1(n, d, loss, c).params
        return fit_approach2(n, d, loss, c, groups=groups).params

    def optimal_loss(self, flops: Any) -> np.ndarray | None:
        return None if self.loss_law is None else self.loss_law.predict(flops)

    def _extra_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loss_law": None if self.loss_law is None else self.loss_law.to_dict()}
        if self.minima:
            out["minima"] = self.minima
        return out


FORMS: dict[str, type[Law]] = {cls.form: cls for cls in (ChinchillaLaw, KaplanLaw, DataConstrainedLaw, SaturatingPowerLaw, AllocationLaw)}

HOFFMANN = "Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', Eq. 10 (Approach 3 fit)"
BESIROGLU = "Besiroglu et al. 2024, 'Chinchilla Scaling: A replication attempt', Eq. 4 (Approach 3 refit on Hoffmann's data)"
KAPLAN = "Kaplan et al. 2020, 'Scaling Laws for Neural Language Models', Eq. 1.5 and Table 2 (L(N, D) fit)"
MUENNIGHOFF = ("Muennighoff et al. 2023, 'Scaling Data-Constrained Language Models', Eq. 5 and Sec. 3.1; fitted constants "
               "from the authors' repository (huggingface/datablations, 'Parametric Fit')")

# Published constants (facts from the cited papers). param_kind: Hoffmann et al. 2022 count all parameters,
# embeddings included (their Table A9 sizes), and Besiroglu et al. refit Hoffmann's data; Kaplan et al. 2020 count
# non-embedding parameters (Sec. 1.2); Muennighoff et al. 2023 name their models by total parameters with the
# GPT-2 vocabulary's embeddings (datablations utils/model_params.sh: "7M" is d_model 128 x 3 layers, 0.6M
# non-embedding + 6.4M embedding; Hoffmann's Table A9 configurations).
PRESETS: dict[str, dict[str, Any]] = {
    "hoffmann": {"form": "chinchilla", "citation": HOFFMANN, "param_kind": "total",
                 "params": {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}},
    "besiroglu": {"form": "chinchilla", "citation": BESIROGLU, "param_kind": "total",
                  "params": {"E": 1.8172, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}},
    "kaplan": {"form": "kaplan", "citation": KAPLAN, "param_kind": "non_embedding",
               "params": {"N_c": 6.4e13, "D_c": 1.8e13, "alpha_N": 0.076, "alpha_D": 0.103}},
    # Published in log form (a, b, e) = (6.255414, 7.3049974, 0.6254804) with the authors' code.
    "muennighoff": {"form": "data_constrained", "citation": MUENNIGHOFF, "param_kind": "total",
                    "params": {"E": math.exp(0.6254804), "A": math.exp(6.255414), "B": math.exp(7.3049974),
                               "alpha": 0.3526596, "beta": 0.3526596, "R_D_star": 15.387756, "R_N_star": 5.309743}},
}


def law_from_dict(data: dict[str, Any]) -> Law:
    """Rebuild a law from ``to_dict`` output (a fitted law file or a preset entry); files written before laws
    carried ``param_kind`` load as ``total``."""
    if not isinstance(data, dict) or "form" not in data or not isinstance(data.get("params"), dict):
        raise IsoflopError("a law file must map 'form' and 'params' (as written by `isoflop fit --out`)")
    cls = FORMS.get(str(data["form"]))
    if cls is None:
        raise IsoflopError(f"unknown law form {data['form']!r}; use one of {', '.join(FORMS)}")
    kwargs: dict[str, Any] = {"param_kind": str(data.get("param_kind", "total"))}
    if cls is AllocationLaw and data.get("loss_law"):
        kwargs["loss"] = law_from_dict(data["loss_law"])
    try:
        law = cls(str(data.get("name", "custom")), str(data.get("citation", "")), **kwargs, **data["params"])
    except (TypeError, ValueError) as exc:
        raise IsoflopError(f"invalid law parameters: {exc}") from None
    if data.get("bootstrap_samples"):
        samples = np.asarray(data["bootstrap_samples"], dtype=float)
        if samples.ndim != 2 or samples.shape[1] != len(cls.param_names) or not np.all(np.isfinite(samples)):
            raise IsoflopError("bootstrap_samples in the law file are malformed; refit with `isoflop fit --bootstrap R`")
        law.samples = samples
    if isinstance(data.get("fit"), dict):
        law.info = dict(data["fit"])
    if isinstance(law, AllocationLaw) and isinstance(data.get("minima"), list):
        law.minima = list(data["minima"])
    return law


def preset_law(name: str) -> Law:
    """A literature preset by name (``hoffmann``, ``besiroglu``, ``kaplan``, ``muennighoff``)."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise IsoflopError(f"unknown law preset {name!r}; use one of {', '.join(PRESETS)} or a law file from `isoflop fit --out`")
    return law_from_dict({"name": key, **PRESETS[key]})


def load_law(source: str | Path | Law) -> Law:
    """A law from a preset name or a JSON/YAML file written by ``Law.save`` / ``isoflop fit --out``."""
    if isinstance(source, Law):
        return source
    text = str(source)
    if text.strip().lower() in PRESETS:
        return preset_law(text)
    path = Path(text)
    if not path.is_file():
        raise IsoflopError(f"law {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    return law_from_dict(read_json_or_yaml(path, "law file", "rewrite it with `isoflop fit --out`"))
