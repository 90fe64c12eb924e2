"""The foundation commands as a user runs them: `count`, `hw`, their JSON, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from isoflop.spec import count_params, get_model_preset, preset_names

ISSUE_PRESETS = [
    "gpt2",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "gpt3-125m",
    "gpt3-350m",
    "gpt3-760m",
    "gpt3-1.3b",
    "gpt3-2.7b",
    "gpt3-6.7b",
    "gpt3-13b",
    "gpt3-175b",
    "chinchilla-70b",
    "gopher-280b",
    "mt-nlg-530b",
    "megatron-1t",
    "llama2-7b",
    "llama2-13b",
    "llama2-70b",
    "llama3-8b",
    "llama3-70b",
    "llama3-405b",
    "mixtral-8x7b",
]
ISSUE_GPUS = [
    "v100-32gb",
    "a100-40gb",
    "a100-80gb",
    "h100-sxm",
    "h100-pcie",
    "h200",
    "b200",
    "mi250x",
    "mi300x",
    "l40s",
]


def test_every_named_preset_exists() -> None:
    assert set(ISSUE_PRESETS) <= set(preset_names())
    megatron = get_model_preset("megatron-1t")
    assert (megatron.d_model, megatron.n_layers, megatron.n_heads) == (25600, 128, 160)


def test_count_json_keys(cli) -> None:
    result = cli("count", "gpt3-175b", "--json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["params"]["total"] == pytest.approx(174.6e9, rel=0.005)
    for key in ("total", "embedding", "non_embedding", "active"):
        assert isinstance(data["params"][key], int)
    assert data["params"]["embedding"] + data["params"]["non_embedding"] == data["params"]["total"]
    assert data["flops_per_token"]["training"] == pytest.approx(3 * data["flops_per_token"]["forward"])
    assert set(data["flops_per_token"]["forward_breakdown"]) == {"attention_proj", "attention_scores", "mlp", "logits"}


def test_model_accepted_positionally_and_as_option(cli, tmp_path) -> None:
    positional = cli("count", "mixtral-8x7b", "--json").json()
    option = cli("count", "--model", "mixtral-8x7b", "--json").json()
    assert positional == option
    assert round(option["params"]["active"] / 1e9, 1) == 12.9

    spec_file = tmp_path / "mine.yaml"
    spec_file.write_text(yaml.safe_dump({"preset": "llama3-8b", "n_layers": 16}))
    data = cli("count", str(spec_file), "--json").json()
    assert data["model"]["n_layers"] == 16
    assert data["params"]["total"] < count_params(get_model_preset("llama3-8b")).total


def test_table_output_is_readable(cli) -> None:
    result = cli("count", "gpt2")
    assert result.code == 0 and "124,439,808" in result.out


def test_hw_list_and_show(cli) -> None:
    listing = cli("hw", "list", "--json").json()
    assert {g["name"] for g in listing} >= set(ISSUE_GPUS)
    h100 = cli("hw", "show", "h100-sxm", "--json").json()
    assert h100["peak_tflops"]["bf16"] == pytest.approx(989.4)  # NVIDIA H100 SXM datasheet, dense
    assert "h100-sxm" in cli("hw", "show", "h100-sxm").out


def test_user_hardware_file(cli, tmp_path) -> None:
    extra = tmp_path / "hw.yaml"
    extra.write_text(
        yaml.safe_dump(
            {
                "gpus": {
                    "my-gpu": {
                        "peak_tflops": {"bf16": 100.0},
                        "memory_gib": 24,
                        "hbm_gbps": 1000,
                        "intra_node_gbps": 32,
                        "inter_node_gbps": 12.5,
                        "tdp_watts": 300,
                        "price_per_hour_usd": 0.5,
                    }
                }
            }
        )
    )
    shown = cli("hw", "show", "my-gpu", "--hardware", str(extra), "--json")
    assert shown.code == 0 and shown.json()["peak_tflops"]["fp8"] is None


def test_unknown_gpu_lists_close_matches_and_never_falls_back(cli) -> None:
    result = cli("hw", "show", "h100")
    assert result.code == 2
    assert "h100-sxm" in result.err and len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "fields, needle",
    [
        ({"d_model": -64}, "d_model"),
        ({"d_model": 0}, "d_model"),
        ({"n_layers": float("nan")}, "n_layers"),
        ({"n_heads": 7}, "does not divide d_model"),
        ({"n_kv_heads": 3}, "does not divide n_heads"),
    ],
)
def test_bad_spec_is_one_line_exit_2(cli, tmp_path, fields, needle) -> None:
    base = {"d_model": 256, "n_layers": 2, "n_heads": 8, "d_ff": 512, "vocab_size": 1000}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**base, **fields}))
    result = cli("count", str(path))
    assert result.code == 2, result.out
    assert needle in result.err and len(result.err.strip().splitlines()) == 1


def test_unknown_preset_and_malformed_file(cli, tmp_path) -> None:
    unknown = cli("count", "llama9-7b")
    assert unknown.code == 2 and "unknown model preset" in unknown.err
    broken = tmp_path / "config.json"
    broken.write_text("{ not json")
    malformed = cli("count", str(broken))
    assert malformed.code == 2 and "malformed" in malformed.err and len(malformed.err.strip().splitlines()) == 1
    missing = cli("count", "--json")
    assert missing.code == 2


def test_console_script_help_everywhere() -> None:
    for args in (["--help"], ["count", "--help"], ["hw", "--help"], ["hw", "list", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "isoflop", *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "Usage" in proc.stdout


def test_math_modules_import_without_torch() -> None:
    """spec, hardware, perf, laws and plan must not import torch (the guide's architecture rule)."""
    code = (
        "import importlib, sys\n"
        "for name in ('isoflop.spec', 'isoflop.hardware', 'isoflop.perf', 'isoflop.laws', 'isoflop.plan', "
        "'isoflop.cli'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as exc:\n"
        "        if exc.name != name: raise\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
