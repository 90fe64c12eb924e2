"""report.html: every figure is drawn, embedded and visible when headless Chromium renders the page offline."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from isoflop.report import write_report
from isoflop.report.plots import FIGURES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def synthetic_analysis() -> dict:
    """An analysis.json as the pipeline writes it, for runs following L = 1.8 + 400/N^0.4 + 300/D^0.3."""

    def loss(n, d):
        return 1.8 + 400 / n**0.4 + 300 / d**0.3

    points, parabolas = [], []
    for budget in (1e11, 3e11, 1e12):
        ns = np.array([0.25, 0.5, 1, 2, 4]) * 10_000 * (budget / 1e11) ** 0.5
        ds = budget / (6 * ns)
        for n, d in zip(ns, ds):
            steps = np.linspace(0.1, 1, 6) * d
            points.append(
                {
                    "budget": budget,
                    "n": int(n),
                    "n_total": int(n) + 20_000,
                    "tokens": int(d),
                    "flops": budget,
                    "loss": float(loss(n, d)),
                    "status": "finished",
                    "step_time_s": 0.1,
                    "curve": {"tokens": steps.tolist(), "loss": [float(loss(n, t)) for t in steps]},
                }
            )
        coef = np.polyfit(np.log10(ns), loss(ns, ds), 2)
        vertex = -coef[1] / (2 * coef[0])
        parabolas.append(
            {
                "budget": budget,
                "coef": coef.tolist(),
                "n_opt": 10**vertex,
                "d_opt": budget / (6 * 10**vertex),
                "loss_opt": float(np.polyval(coef, vertex)),
                "interior": True,
            }
        )
    c = np.logspace(11, 12.6, 20)
    held = {
        "budget": 3.5e12,
        "flops": 3.5e12,
        "n": 60_000,
        "n_total": 80_000,
        "tokens": int(3.5e12 / 3.6e5),
        "method": "envelope",
        "predicted_loss": 3.0,
        "ci95": [2.9, 3.1],
        "actual_loss": 3.05,
        "error_pct": -1.6,
        "predictions": [
            {"method": "envelope", "predicted_loss": 3.0, "ci95": [2.9, 3.1], "error_pct": -1.6},
            {"method": "approach3", "predicted_loss": 3.1, "ci95": [2.8, 3.3], "error_pct": 1.6},
        ],
        "curve": {"tokens": [1e5, 1e6, 1e7], "loss": [4.0, 3.3, 3.05]},
    }
    return {
        "ladder": "synthetic",
        "points": points,
        "parabolas": parabolas,
        "n_opt_fit": {"coef": 0.03, "exponent": 0.5},
        "d_opt_fit": {"coef": 5.5, "exponent": 0.5},
        "curves": [
            {
                "label": "envelope",
                "compute": c.tolist(),
                "loss": (10 * c**-0.05).tolist(),
                "lo": (9.5 * c**-0.05).tolist(),
                "hi": (10.5 * c**-0.05).tolist(),
            }
        ],
        "heldout": held,
        "fits": {"envelope": {"form": "power", "coef": 10, "exponent": -0.05}},
    }


def test_report_files_and_embedded_images(tmp_path) -> None:
    page = write_report(synthetic_analysis(), tmp_path)
    text = page.read_text()
    assert len(re.findall(r"<img class='plot'[^>]*src='data:image/png;base64,", text)) == len(FIGURES) == 5
    for key in FIGURES:
        png = tmp_path / "plots" / f"{key}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "predicted <b>3.0000</b>" in text and "actual <b>3.0500</b>" in text and "inside the interval" in text


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install chromium)")
def test_headless_chromium_shows_every_plot(tmp_path) -> None:
    import matplotlib.image as mpimg

    page = write_report(synthetic_analysis(), tmp_path)
    base = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--allow-file-access-from-files",
    ]
    dom = subprocess.run(
        [*base, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
    )
    assert 'data-plots-loaded="5"' in dom.stdout and 'data-plots-total="5"' in dom.stdout

    shot = tmp_path / "shot.png"
    subprocess.run(
        [*base, f"--screenshot={shot}", "--window-size=1200,5200", page.as_uri()], capture_output=True, timeout=120
    )
    img = mpimg.imread(shot)[..., :3]
    # Plot content is coloured (viridis lines, blue/red markers); text and borders are grey.
    colored = (img.max(axis=2) - img.min(axis=2)) > 0.25
    rows = np.flatnonzero(colored.sum(axis=1) > 5)
    assert rows.size > 0
    # Five separate figures: five bands of coloured rows separated by gaps of white/text.
    bands = 1 + int(np.sum(np.diff(rows) > 60))
    assert bands >= 5, f"only {bands} coloured bands in the screenshot"


def test_report_command_rebuilds_and_refuses_missing_input(cli, tmp_path) -> None:
    import json

    (tmp_path / "analysis.json").write_text(json.dumps(synthetic_analysis()))
    ok = cli("report", str(tmp_path), "--json")
    assert ok.code == 0, ok.err
    assert ok.json()["report"].endswith("report.html") and len(ok.json()["plots"]) == 5
    missing = cli("report", str(tmp_path / "nope"))
    assert missing.code == 2 and "analysis.json does not exist" in missing.err
