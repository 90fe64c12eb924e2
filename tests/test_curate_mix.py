"""``isoflop data mix`` and the curated manifest: no datatrove needed."""

from __future__ import annotations

import json

import numpy as np
import pytest

from isoflop.curate.mix import effective_tokens, mix_weights
from isoflop.laws.allocation import data_constrained
from isoflop.laws.forms import get_law_preset


def _manifest(folder, domains: dict[str, int]) -> None:
    counts = {d: {"documents": 1, "bytes": t, "tokens": t} for d, t in domains.items()}
    manifest = {
        "source": "x",
        "recipe": "minimal",
        "format": "jsonl",
        "documents": len(domains),
        "bytes": sum(domains.values()),
        "tokens": sum(domains.values()),
        "tokenizer": "bytes",
        "domains": counts,
        "files": [],
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("unique", "drawn"), [(1e9, 5e8), (1e9, 1e9), (1e9, 4e9), (2e8, 1e10)])
def test_effective_tokens_match_the_data_constrained_law(unique, drawn):
    law = data_constrained(get_law_preset("muennighoff"))
    _, d_eff = law.effective(1e9, drawn, unique)  # the law module's Eq. 5, independent of mix.py
    r_star = law.params_["R_D_star"]
    assert effective_tokens(unique, drawn, r_star) == pytest.approx(float(d_eff), rel=1e-12)


def test_weights_temperature_and_upsampling():
    unique = {"web": 900, "code": 100}
    w, _ = mix_weights(unique, temperature=1.0)
    assert w == pytest.approx({"web": 0.9, "code": 0.1})
    w, _ = mix_weights(unique, temperature=2.0)  # w ∝ sqrt(U)
    assert w["code"] == pytest.approx(np.sqrt(100) / (np.sqrt(100) + np.sqrt(900)))
    w, _ = mix_weights(unique, upsample={"code": 9.0})
    assert w == pytest.approx({"web": 0.5, "code": 0.5})
    w, _ = mix_weights(unique, weights={"web": 3, "code": 1})
    assert w == pytest.approx({"web": 0.75, "code": 0.25})


def test_mix_cli_reports_epochs(cli, tmp_path):
    _manifest(tmp_path, {"web": 9_000_000, "code": 1_000_000})
    res = cli("data", "mix", str(tmp_path), "--tokens", "1e8", "--upsample", "code=9", "--json")
    assert res.code == 0, res.err
    shares = {d["domain"]: d for d in res.json()["domains"]}
    assert shares["code"]["epochs"] == pytest.approx(0.5 * 1e8 / 1e6)
    assert shares["web"]["epochs"] == pytest.approx(0.5 * 1e8 / 9e6)
    assert shares["code"]["effective_tokens"] < shares["code"]["tokens_drawn"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--weights", "web=1,nope=2"], "domain 'nope' is not in the manifest"),
        (["--weights", "web"], "is not name=number"),
        (["--temperature", "2", "--upsample", "code=2"], "give one of --weights, --temperature and --upsample"),
        (["--temperature", "0"], "--temperature must be > 0"),
    ],
)
def test_mix_bad_input(cli, tmp_path, extra, message):
    _manifest(tmp_path, {"web": 9_000_000, "code": 1_000_000})
    res = cli("data", "mix", str(tmp_path), "--tokens", "1e8", *extra)
    assert res.code == 2 and message in res.err and len(res.err.strip().splitlines()) == 1
