"""Scaling-law forms as objects, pure math: ``predict``, ``optimal``, intervals from bootstrap draws and
(de)serialisation (``to_dict``, ``save``, ``law_from_dict``). Fitting is ``isoflop.laws.fit``; resampling is
``isoflop.laws.bootstrap``; both fill a law's fitted attributes (``params_``, ``samples_``, ...).

* ``ChinchillaLaw``: ``L = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, Eq. 2).
* ``KaplanLaw``: ``L = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan et al. 2020, Eq. 1.5).
* ``DataConstrainedLaw``: the Chinchilla form on effective data and parameters (Muennighoff et al. 2023, Eq. 5):
  ``D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*))`` with ``R_D = D / U_D - 1`` repetitions, and likewise
  ``N' = U_N + U_N R_N* (1 - exp(-R_N / R_N*))`` with ``U_N = min(N, N_opt(U_D))``, the parameter count for which
  the unique tokens are compute-optimal, and ``R_N = N / U_N - 1``.
* ``SaturatingPowerLaw``: ``L = L_inf + (x_0 / x)^alpha`` in one variable (e.g. minimum loss against compute).
* ``PowerLaw``: ``y = k x^exponent`` in one variable.
* ``AllocationLaw``: ``N_opt = k_N C^a`` and ``D_opt = k_D C^b`` (Approaches 1 and 2 of Hoffmann et al. 2022),
  optionally with a ``SaturatingPowerLaw`` for the loss at the optimum.

Presets (``get_law_preset``): ``hoffmann``, ``besiroglu``, ``kaplan``, ``muennighoff``; data in ``presets.yaml``.

Every law says which parameters its ``N`` counts (``param_kind``): ``total``, or ``non_embedding`` as in Kaplan
et al. 2020 (Sec. 1.2; their ``C = 6 N D``, Eq. 2.1, also counts non-embedding N). Planning with a law must
build and cost the model in that count.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import yaml

from isoflop.atomic import atomic_write_text
from isoflop.errors import IsoflopError, first_line, quote
from isoflop.laws.intervals import ci95
from isoflop.structured import read_json_or_yaml

PARAM_KINDS = ("total", "non_embedding")


def check_param_kind(kind: str) -> str:
    """``kind`` if it is one of ``PARAM_KINDS``, else a one-line ``IsoflopError``."""
    if kind not in PARAM_KINDS:
        raise IsoflopError(
            f"param_kind must be 'total' or 'non_embedding' (which parameters the law's N counts), got {kind!r}"
        )
    return kind


class Law:
    """Common machinery: named float parameters, bootstrap draws, ``ci95``, dict/JSON/YAML round trips.
    ``param_kind``: which parameters ``N`` counts, ``total`` or ``non_embedding`` (see the module docstring).

    State follows scikit-learn's convention: ``params_`` (the parameters, given or fitted), ``samples_`` (bootstrap
    draws, shape ``(R, len(param_names))``), ``info_`` (fit diagnostics), ``n_iter_`` (optimiser iterations) and
    ``runs_`` (the arrays the law was fitted to, which ``isoflop.laws.bootstrap`` resamples) are set by
    ``isoflop.laws.fit`` and ``isoflop.laws.bootstrap``; a law built from parameters has no ``runs_``."""

    form: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()
    # Parameters a law file must give > 0 (scales, exponents) and >= 0 (loss floors): the form's physical range.
    positive: ClassVar[tuple[str, ...]] = ()
    nonnegative: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        name: str = "custom",
        citation: str = "",
        *,
        param_kind: str = "total",
        objective: str = "huber_log",
        **params: float,
    ) -> None:
        missing = [p for p in self.param_names if p not in params]
        extra = [p for p in params if p not in self.param_names]
        if params and missing or extra:
            raise IsoflopError(
                f"{self.form} law needs parameters {', '.join(self.param_names)} (missing {missing}, unknown {extra})"
            )
        for key, value in params.items():
            if value is None or not math.isfinite(float(value)):
                raise IsoflopError(f"{self.form} law parameter {key} is {quote(value, 40)}; it must be a finite number")
        self.name = name
        self.citation = citation
        self.param_kind = check_param_kind(param_kind)
        if objective not in OBJECTIVES:
            raise IsoflopError(f"unknown fit objective {objective!r}; use one of {', '.join(OBJECTIVES)}")
        self.objective = objective
        # No parameters at all: an unfitted law (``isoflop.laws.fit.fit(ChinchillaLaw(), N, D, L)``).
        self.params_: dict[str, float] = {k: float(params[k]) for k in self.param_names} if params else {}
        self.samples_: np.ndarray | None = None
        self.info_: dict[str, Any] = {}
        self.n_iter_: int = 0
        self.runs_: tuple[np.ndarray, ...] | None = None

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v:.6g}" for k, v in self.params_.items())
        return f"{type(self).__name__}({self.name}: {inner})"

    def with_params(self, values: np.ndarray | dict[str, float]) -> Law:
        """A copy with other parameter values (used for bootstrap draws); no draws, diagnostics or runs."""
        vals = values if isinstance(values, dict) else dict(zip(self.param_names, (float(v) for v in values)))
        clone = copy.copy(self)
        clone.params_ = {k: float(vals[k]) for k in self.param_names}
        clone.samples_, clone.info_, clone.n_iter_, clone.runs_ = None, {}, 0, None
        if hasattr(clone, "theta_"):
            clone.theta_ = None
        return clone

    def sample_laws(self) -> list[Law]:
        """One law per bootstrap draw (empty without a bootstrap)."""
        if self.samples_ is None:
            return []
        return [self.with_params(row) for row in self.samples_]

    def _fitted(self) -> dict[str, float]:
        if not self.params_:
            raise IsoflopError(f"this {self.form} law has no parameters yet; fit it or load a preset/law file")
        return self.params_

    @property
    def ci95(self) -> dict[str, list[float] | None]:
        """95% percentile bootstrap intervals per parameter; ``None`` without bootstrap samples."""
        if self.samples_ is None or len(self.samples_) < 2:
            return {k: None for k in self.param_names}
        return {k: ci95(self.samples_[:, i]) for i, k in enumerate(self.param_names)}

    def derived(self) -> dict[str, float]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        self._fitted()
        out: dict[str, Any] = {
            "form": self.form,
            "name": self.name,
            "citation": self.citation,
            "param_kind": self.param_kind,
            "objective": self.objective,
            "params": dict(self.params_),
        }
        out.update(self._extra_dict())
        out["ci95"] = self.ci95
        out.update(self.derived())
        if self.info_:
            out["fit"] = self.info_
        if self.samples_ is not None:
            out["bootstrap_samples"] = self.samples_.tolist()
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


# Fit objectives: Huber (delta 1e-3) on log loss (Hoffmann et al. 2022, Eq. 3; Besiroglu et al. 2024) or least
# squares on raw loss (Gadre et al. 2024, Sec. 3, scipy curve_fit). A law file records the one it was fitted with.
OBJECTIVES = ("huber_log", "ls_raw")


def chinchilla_g(a: Any, b: Any, alpha: Any, beta: Any) -> Any:
    """``G = (alpha A / (beta B))^(1 / (alpha + beta))`` (Hoffmann et al. 2022, Eq. 4): ``N_opt = G (C/6)^a``,
    ``D_opt = G^-1 (C/6)^b``. Vectorised over arrays of parameters (one per bootstrap draw)."""
    return (alpha * a / (beta * b)) ** (1.0 / (alpha + beta))


class ChinchillaLaw(Law):
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Hoffmann et al. 2022, Eq. 2; N parameters, D tokens)."""

    form = "chinchilla"
    param_names = ("E", "A", "B", "alpha", "beta")
    positive = ("A", "B", "alpha", "beta")
    nonnegative = ("E",)

    def __init__(self, name: str = "custom", citation: str = "", **kwargs: Any) -> None:
        super().__init__(name, citation, **kwargs)
        self.theta_: np.ndarray | None = None  # the fitted optimum as (log A, log B, log E, alpha, beta)

    def predict(self, n: Any, d: Any) -> np.ndarray:
        p = self._fitted()
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["beta"]

    @property
    def a_opt(self) -> float:
        """Exponent of ``N_opt ~ C^a``: ``a = beta / (alpha + beta)`` (Hoffmann et al. 2022, Eq. 4)."""
        return self.params_["beta"] / (self.params_["alpha"] + self.params_["beta"])

    @property
    def b_opt(self) -> float:
        """Exponent of ``D_opt ~ C^b``: ``b = alpha / (alpha + beta)`` (Hoffmann et al. 2022, Eq. 4)."""
        return self.params_["alpha"] / (self.params_["alpha"] + self.params_["beta"])

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        """Closed-form compute-optimal ``(N_opt, D_opt)`` under ``C = 6 N D`` (Hoffmann et al. 2022, Eq. 4):
        ``N_opt = G (C/6)^a``, ``D_opt = G^-1 (C/6)^b``, ``G = (alpha A / (beta B))^(1 / (alpha + beta))``."""
        p = self._fitted()
        g = chinchilla_g(p["A"], p["B"], p["alpha"], p["beta"])
        c6 = np.asarray(flops, dtype=float) / 6.0
        return g * c6**self.a_opt, c6**self.b_opt / g

    def derived(self) -> dict[str, float]:
        return {"a_opt": self.a_opt, "b_opt": self.b_opt}


class KaplanLaw(Law):
    """``L(N, D) = [(N_c / N)^(alpha_N / alpha_D) + D_c / D]^alpha_D`` (Kaplan et al. 2020, Eq. 1.5; N counts
    non-embedding parameters, L in nats per token on WebText2)."""

    form = "kaplan"
    param_names = ("N_c", "D_c", "alpha_N", "alpha_D")
    positive = param_names

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


class DataConstrainedLaw(Law):
    """Muennighoff et al. 2023 ("Scaling Data-Constrained Language Models", Eq. 5 and App. A): the Chinchilla
    form evaluated on effective tokens ``D'`` and effective parameters ``N'``; fitted decay constants
    ``R_D* = 15.4`` and ``R_N* = 5.3`` (their Sec. 3.1). Unique tokens beyond the tokens seen count as ``D``."""

    form = "data_constrained"
    param_names = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")
    positive = ("A", "B", "alpha", "beta", "R_D_star", "R_N_star")
    nonnegative = ("E",)

    def base(self) -> ChinchillaLaw:
        p = self.params_
        return ChinchillaLaw(
            self.name,
            self.citation,
            param_kind=self.param_kind,
            E=p["E"],
            A=p["A"],
            B=p["B"],
            alpha=p["alpha"],
            beta=p["beta"],
        )

    def effective(self, n: Any, d: Any, unique_tokens: Any) -> tuple[np.ndarray, np.ndarray]:
        """Effective ``(N', D')`` for ``n`` parameters trained on ``d`` tokens drawn from ``unique_tokens``."""
        p = self._fitted()
        n, d, u = (np.asarray(x, dtype=float) for x in (n, d, unique_tokens))
        u_d = np.minimum(u, d)
        r_d = d / u_d - 1.0
        d_eff = u_d + u_d * p["R_D_star"] * (1.0 - np.exp(-r_d / p["R_D_star"]))
        g = chinchilla_g(p["A"], p["B"], p["alpha"], p["beta"])
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


class SaturatingPowerLaw(Law):
    """``L(x) = L_inf + (x_0 / x)^alpha`` in one variable (e.g. Hestness et al. 2017; Henighan et al. 2020, Eq. 1.1)."""

    form = "saturating"
    param_names = ("L_inf", "x0", "alpha")
    positive = ("x0", "alpha")
    nonnegative = ("L_inf",)

    def predict(self, x: Any, d: Any = None) -> np.ndarray:  # noqa: ARG002 (one variable)
        p = self._fitted()
        return p["L_inf"] + (p["x0"] / np.asarray(x, dtype=float)) ** p["alpha"]

    def inverse(self, loss: float) -> float:
        """The ``x`` at which the law reaches ``loss`` (must be above ``L_inf``)."""
        p = self.params_
        if loss <= p["L_inf"]:
            raise IsoflopError(
                f"target loss {loss} is at or below the irreducible loss {p['L_inf']:.4f}; choose a higher target"
            )
        return p["x0"] * (loss - p["L_inf"]) ** (-1.0 / p["alpha"])


class PowerLaw(Law):
    """``y(x) = k x^exponent``: a pure power law in one variable, fitted by least squares in log-log space (e.g. a
    loss envelope through too few points to pin down a saturating law's floor)."""

    form = "power"
    param_names = ("k", "exponent")
    positive = ("k",)

    def predict(self, x: Any, d: Any = None) -> np.ndarray:  # noqa: ARG002 (one variable)
        p = self._fitted()
        return p["k"] * np.asarray(x, dtype=float) ** p["exponent"]


class AllocationLaw(Law):
    """``N_opt = k_N C^a``, ``D_opt = k_D C^b`` from Approach 1 or 2 (Hoffmann et al. 2022, Sec. 3.1-3.2, Table 2);
    ``loss`` (optional) is a ``SaturatingPowerLaw`` of the minimum loss against compute."""

    form = "allocation"
    positive = ("k_N", "a", "k_D", "b")
    param_names = ("k_N", "a", "k_D", "b")

    def __init__(
        self,
        name: str = "custom",
        citation: str = "",
        loss: SaturatingPowerLaw | None = None,
        *,
        approach: int = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, citation, **kwargs)
        if approach not in (1, 2):
            raise IsoflopError(f"an allocation law comes from Approach 1 or 2, got {approach!r}")
        self.loss_law = loss
        self.approach = approach
        self.minima_: list[dict[str, float]] = []

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        p = self._fitted()
        c = np.asarray(flops, dtype=float)
        return p["k_N"] * c ** p["a"], p["k_D"] * c ** p["b"]

    def optimal_loss(self, flops: Any) -> np.ndarray | None:
        return None if self.loss_law is None else self.loss_law.predict(flops)

    def _extra_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"loss_law": None if self.loss_law is None else self.loss_law.to_dict()}
        if self.minima_:
            out["minima"] = self.minima_
        return out


class TiedChinchillaLaw(Law):
    """``L(N, D) = E + A / N^alpha + B / D^alpha``: Chinchilla's form with one exponent for N and D (Gadre et al.
    2024, Sec. 2.1, who tie them; Muennighoff et al. 2023's fitted alpha and beta also coincide). Then
    ``N_opt = G (C/6)^(1/2)``, ``D_opt = G^-1 (C/6)^(1/2)`` with ``G = (A / B)^(1 / (2 alpha))`` (Hoffmann Eq. 4)."""

    form = "chinchilla_tied"
    param_names = ("E", "A", "B", "alpha")

    def predict(self, n: Any, d: Any) -> np.ndarray:
        p = self._fitted()
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        return p["E"] + p["A"] / n ** p["alpha"] + p["B"] / d ** p["alpha"]

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        p = self._fitted()
        g = chinchilla_g(p["A"], p["B"], p["alpha"], p["alpha"])
        c6 = np.asarray(flops, dtype=float) / 6.0
        return g * np.sqrt(c6), np.sqrt(c6) / g


class OvertrainingLaw(Law):
    """``L(C, M) = E + (a M^eta + b M^-eta) C^-eta`` with ``M = D / N`` tokens per parameter and ``C = 6 N D``
    (Gadre et al. 2024, Eq. 4). It is the tied Chinchilla form rewritten: ``N = (C / 6M)^(1/2)``,
    ``D = (C M / 6)^(1/2)`` give ``eta = alpha / 2``, ``a = A 6^eta``, ``b = B 6^eta`` (``from_tied``). For a
    given C the best ratio is ``M* = (b / a)^(1 / (2 eta))``, where ``d/dM (a M^eta + b M^-eta) = 0``."""

    form = "overtraining"
    param_names = ("E", "a", "b", "eta")

    def predict(self, n: Any, d: Any) -> np.ndarray:
        p = self._fitted()
        n, d = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
        c, m = 6.0 * n * d, d / n
        return p["E"] + (p["a"] * m ** p["eta"] + p["b"] * m ** -p["eta"]) * c ** -p["eta"]

    def optimal(self, flops: Any) -> tuple[np.ndarray, np.ndarray]:
        p = self._fitted()
        m = (p["b"] / p["a"]) ** (1.0 / (2.0 * p["eta"]))
        c = np.asarray(flops, dtype=float)
        return np.sqrt(c / (6.0 * m)), np.sqrt(c * m / 6.0)

    @staticmethod
    def tied_to_overtraining(params: dict[str, float]) -> dict[str, float]:
        """``(E, A, B, alpha)`` of ``TiedChinchillaLaw`` as ``(E, a, b, eta)``."""
        eta = params["alpha"] / 2.0
        return {"E": params["E"], "a": params["A"] * 6.0**eta, "b": params["B"] * 6.0**eta, "eta": eta}

    @staticmethod
    def overtraining_to_tied(params: dict[str, float]) -> dict[str, float]:
        """``(E, a, b, eta)`` as ``TiedChinchillaLaw``'s ``(E, A, B, alpha)``; inverts ``tied_to_overtraining``."""
        eta = params["eta"]
        return {"E": params["E"], "A": params["a"] / 6.0**eta, "B": params["b"] / 6.0**eta, "alpha": 2.0 * eta}


FORMS: dict[str, type[Law]] = {
    cls.form: cls
    for cls in (
        ChinchillaLaw,
        TiedChinchillaLaw,
        OvertrainingLaw,
        KaplanLaw,
        DataConstrainedLaw,
        SaturatingPowerLaw,
        PowerLaw,
        AllocationLaw,
    )
}

PRESETS_FILE = Path(__file__).with_name("presets.yaml")
PRESETS: dict[str, dict[str, Any]] = read_json_or_yaml(PRESETS_FILE, "law presets", "reinstall isoflop")


def law_from_dict(data: dict[str, Any]) -> Law:
    """Rebuild a law from ``to_dict`` output (a fitted law file or a preset entry); files written before laws
    carried ``param_kind`` load as ``total``."""
    if not isinstance(data, dict) or "form" not in data or not isinstance(data.get("params"), dict):
        raise IsoflopError("a law file must map 'form' and 'params' (as written by `isoflop fit --out`)")
    cls = FORMS.get(str(data["form"]))
    if cls is None:
        raise IsoflopError(f"unknown law form {quote(data['form'], 40)}; use one of {', '.join(FORMS)}")
    kwargs: dict[str, Any] = {
        "param_kind": str(data.get("param_kind", "total")),
        "objective": str(data.get("objective", "huber_log")),
    }
    if cls is AllocationLaw:
        if data.get("loss_law"):
            kwargs["loss"] = law_from_dict(data["loss_law"])
        fit_info = data.get("fit") if isinstance(data.get("fit"), dict) else {}
        kwargs["approach"] = fit_info.get("approach", 2)
    try:
        law = cls(str(data.get("name", "custom")), str(data.get("citation", "")), **kwargs, **data["params"])
    except (TypeError, ValueError) as exc:
        raise IsoflopError(f"invalid law parameters: {first_line(str(exc))}") from None
    _check_range(law)
    if data.get("bootstrap_samples"):
        try:
            samples = np.asarray(data["bootstrap_samples"], dtype=float)
        except (TypeError, ValueError):
            samples = np.empty(0)
        if samples.ndim != 2 or samples.shape[1] != len(cls.param_names) or not np.all(np.isfinite(samples)):
            raise IsoflopError(
                f"bootstrap_samples in the law file must be a list of rows of {len(cls.param_names)} finite numbers "
                f"({', '.join(cls.param_names)}); refit with `isoflop fit --bootstrap R`"
            )
        law.samples_ = samples
    if isinstance(data.get("fit"), dict):
        law.info_ = dict(data["fit"])
    if isinstance(law, AllocationLaw) and isinstance(data.get("minima"), list):
        law.minima_ = list(data["minima"])
    return law


def _check_range(law: Law) -> None:
    """Refuse parameters outside the form's range (a zero or negative exponent makes the law meaningless)."""
    for key in law.positive:
        if law.params_[key] <= 0:
            raise IsoflopError(
                f"{law.form} law parameter {key} is {law.params_[key]:g}; it must be > 0 "
                "(fit the law again with `isoflop fit --out`)"
            )
    for key in law.nonnegative:
        if law.params_[key] < 0:
            raise IsoflopError(f"{law.form} law parameter {key} is {law.params_[key]:g}; it must be >= 0")


def get_law_preset(name: str) -> Law:
    """A literature preset by name (``hoffmann``, ``besiroglu``, ``kaplan``, ``muennighoff``)."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise IsoflopError(
            f"unknown law preset {name!r}; use one of {', '.join(PRESETS)} or a law file from `isoflop fit --out`"
        )
    return law_from_dict({"name": key, **PRESETS[key]})


def load_law(source: str | Path | Law) -> Law:
    """A law from a preset name or a JSON/YAML file written by ``Law.save`` / ``isoflop fit --out``."""
    if isinstance(source, Law):
        return source
    text = str(source)
    if text.strip().lower() in PRESETS:
        return get_law_preset(text)
    path = Path(text)
    if not path.is_file():
        raise IsoflopError(f"law {text!r} is neither a preset ({', '.join(PRESETS)}) nor an existing file")
    return law_from_dict(read_json_or_yaml(path, "law file", "rewrite it with `isoflop fit --out`"))
