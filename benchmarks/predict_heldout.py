"""Held-out loss predictions on Gadre et al. 2024's over-training runs, and leave-one-out interval coverage.

1. The paper's protocol (Gadre et al. 2024, Sec. 3): per training set (C4, RedPajama, RefinedWeb) and eval loss
   (C4, OpenLM), fit on 5 small runs (0.011B-0.411B at M = 20 and 0.011B at M = 320) and predict the larger runs
   held out: 1.4B at its largest M (640 for RedPajama, 320 for RefinedWeb, 80 for C4) and 6.9B at M = 20.
   Forms side by side: the paper's (``overtraining``, least squares on raw loss) and isoflop's (tied and free
   Chinchilla forms, Huber on log loss), all on the paper's 5 runs.
2. isoflop's choice (``cross_validate``): fit set (which small runs), form and objective chosen on the small runs
   alone, never the targets; the choice then predicts the same 12 targets. Round 1: fit to 0.011B-0.154B, score on
   0.411B (one size up), lowest median |error| wins. Round 2, added after round 1's result on the targets was
   known (and disclosed as such): a second fold (fit to 0.011B-0.079B, score 0.154B and 0.411B) whose median
   |error| is averaged with the first's, and a model average of the cv top 3 as one more candidate. Every
   candidate's cv scores and target errors are listed (``--json``: ``selection.candidates``). Intervals: residual
   bootstrap below 30 fitted runs, run bootstrap from there on (``isoflop fit --bootstrap-method auto``).
3. Leave-one-out coverage: every run of a data set is held out in turn, the law is refitted on the rest with a
   run bootstrap, and the held-out loss is compared with the 95% prediction interval (every draw plus every
   modified residual, ``isoflop.laws.predict``). Chinchilla (Besiroglu et al. 2024's points, 5 highest-loss
   dropped) and Gadre (per training set, C4 eval, ~35 runs each; and the three pooled).

Usage: python benchmarks/predict_heldout.py [--json] [--bootstrap 200] [--loo-bootstrap 60] [--loo-stride 1]
       [--skip-loo]
Prints a table (or one JSON object with --json).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isoflop.cli.fit import RUN_BOOTSTRAP_MIN  # noqa: E402
from isoflop.errors import IsoflopError  # noqa: E402
from isoflop.laws import bootstrap as B  # noqa: E402
from isoflop.laws import fit as F  # noqa: E402
from isoflop.laws.forms import FORMS  # noqa: E402
from isoflop.laws.intervals import ci95  # noqa: E402
from isoflop.laws.predict import predict, predictive_draws  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
GADRE = DATA / "overtraining_gadre2024.csv"
CHINCHILLA = DATA / "chinchilla_svg_extracted.csv"
CANDIDATES = [  # (form, objective); the first is the paper's
    ("overtraining", "ls_raw"),
    ("overtraining", "huber_log"),
    ("chinchilla_tied", "huber_log"),
    ("chinchilla", "huber_log"),
]
PAPER_ERRORS = {("rpj", "loss_c4_val"): [0.71, 0.73]}  # Gadre et al. 2024, Fig. 1 / Table 2 (relative error, %)
TRAIN_SETS = ("c4_original", "rpj", "rw_original")
EVAL_LOSSES = ("loss_c4_val", "loss_openlm_val")


def _m(r: dict) -> float:
    """The run's token multiplier over Chinchilla's 20 tokens per parameter (the CSV's ``chinchilla_multiplier``)."""
    return float(r["chinchilla_multiplier"])


def _paper_set(runs: list[dict]) -> list[dict]:
    """Gadre et al. 2024, Sec. 3: every size at M = 20 and the smallest at M = 320."""
    smallest = min(float(r["params"]) for r in runs)
    return [r for r in runs if _m(r) == 1.0] + [r for r in runs if float(r["params"]) == smallest and _m(r) == 16.0]


# Which of the small runs a law is fitted to; the first is the paper's. "M>=20" leaves out the runs shorter than
# Chinchilla's 20 tokens per parameter (M = 5, 10), which spend up to all their tokens in warmup.
FIT_SETS = {
    "paper": _paper_set,
    "M in 20,320": lambda runs: [r for r in runs if _m(r) in (1.0, 16.0)],
    "M>=20": lambda runs: [r for r in runs if _m(r) >= 1.0],
    "all": lambda runs: list(runs),
}
SELECTION_FORMS = [("overtraining", "ls_raw"), ("overtraining", "huber_log"), ("chinchilla", "ls_raw"),
                   ("chinchilla", "huber_log")]  # fmt: skip


def _arrays(rows: list[dict], loss_col: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.array([float(r[k]) for r in rows]) for k in ("params", "tokens", loss_col))


def _fit(form: str, objective: str, n, d, loss, bootstrap: int, method: str):
    law = F.fit(FORMS[form](objective=objective), n, d, loss)
    if bootstrap:
        with contextlib.suppress(IsoflopError):  # 5 parameters on 5 runs: no residual freedom, so no interval
            B.bootstrap(law, bootstrap, seed=0, method=method)
    return law


def _split(runs: list[dict]) -> tuple[list[dict], list[dict]]:
    """The paper's split of one training set: the small runs (up to 0.411B) and the two held-out targets, 1.4B at
    its largest M and 6.9B at M = 20."""
    small = [r for r in runs if float(r["params"]) < 5e8]
    over = [r for r in runs if 1e9 < float(r["params"]) < 5e9 and _m(r) > 1.0]
    return small, [max(over, key=_m)] + [r for r in runs if float(r["params"]) > 5e9]


FOLDS = ("0.411B from 3 sizes", "0.154B+0.411B from 2 sizes")  # round 1 scored the first alone
ENSEMBLE_K = 3  # the model average's members, fixed before it was scored: the smallest odd k whose median
# ignores one wild member
ENSEMBLE = (f"median of the cv top {ENSEMBLE_K}", "model average", "-")


def _folds(small: list[dict]) -> dict[str, tuple[list[dict], list[dict]]]:
    """The cross-validation folds of one training set's small runs, ``{name: (pool, held)}``: fit to the pool (by
    each fit-set rule), score on the held runs at every M >= 20. Round 1: fit to the 3 smallest sizes
    (0.011B-0.154B), score the largest (0.411B), one size up. Round 2 adds fitting to the 2 smallest (0.011B,
    0.079B) and scoring 0.154B and 0.411B: one and two sizes up (2-5x in N, up to ~30x in compute), as the
    targets are (3.5x and 17x in N from 0.411B), so the choice rewards laws that keep extrapolating."""
    sizes = sorted({float(r["params"]) for r in small})
    out = {}
    for name, k in zip(FOLDS, (3, 2)):
        pool = [r for r in small if float(r["params"]) <= sizes[k - 1]]
        held = [r for r in small if float(r["params"]) > sizes[k - 1] and _m(r) >= 1.0]
        out[name] = (pool, held)
    return out


def _predictions(config: tuple[str, str, str], fit_rows: list[dict], targets: list[dict], loss_col: str):
    """The losses ``config`` (fit set, form, objective) fitted to ``fit_rows`` predicts at ``targets``; ``None``
    when the fit fails."""
    fit_set, form, objective = config
    n, d, loss = _arrays(FIT_SETS[fit_set](fit_rows), loss_col)
    tn, td, _ = _arrays(targets, loss_col)
    try:
        law = F.fit(FORMS[form](objective=objective), n, d, loss)
    except IsoflopError:
        return None
    return law.predict(tn, td)


def _score(pred: np.ndarray | None, actual: np.ndarray) -> float | None:
    return None if pred is None else float(np.median(np.abs(100 * (pred / actual - 1))))


def _top(scores: dict[tuple, float | None], k: int) -> list[tuple]:
    """The ``k`` configs with the lowest scores (unscored ones never)."""
    return sorted((c for c, v in scores.items() if v is not None), key=lambda c: scores[c])[:k]


def cross_validate() -> dict:
    """Choose isoflop's law on the small runs alone (never the targets). Every single candidate (fit set x form x
    objective) is fitted on each fold of ``_folds`` (per training set and eval loss) and scored by the median
    |error| on the fold's held runs over the 6 train x eval pairs; its score is the mean over the folds. A
    candidate that cannot be fitted on some fold (the paper's set keeps 4 runs or fewer there) is not scored.

    Round 2 also scores a model average: the median of the ``ENSEMBLE_K`` best single candidates' predictions
    (averaging over models guards against picking one law by a lucky score; Hoeting et al. 1999). Its members
    on each fold are ranked by the *other* fold's score, so its score is never measured on the data that chose
    its members. The lowest score wins; ``round1`` is the previous choice (first fold only, singles only)."""
    rows = list(csv.DictReader(GADRE.open()))
    configs = [(fs, form, obj) for fs in FIT_SETS for form, obj in SELECTION_FORMS]
    preds: dict[tuple, dict[str, list]] = {c: {f: [] for f in FOLDS} for c in configs}
    actual: dict[str, list] = {f: [] for f in FOLDS}
    for ds in TRAIN_SETS:
        small, _ = _split([r for r in rows if r["train_dataset"] == ds])
        for fold, (pool, held) in _folds(small).items():
            for loss_col in EVAL_LOSSES:
                actual[fold].append(_arrays(held, loss_col)[2])
                for c in configs:
                    preds[c][fold].append(_predictions(c, pool, held, loss_col))
    actual_arr = {f: np.concatenate(v) for f, v in actual.items()}
    pred_arr = {
        c: {f: None if any(p is None for p in v) else np.concatenate(v) for f, v in by_fold.items()}
        for c, by_fold in preds.items()
    }
    fold_scores = {c: {f: _score(pred_arr[c][f], actual_arr[f]) for f in FOLDS} for c in configs}
    mean = {c: None if None in s.values() else float(np.mean(list(s.values()))) for c, s in fold_scores.items()}
    candidates = [
        {"fit_set": c[0], "form": c[1], "objective": c[2], "round": 1, "cv_fold_scores": fold_scores[c],
         "cv_score": mean[c]}
        for c in configs
    ]  # fmt: skip
    members_by_fold, ens_scores = {}, {}
    for fold, other in zip(FOLDS, FOLDS[::-1]):
        members = _top({c: fold_scores[c][other] if mean[c] is not None else None for c in configs}, ENSEMBLE_K)
        members_by_fold[fold] = [list(m) for m in members]
        ens_scores[fold] = _score(np.median([pred_arr[m][fold] for m in members], axis=0), actual_arr[fold])
    candidates.append(
        {"fit_set": ENSEMBLE[0], "form": ENSEMBLE[1], "objective": ENSEMBLE[2], "round": 2,
         "cv_fold_scores": ens_scores, "cv_score": float(np.mean(list(ens_scores.values()))),
         "members_by_fold": members_by_fold}
    )  # fmt: skip
    scored = [c for c in candidates if c["cv_score"] is not None]
    best = min(scored, key=lambda c: c["cv_score"])
    round1 = min(
        (c for c in candidates if c["round"] == 1 and c["cv_fold_scores"][FOLDS[0]] is not None),
        key=lambda c: c["cv_fold_scores"][FOLDS[0]],
    )
    return {
        "folds": list(FOLDS),
        "candidates": candidates,
        "selected": best,
        "round1": round1,
        "ensemble_members": [list(m) for m in _top(mean, ENSEMBLE_K)],
    }


class _Fits:
    """Laws fitted to one training set's small runs, cached by (config, train set, eval loss, bootstrap draws);
    intervals from a residual bootstrap below ``RUN_BOOTSTRAP_MIN`` runs, a run bootstrap from there on (as
    ``isoflop fit``'s ``auto``). ``None`` for a fit that fails."""

    def __init__(self, rows: list[dict]) -> None:
        self.split = {ds: _split([r for r in rows if r["train_dataset"] == ds]) for ds in TRAIN_SETS}
        self.cache: dict[tuple, object] = {}

    def law(self, config: tuple[str, str, str], ds: str, loss_col: str, bootstrap: int):
        key = (config, ds, loss_col, bootstrap)
        if key not in self.cache:
            fit_set, form, objective = config
            n, d, loss = _arrays(FIT_SETS[fit_set](self.split[ds][0]), loss_col)
            method = "runs" if len(n) >= RUN_BOOTSTRAP_MIN else "residual"
            try:
                self.cache[key] = _fit(form, objective, n, d, loss, bootstrap, method)
            except IsoflopError:
                self.cache[key] = None
        return self.cache[key]


def paper_protocol(configs: list[tuple[str, str, str]], bootstrap: int, members: list[tuple] = ()) -> list[dict]:
    """Every config on every training set and eval loss, one row per target. ``ENSEMBLE`` is the median of
    ``members``' predictions with the 95% prediction interval of their pooled predictive draws (the equal-weight
    mixture of the members' bootstrap-plus-residual distributions, ``isoflop.laws.predict.predictive_draws``)."""
    fits = _Fits(list(csv.DictReader(GADRE.open())))
    out = []
    for ds in TRAIN_SETS:
        small, targets = fits.split[ds]
        for loss_col in EVAL_LOSSES:
            for config in configs:
                group = [tuple(m) for m in members] if config == ENSEMBLE else [config]
                laws = [fits.law(c, ds, loss_col, bootstrap) for c in group]
                for t in targets:
                    tn, td, actual = float(t["params"]), float(t["tokens"]), float(t[loss_col])
                    row = {
                        "train": ds,
                        "eval": loss_col,
                        "fit_set": config[0],
                        "fit_runs": len(FIT_SETS[config[0]](small)) if config != ENSEMBLE else None,
                        "form": config[1],
                        "objective": config[2],
                        "target": f"{tn / 1e9:.1f}B M={20 * _m(t):g}",
                        "actual": actual,
                        "predicted": None,
                        "error_pct": None,
                        "ci95": None,
                        "pi95": None,
                        "covered": False,
                        "extrapolation": None,
                    }
                    if None not in laws:
                        ps = [predict(law, tn, td) for law in laws]
                        row["predicted"] = float(np.median([p.loss for p in ps]))
                        row["error_pct"] = 100 * (row["predicted"] / actual - 1)
                        row["extrapolation"] = max(p.extrapolation for p in ps)
                        if config == ENSEMBLE:
                            draws = [predictive_draws(law, tn, td) for law in laws]
                            row["pi95"] = None if any(x is None for x in draws) else ci95(np.concatenate(draws))
                        else:
                            row["ci95"], row["pi95"] = ps[0].ci95, ps[0].pi95
                        pi = row["pi95"]
                        row["covered"] = pi is not None and pi[0] <= actual <= pi[1]
                    out.append(row)
    return out


class Held(NamedTuple):
    """One leave-one-out prediction: inside the 95% prediction interval, its width and its |error| (% of loss)."""

    covered: bool
    width_pct: float
    abs_error_pct: float


def loo(n, d, loss, form: str, objective: str, bootstrap: int, stride: int) -> tuple[list[Held], int]:
    """Leave-one-out: refit without run i (run bootstrap), is run i inside the 95% prediction interval? Returns the
    held-out predictions and the number of refits that did not converge (counted, not scored)."""
    held, failed = [], 0
    for i in range(0, len(n), stride):
        keep = np.arange(len(n)) != i
        try:
            law = _fit(form, objective, n[keep], d[keep], loss[keep], bootstrap, "runs")
        except IsoflopError:
            failed += 1
            continue
        p = predict(law, n[i], d[i])
        if p.pi95 is None:
            failed += 1
            continue
        width = (p.pi95[1] - p.pi95[0]) / p.loss * 100
        held.append(Held(p.pi95[0] <= loss[i] <= p.pi95[1], width, abs(p.loss / loss[i] - 1) * 100))
    return held, failed


def _loo_row(name: str, held: list[Held], failed: int) -> dict:
    return {
        "data": name,
        "form": "chinchilla",
        "objective": "huber_log",
        "held_out": len(held),
        "refit_failed": failed,
        "coverage_pct": 100 * float(np.mean([h.covered for h in held])),
        "median_width_pct": float(np.median([h.width_pct for h in held])),
        "median_abs_error_pct": float(np.median([h.abs_error_pct for h in held])),
    }


def coverage(bootstrap: int, stride: int) -> list[dict]:
    """Leave-one-out on Chinchilla (every ``stride``-th point) and on Gadre et al. per training set (C4 eval), and
    on the Gadre data set as a whole (the three training sets' held-out runs pooled)."""
    rows = list(csv.DictReader(CHINCHILLA.open()))
    n = np.array([float(r["Model Size"]) for r in rows])
    c = np.array([float(r["Training FLOP"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    n, d, loss = F.drop_highest_loss(n, c / (6 * n), loss, 5)
    out = [_loo_row("chinchilla", *loo(n, d, loss, "chinchilla", "huber_log", bootstrap, stride))]
    gadre = list(csv.DictReader(GADRE.open()))
    pooled, pooled_failed = [], 0
    for ds in TRAIN_SETS:
        gn, gd, gl = _arrays([r for r in gadre if r["train_dataset"] == ds], "loss_c4_val")
        held, failed = loo(gn, gd, gl, "chinchilla", "huber_log", bootstrap, 1)
        out.append(_loo_row(f"gadre/{ds}", held, failed))
        pooled, pooled_failed = pooled + held, pooled_failed + failed
    out.append(_loo_row("gadre", pooled, pooled_failed))
    return out


def _config(c: dict) -> tuple[str, str, str]:
    return c["fit_set"], c["form"], c["objective"]


def _median_abs(rows: list[dict]) -> float | None:
    """The median |error| over ``rows``; ``None`` when some target has no prediction (a failed fit)."""
    errs = [r["error_pct"] for r in rows]
    return None if not errs or None in errs else float(np.median(np.abs(errs)))


def _median_width(rows: list[dict]) -> float | None:
    """The median width of the 95% prediction intervals, in % of the predicted loss; ``None`` without intervals."""
    widths = [(r["pi95"][1] - r["pi95"][0]) / r["predicted"] * 100 for r in rows if r["pi95"] is not None]
    return float(np.median(widths)) if widths else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap draws per paper-protocol fit")
    ap.add_argument("--loo-bootstrap", type=int, default=60, help="run-bootstrap draws per leave-one-out refit")
    ap.add_argument("--loo-stride", type=int, default=1, help="hold out every K-th Chinchilla point")
    ap.add_argument("--skip-loo", action="store_true", help="skip the leave-one-out coverage (part 3)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    selection = cross_validate()
    members = selection["ensemble_members"]
    chosen, round1 = _config(selection["selected"]), _config(selection["round1"])
    configs = [("paper", form, objective) for form, objective in CANDIDATES]
    configs += [c for c in dict.fromkeys((round1, chosen)) if c not in configs]
    targets = paper_protocol(configs, args.bootstrap, members)
    # Every candidate's point predictions of the targets, listed beside its cv score (not used to choose).
    points = paper_protocol([_config(c) for c in selection["candidates"]], 0, members)
    for c in selection["candidates"]:
        mine = [t for t in points if (t["fit_set"], t["form"], t["objective"]) == _config(c)]
        c["target_errors_pct"] = [t["error_pct"] for t in mine]
        c["target_median_abs_error_pct"] = _median_abs(mine)
    summary = []
    for config in configs:
        mine = [t for t in targets if (t["fit_set"], t["form"], t["objective"]) == config]
        summary.append(
            {
                "fit_set": config[0],
                "form": config[1],
                "objective": config[2],
                "members": members if config == ENSEMBLE else None,
                "cv_selected": config == chosen,
                "round1_selected": config == round1,
                "targets": len(mine),
                "median_abs_error_pct": _median_abs(mine),
                "covered_pct": 100 * float(np.mean([t["covered"] for t in mine])),
                "median_pi_width_pct": _median_width(mine),
            }
        )
    loo_rows = [] if args.skip_loo else coverage(args.loo_bootstrap, args.loo_stride)
    result = {
        "targets": targets,
        "summary": summary,
        "selection": selection,
        "loo": loo_rows,
        "paper": {"rpj/loss_c4_val": [0.71, 0.73]},
    }
    result["seconds"] = round(time.perf_counter() - t0, 1)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    head = ("train", "eval", "fit_set", "form", "objective", "target")
    print(" ".join(f"{h:15}" for h in head), f"{'pred':>7} {'actual':>7} {'err%':>7}  pi95")
    for t in targets:
        pi = "-" if t["pi95"] is None else f"[{t['pi95'][0]:.3f}, {t['pi95'][1]:.3f}]"
        pred = "-" if t["predicted"] is None else f"{t['predicted']:7.4f} {t['actual']:7.4f} {t['error_pct']:+7.2f}"
        print(" ".join(f"{t[h]:15}" for h in head), pred, f" {pi}")
    for c in selection["candidates"]:
        folds = ", ".join("-" if v is None else f"{v:.2f}%" for v in c["cv_fold_scores"].values())
        score, on_targets = c["cv_score"], c["target_median_abs_error_pct"]
        print(
            f"cross-validation {'/'.join(_config(c))}{' (round 2)' if c['round'] == 2 else ''}: folds {folds}, "
            + ("not scored" if score is None else f"score {score:.2f}%")
            + ("" if on_targets is None else f" (targets, not used: {on_targets:.2f}%)")
        )
    for s in summary:
        tag = " (cv-selected)" if s["cv_selected"] else " (round-1 choice)" if s["round1_selected"] else ""
        med = "-" if s["median_abs_error_pct"] is None else f"{s['median_abs_error_pct']:.2f}%"
        print(
            f"summary {'/'.join(_config(s))}{tag}: median |error| {med} over {s['targets']} targets, "
            f"{s['covered_pct']:.0f}% inside the 95% prediction interval"
            + ("" if s["median_pi_width_pct"] is None else f" (median width {s['median_pi_width_pct']:.1f}%)")
        )
    for r in loo_rows:
        print(
            f"leave-one-out {r['data']}: coverage {r['coverage_pct']:.1f}% of {r['held_out']} runs "
            f"({r['refit_failed']} refits failed), median width "
            f"{r['median_width_pct']:.2f}%, median |error| {r['median_abs_error_pct']:.2f}%"
        )
    print(f"({result['seconds']} s)")


if __name__ == "__main__":
    main()
