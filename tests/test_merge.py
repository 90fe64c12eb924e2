"""``isoflop merge`` against mergekit 0.1.5 (the reference, test-only) on tiny local Llama models, DARE's
statistics, HF loadability, one-line errors with no partial output, and LAWA checkpoint averaging."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")
pytest.importorskip("safetensors")
from safetensors.torch import load_file

from isoflop.merge.dare import drop_and_rescale
from isoflop.merge.engine import run_merge, tensor_seed
from isoflop.merge.recipe import MergeRecipe


def _tiny(vocab: int = 64, ff: int = 48):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=ff,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )


def _save_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(63)} | {"<unk>": 63}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>").save_pretrained(folder)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> dict[str, str]:
    """A base and three fine-tunes (base + seeded noise), plus misfits: other shapes, other vocab, other arch."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("zoo")
    torch.manual_seed(0)
    base = LlamaForCausalLM(_tiny())
    base.save_pretrained(root / "base")
    _save_tokenizer(root / "base")
    paths = {"base": str(root / "base")}
    for i, name in enumerate("abc"):
        g = torch.Generator().manual_seed(i + 1)
        model = LlamaForCausalLM(_tiny())
        model.load_state_dict({k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in base.state_dict().items()})
        model.save_pretrained(root / name)
        _save_tokenizer(root / name)
        paths[name] = str(root / name)
    LlamaForCausalLM(_tiny(ff=40)).save_pretrained(root / "shapes")
    LlamaForCausalLM(_tiny(vocab=80)).save_pretrained(root / "vocab")
    shutil.copytree(root / "a", root / "arch")
    cfg = json.loads((root / "arch" / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (root / "arch" / "config.json").write_text(json.dumps(cfg))
    shutil.copytree(root / "a", root / "corrupt")
    shard = root / "corrupt" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    paths.update({k: str(root / k) for k in ("shapes", "vocab", "arch", "corrupt")})
    return paths


def _recipes(z: dict[str, str]) -> dict[str, dict]:
    a, b, c, base = z["a"], z["b"], z["c"], z["base"]
    return {
        "linear": {
            "merge_method": "linear",
            "models": [
                {"model": a, "parameters": {"weight": 0.3}},
                {"model": b, "parameters": {"weight": [0.2, 0.9]}},  # a gradient over the layers
                {"model": c, "parameters": {"weight": [{"filter": "mlp", "value": 0.7}, {"value": 0.1}]}},
            ],
        },
        "slerp": {
            "merge_method": "slerp",
            "base_model": base,
            "models": [{"model": base}, {"model": a}],
            "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 1]}, {"value": 0.3}]},
        },
        "task_arithmetic": {
            "merge_method": "task_arithmetic",
            "base_model": base,
            "models": [{"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": -0.3}}],
            "parameters": {"lambda": 0.8},
        },
        "ties": {
            "merge_method": "ties",
            "base_model": base,
            "models": [
                {"model": a, "parameters": {"weight": 0.5, "density": 0.4}},
                {"model": b, "parameters": {"weight": 1.0, "density": [0.3, 0.9]}},
                {"model": c, "parameters": {"weight": 0.8, "density": 0.2}},
            ],
        },
    }


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(shard))
    return out


@pytest.fixture(scope="module")
def mergekit_outputs(zoo, tmp_path_factory) -> dict[str, Path]:
    """mergekit's own merge of every deterministic recipe (one import, one run each)."""
    mk = pytest.importorskip("mergekit.merge")
    from mergekit.config import MergeConfiguration
    from mergekit.options import MergeOptions

    root = tmp_path_factory.mktemp("mergekit")
    options = MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True)
    outs = {}
    for name, recipe in _recipes(zoo).items():
        outs[name] = root / name
        mk.run_merge(MergeConfiguration.model_validate(recipe), str(outs[name]), options=options)
    return outs


@pytest.mark.parametrize("method", ["linear", "slerp", "task_arithmetic", "ties"])
def test_method_equals_mergekit(method, zoo, mergekit_outputs, tmp_path) -> None:
    recipe = MergeRecipe.model_validate(_recipes(zoo)[method])
    run_merge(recipe, tmp_path / "out", max_shard_bytes=40_000)  # several shards, streamed
    ours, ref = _tensors(tmp_path / "out"), _tensors(mergekit_outputs[method])
    assert set(ours) == set(ref)
    for name in ref:
        assert torch.allclose(ours[name].double(), ref[name].double(), rtol=0, atol=1e-6), name
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ref) and len(set(index["weight_map"].values())) > 1


@pytest.mark.parametrize("method", ["dare_ties", "dare_linear"])
def test_dare_equals_mergekit_given_the_same_draws(method, zoo, tmp_path) -> None:
    """mergekit draws DARE's masks from torch's global RNG in its task-graph order, which cannot be replayed; we
    seed a generator per tensor (``tensor_seed``) and give mergekit's merge kernel the same seed, tensor by tensor."""
    from mergekit.merge_methods import registry
    from mergekit.merge_methods.base import TensorEntry, TensorGroup

    z = _recipes(zoo)["ties"] | {"merge_method": method, "seed": 7}
    run_merge(MergeRecipe.model_validate(z), tmp_path / "out")
    ours = _tensors(tmp_path / "out")
    inputs = {k: _tensors(Path(zoo[k])) for k in ("base", "a", "b", "c")}
    kernel = registry.get(method)
    for name, got in ours.items():
        layer = int(name.split(".")[2]) / 2 if ".layers." in name else 0.0
        density = {"a": 0.4, "b": 0.3 + 0.6 * layer, "c": 0.2}
        group = TensorGroup(
            [TensorEntry("base", inputs["base"][name], is_base=True)] + [TensorEntry(k, inputs[k][name]) for k in "abc"]
        )
        torch.manual_seed(tensor_seed(7, name))
        ref = kernel.merge_group(
            group,
            weight={"a": 0.5, "b": 1.0, "c": 0.8},
            density=density,
            rescale=True,
            normalize=False,
            **{"lambda": 1.0},
            int8_mask=False,
        )
        assert torch.allclose(got.double(), ref.double(), rtol=0, atol=1e-6), name


def test_dare_drop_keeps_the_expectation() -> None:
    """Yu et al. 2024, Eq. 2: E[rescaled drop(delta)] = delta; the kept fraction is the density."""
    delta = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    draws = torch.stack([drop_and_rescale(delta, 0.3, True, g) for _ in range(2000)])
    kept = (draws != 0).double().mean().item()
    assert abs(kept - 0.3) < 0.005
    # per-entry mean over draws: unbiased up to sampling noise (std of one draw ~ |delta| sqrt(0.7/0.3))
    err = (draws.mean(0) - delta).abs() / (delta.abs() * (0.7 / 0.3) ** 0.5 / 2000**0.5)
    assert err.mean() < 1.0 and err.max() < 5.0
    assert torch.allclose(draws.abs().sum((1, 2)), delta.abs().sum().expand(2000), rtol=1e-5)  # L1 kept exactly
    assert torch.equal(drop_and_rescale(delta, 1.0, True, g), delta)


def test_cli_flags_and_yaml_give_a_loadable_model(zoo, tmp_path, cli) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    r = cli(
        "merge",
        "--method",
        "linear",
        "--models",
        zoo["a"],
        zoo["b"],
        "--weights",
        "0.5",
        "0.5",
        "--out",
        str(tmp_path / "flags"),
        "--json",
    )
    assert r.code == 0, r.err
    assert r.json()["tensors"] == 30
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"merge_method": "linear", "models": [zoo["a"], zoo["b"]]}))
    r = cli("merge", str(recipe), "--out", str(tmp_path / "yaml"))
    assert r.code == 0, r.err
    flags, from_yaml = _tensors(tmp_path / "flags"), _tensors(tmp_path / "yaml")
    a, b = _tensors(Path(zoo["a"])), _tensors(Path(zoo["b"]))
    for name in a:  # an independent soup: (a + b) / 2
        assert torch.allclose(flags[name], (a[name] + b[name]) / 2, atol=1e-6)
        assert torch.equal(flags[name], from_yaml[name])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "flags")
    for name, p in model.state_dict().items():
        assert torch.equal(p, flags[name])
    tok = AutoTokenizer.from_pretrained(tmp_path / "flags")
    ids = tok("w1 w2 w3", return_tensors="pt").input_ids
    assert torch.isfinite(model(ids).logits).all()


def _bad_cases(z: dict[str, str], tmp: Path) -> list[tuple[list[str], str]]:
    nan_yaml = tmp / "nan.yaml"
    nan_yaml.write_text(
        f"merge_method: linear\nmodels:\n- model: {z['a']}\n  parameters: {{weight: .nan}}\n- model: {z['b']}\n"
    )
    lin = ["--method", "linear", "--models"]
    return [
        ([*lin, z["a"], z["shapes"]], "shapes differ for model.layers.0.mlp.down_proj.weight"),
        ([*lin, z["a"], z["vocab"]], "vocabularies differ"),
        ([*lin, z["a"], z["arch"]], "architectures differ"),
        ([*lin, z["a"], z["corrupt"]], "corrupted safetensors shard"),
        ([*lin, z["a"], z["b"], "--weights", "-1", "1"], "negative weight"),
        ([*lin, z["a"], z["b"], "--weights", "0", "0"], "all weights are zero"),
        ([str(nan_yaml)], "weight for tensor"),
        (["--method", "soup", "--models", z["a"], z["b"]], "unknown merge method 'soup'"),
        (["--method", "task_arithmetic", "--models", z["a"], z["b"]], "needs a base model"),
        (
            ["--method", "ties", "--base", z["base"], "--models", z["a"], "--weights", "1", "--density", "1.5"],
            "outside (0, 1]",
        ),
        (["--method", "ties", "--base", z["base"], "--models", z["a"]], "no weight given"),
        (["--method", "slerp", "--base", z["base"], "--models", z["a"], z["b"], "--t", "0.5"], "exactly one"),
        ([*lin, z["a"], str(tmp / "nowhere")], "not found"),
    ]


def test_bad_input_is_one_line_and_leaves_no_output(zoo, tmp_path, cli) -> None:
    out = tmp_path / "merged"
    for args, expected in _bad_cases(zoo, tmp_path):
        r = cli("merge", *args, "--out", str(out))
        assert r.code == 2, (args, r.err)
        assert r.err.startswith("error: ") and r.err.count("\n") == 1 and expected in r.err, r.err
        assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".merged")]


def test_missing_tensor_and_nan_tensor(zoo, tmp_path, cli) -> None:
    from safetensors.torch import save_file

    for name, edit in (
        ("missing", lambda t: t.pop("lm_head.weight")),
        ("nan", lambda t: t["lm_head.weight"].fill_(float("nan"))),
    ):
        folder = tmp_path / name
        shutil.copytree(zoo["b"], folder)
        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
        r = cli("merge", "--method", "linear", "--models", zoo["a"], str(folder), "--out", str(tmp_path / "o"))
        assert r.code == 2 and ("missing from" in r.err if name == "missing" else "NaN" in r.err), r.err
        assert not (tmp_path / "o").exists()


def test_existing_output_needs_force(zoo, tmp_path, cli) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    args = ("merge", "--method", "linear", "--models", zoo["a"], zoo["b"], "--out", str(out))
    r = cli(*args)
    assert r.code == 2 and "--force" in r.err and (out / "keep.txt").exists()
    assert cli(*args, "--force").code == 0 and not (out / "keep.txt").exists() and (out / "config.json").exists()


def test_lawa_average_of_a_run(tmp_path, tmp_path_factory, monkeypatch, cli) -> None:
    """``--last 1`` is the run's final export bit for bit; ``--last 3`` is the mean of the three checkpoints
    (read back independently with DCP's ``dcp_to_torch_save``)."""
    from _train_common import micro_config, shared_cache
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from isoflop.spec import spec_from_dict
    from isoflop.train.export import hf_state_dict
    from isoflop.train.loop import train

    monkeypatch.setenv("ISOFLOP_CACHE", str(shared_cache(tmp_path_factory)))
    run = tmp_path / "run"
    cfg = micro_config(train={"keep_checkpoints": 3})
    train(cfg, run)
    r = cli("merge", "--average", str(run), "--last", "1", "--out", str(tmp_path / "last1"), "--json")
    assert r.code == 0, r.err and r.json()["steps"] == [12]
    final = _tensors(run / "hf")
    assert all(torch.equal(v, final[k]) for k, v in _tensors(tmp_path / "last1").items())
    r = cli("merge", "--average", str(run), "--last", "3", "--out", str(tmp_path / "last3"), "--json")
    assert r.code == 0, r.err
    assert r.json()["steps"] == [4, 8, 12]
    states = []
    for step in (4, 8, 12):
        dcp_to_torch_save(run / "checkpoints" / f"step-{step:08d}", tmp_path / f"{step}.pt")
        saved = torch.load(tmp_path / f"{step}.pt", weights_only=True)["model"]
        states.append(saved)
    mean = {k: sum(s[k] for s in states) / 3 for k in states[0]}
    expected = hf_state_dict(mean, spec_from_dict(cfg["model"]))
    got = _tensors(tmp_path / "last3")
    assert set(got) == set(expected)
    for k in got:
        assert torch.allclose(got[k], expected[k], atol=1e-6), k
    # a run folder is a model too (its hf/ export): soup of the run's final weights and the LAWA average
    r = cli("merge", "--method", "linear", "--models", str(run), str(tmp_path / "last3"), "--out", str(tmp_path / "s"))
    assert r.code == 0, r.err
    soup = _tensors(tmp_path / "s")
    assert all(torch.allclose(soup[k], (final[k] + got[k]) / 2, atol=1e-6) for k in got)
    r = cli("merge", "--average", str(run), "--last", "4", "--out", str(tmp_path / "last4"))
    assert r.code == 2 and "has 3 complete checkpoints" in r.err and not (tmp_path / "last4").exists()
