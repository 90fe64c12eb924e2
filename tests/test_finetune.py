"""``isoflop finetune``: LoRA/DoRA/QLoRA/full fine-tuning against peft, bitsandbytes and a measured step."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import pytest

pytest.importorskip("peft")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from _benchmarks import load_benchmark

from isoflop.errors import IsoflopError
from isoflop.finetune.config import resolve_base
from isoflop.perf.finetune import FinetuneSetup, finetune_memory, quantised_bytes, trainable_params
from isoflop.spec.loader import spec_from_dict

bench = load_benchmark("finetune_memory")
ALL = bench.ALL
warnings.filterwarnings("ignore")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return bench.tiny_llama(tmp_path_factory.mktemp("ft") / "base")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return bench.sft_jsonl(tmp_path_factory.mktemp("ftdata") / "sft.jsonl", n=24)


def _hf_config(family: str) -> dict:
    if family == "gpt2":
        return dict(model_type="gpt2", n_embd=48, n_layer=2, n_head=4, n_inner=96, vocab_size=100, n_positions=64)
    return dict(
        model_type="llama",
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=64,
    )


@pytest.mark.parametrize(
    "family,method,rank,targets",
    [
        ("llama", "lora", 4, ("q_proj", "v_proj")),
        ("llama", "lora", 16, ALL),
        ("llama", "dora", 8, ("k_proj", "o_proj", "down_proj")),
        ("gpt2", "lora", 8, ("c_attn",)),
        ("gpt2", "dora", 4, ("c_attn", "c_proj", "c_fc")),
        ("llama", "full", 0, ()),
    ],
)
def test_trainable_params_equal_peft(family, method, rank, targets):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = _hf_config(family)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    if method == "full":
        expected = sum(p.numel() for p in model.parameters())
    else:
        lora = LoraConfig(r=rank, target_modules=list(targets), use_dora=method == "dora")
        expected = get_peft_model(model, lora).get_nb_trainable_parameters()[0]
    spec = spec_from_dict(cfg)
    assert trainable_params(spec, FinetuneSetup(method=method, rank=rank, targets=targets)) == expected


def test_nf4_bytes_equal_bitsandbytes(base):
    """4-bit weights + 8-bit absmax per 64 + fp32 second-level absmax per 256 blocks, as bitsandbytes stores them
    (QLoRA's double quantisation); the shared code tables and offsets are a few bytes per layer, left out."""
    from isoflop.finetune.model import load_base

    model = load_base(base, "fp32", "nf4")
    layers = [m for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert len(layers) == 7 * 2
    for m in layers:
        qs = m.weight.quant_state
        assert qs.nested and qs.blocksize == 64 and qs.state2.blocksize == 256
        stored = sum(t.numel() * t.element_size() for t in (m.weight, qs.absmax, qs.state2.absmax))
        assert quantised_bytes(m.in_features * m.out_features, m.out_features, "nf4", True) == stored


def test_lora_end_to_end_cli(base, data, tmp_path, cli):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "run"
    r = cli("finetune", str(base), "--data", str(data), "--out", str(out), "--rank", "4", "--alpha", "8",
            "--max-steps", "6", "--seq-len", "32", "--lr", "3e-3", "--merge-adapter", "--json")  # fmt: skip
    assert r.code == 0, r.err
    summary = r.json()
    assert json.loads((out / "summary.json").read_text())["val_loss"] == summary["val_loss"]
    assert summary["val_loss"] < summary["initial_val_loss"]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    assert abs(summary["memory_error"]) < 0.05
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "merged" / "tokenizer.json").is_file()

    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    assert tuned.get_nb_trainable_parameters()[1] and summary["trainable_params"] == 4 * (64 + 64 + 64 + 32) * 2
    merged = AutoModelForCausalLM.from_pretrained(out / "merged").eval()
    ids = torch.randint(0, 200, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, tuned(ids).logits, atol=1e-5, rtol=0)

    # merged weight = W + (alpha / r) B A, from the adapter's own tensors
    adapter = load_file(out / "adapter" / "adapter_model.safetensors")
    original = AutoModelForCausalLM.from_pretrained(base).state_dict()
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_{}.weight"
    expected = (
        original["model.layers.1.self_attn.q_proj.weight"] + 2.0 * adapter[key.format("B")] @ adapter[key.format("A")]
    )
    got = merged.state_dict()["model.layers.1.self_attn.q_proj.weight"]
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def _packed(model) -> bool:
    return any(getattr(getattr(m.weight, "quant_state", None), "packing_format_for_cpu", False) for m in model.modules()
               if hasattr(m, "weight"))  # fmt: skip


@pytest.mark.parametrize(
    "case",
    [
        {"method": "dora", "rank": 4, "targets": ALL},
        {"method": "full", "grad_checkpointing": True},
        {"method": "qlora", "rank": 4, "targets": ("q_proj", "v_proj")},
        {"method": "lora", "rank": 8, "targets": ("q_proj", "v_proj"), "grad_checkpointing": True},
    ],
    ids=lambda c: c["method"] + ("-ckpt" if c.get("grad_checkpointing") else ""),
)
def test_methods_train_and_memory_within_5pct(base, data, tmp_path, case, monkeypatch):
    if case["method"] == "qlora":  # the 4-bit kernel must stay the differentiable one after the eval forward
        from isoflop.finetune import trainer

        seen = []
        real = trainer._train_step
        monkeypatch.setattr(trainer, "_train_step", lambda m, o, b: seen.append(_packed(m)) or real(m, o, b))
    row = bench.run_case(base, data, tmp_path / "run", case, batch=4, seq_len=32)
    assert case["method"] != "qlora" or seen == [False, False]
    assert row["trainable_params"] == row["predicted_trainable_params"]
    assert abs(row["error"]) < 0.05, row
    saved = tmp_path / "run" / ("model" if case["method"] == "full" else "adapter")
    assert (saved / ("model.safetensors" if case["method"] == "full" else "adapter_model.safetensors")).is_file()


@pytest.mark.parametrize("kind", ["prompt", "text", "chat"])
def test_loss_counts_completion_tokens_only(base, tmp_path, kind):
    from transformers import AutoTokenizer

    from isoflop.finetune.data import IGNORE, load_sft

    tok = AutoTokenizer.from_pretrained(base)
    sft = load_sft(bench.sft_jsonl(tmp_path / "d.jsonl", n=6, kind=kind), tok, 48, 0.2, 0)
    assert sft.train["input_ids"].shape == (5, 48) and sft.val["input_ids"].shape == (1, 48)
    for ids, labels in zip(sft.train["input_ids"], sft.train["labels"]):
        kept = ids[labels != IGNORE].tolist()
        text = tok.decode(kept)
        assert kept[-1] == tok.eos_token_id
        if kind == "text":  # a plain text trains on every token, its prompt included
            assert text.startswith("# ")
        else:
            assert text.startswith("def ") and "#" not in text


@pytest.mark.parametrize("method", ["lora", "full"])
def test_isoflop_run_folder_as_base(data, tmp_path, cli, method):
    """An isoflop model (tied Llama) exported to RUN/hf with its tokenizer: predicted, then fine-tuned."""
    from isoflop.spec.model import ModelSpec
    from isoflop.train.data.tokenizer import EOT, train_bpe
    from isoflop.train.export import export_hf
    from isoflop.train.model import build_model

    tok = train_bpe(bench.TEXTS * 4, vocab_size=300)
    spec = ModelSpec(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=160, vocab_size=tok.get_vocab_size(),
                     max_seq_len=64, tie_embeddings=True)  # fmt: skip
    run = tmp_path / "myrun"
    export_hf(build_model(spec, seed=0), run / "hf", tokenizer=tok, eos_id=tok.token_to_id(EOT))
    assert resolve_base(run) == run / "hf"
    r = cli("finetune", str(run), "--dry-run", "--method", method, "--rank", "4", "--batch", "2", "--seq-len", "16",
            "--json")  # fmt: skip
    assert r.code == 0, r.err
    setup = FinetuneSetup(method=method, rank=4, targets=("q_proj", "v_proj"), micro_batch=2, seq_len=16)
    assert r.json()["predicted"]["total_gib"] == finetune_memory(spec_from_dict(json.loads(
        (run / "hf" / "config.json").read_text())), setup).total_gib  # fmt: skip
    case = {"method": method, "rank": 4} if method == "lora" else {"method": method}
    row = bench.run_case(run, data, tmp_path / "ft", case, batch=2, seq_len=32)
    assert row["trainable_params"] == row["predicted_trainable_params"] and abs(row["error"]) < 0.05, row


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--target-modules", "nope_proj"], "target modules nope_proj do not exist"),
        (["--rank", "0"], "rank must be positive"),
        (["--method", "sft"], "unknown method"),
    ],
)
def test_bad_input_one_line_no_output(base, data, tmp_path, cli, args, needle):
    out = tmp_path / "out"
    r = cli("finetune", str(base), "--data", str(data), "--out", str(out), *args)
    assert r.code == 2 and needle in r.err and r.err.count("\n") == 1 and r.err.startswith("error: ")
    assert not out.exists()


def test_corrupted_weights_one_line(base, data, tmp_path, cli):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in base.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:3000] if f.name == "model.safetensors" else f.read_bytes())
    r = cli("finetune", str(bad), "--data", str(data), "--out", str(tmp_path / "o"), "--max-steps", "1")
    assert r.code == 2 and r.err.startswith("error: cannot load the model") and r.err.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_missing_model_dir_and_extra(tmp_path, cli, monkeypatch):
    r = cli("finetune", str(tmp_path / "absent"), "--data", "x.jsonl", "--out", str(tmp_path / "o"))
    assert r.code == 2 and "does not exist" in r.err and not (tmp_path / "o").exists()
    import importlib.util

    from isoflop.finetune import model

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(IsoflopError, match=r"needs the 'finetune' extra; pip install isoflop\[finetune\]"):
        model.require_extra()


def test_dry_run_is_torch_free(base):
    import subprocess

    code = (
        "import sys; from isoflop.finetune.config import FinetuneConfig, predict_only; "
        f"predict_only(FinetuneConfig(base={str(base)!r}, data='', out='')); assert 'torch' not in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
