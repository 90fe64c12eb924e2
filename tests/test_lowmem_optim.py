"""Memory-efficient optimizers: each trains the micro model, and the state bytes measured on the real optimizer
after a step equal ``isoflop.perf.optimizer_state`` exactly; parameter shapes equal the trainer's modules."""

from __future__ import annotations

import pytest
import torch
from _train_common import micro_config, shared_cache

from isoflop.errors import IsoflopError
from isoflop.perf.optimizer_state import OPTIMIZER_NAMES, optimizer_state_bytes, param_shapes
from isoflop.spec.loader import spec_from_dict
from isoflop.train.config import OptimSection, build_config
from isoflop.train.loop import train
from isoflop.train.model import build_model
from isoflop.train.optim import build_named_optimizer, state_bytes

MICRO = micro_config()["model"]
GPT = dict(MICRO, name="gpt", norm="layernorm", mlp="gelu", position="learned", bias=True, tie_embeddings=False)
GQA = dict(MICRO, name="gqa", n_heads=4, n_kv_heads=2, d_ff=96, tie_embeddings=False)


@pytest.mark.parametrize("fields", [MICRO, GPT, GQA], ids=["llama-tied", "gpt2-untied", "gqa-untied"])
def test_param_shapes_equal_the_trainer_model(fields):
    spec = spec_from_dict(dict(fields))
    model = build_model(spec, "cpu")
    assert [(p.name, p.shape) for p in param_shapes(spec)] == [(n, tuple(t.shape)) for n, t in model.named_parameters()]


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
@pytest.mark.parametrize("fields", [MICRO, GPT], ids=["llama-tied", "gpt2-untied"])
def test_measured_state_bytes_equal_prediction(name, fields):
    spec = spec_from_dict(dict(fields))
    model = build_model(spec, "cpu", seed=0)
    opt = build_named_optimizer(model, OptimSection(name=name, lr=1e-3, galore_rank=4))
    x = torch.randint(0, spec.vocab_size, (2, 16))
    model(x, x).backward()
    opt.step()
    measured = state_bytes(opt)
    assert measured > 0
    assert measured == optimizer_state_bytes(param_shapes(spec), name, galore_rank=4)


def test_bad_galore_rank_is_one_line_error():
    model = build_model(spec_from_dict(dict(MICRO)), "cpu")
    with pytest.raises(IsoflopError, match="galore_rank=32 is not smaller"):
        build_named_optimizer(model, OptimSection(name="galore", galore_rank=32))


def test_missing_package_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as if not installed
    model = build_model(spec_from_dict(dict(MICRO)), "cpu")
    with pytest.raises(IsoflopError, match=r"adam8bit needs the 'lowmem' extra; pip install isoflop\[lowmem\]"):
        build_named_optimizer(model, OptimSection(name="adam8bit"))


@pytest.mark.parametrize("name", OPTIMIZER_NAMES)
def test_every_optimizer_trains_the_micro_model(name, tmp_path, tmp_path_factory, monkeypatch):
    monkeypatch.setenv("ISOFLOP_CACHE", str(shared_cache(tmp_path_factory)))
    lr = 1e-3 if name == "lion" else (0.1 if name == "sgd" else 0.01)
    cfg = micro_config(
        optim={"name": name, "lr": lr, "warmup_steps": 2, "galore_rank": 4},
        train={"max_steps": 12, "ckpt_every": 0, "eval_every": 0},
    )
    got = train(build_config(cfg), tmp_path / name)
    assert got["status"] == "complete"
    assert got["val_loss"] < got["val_loss_initial"]


def test_perf_memory_prices_the_measured_optimizer_state():
    """``isoflop estimate``'s optimizer bytes per parameter (fp32, one GPU) are the exact per-tensor count."""
    from isoflop.perf.constants import load_constants
    from isoflop.perf.memory import precision

    spec = spec_from_dict(dict(GPT))
    shapes = param_shapes(spec)
    params = sum(p.numel for p in shapes)
    for name in ("adafactor", "adam8bit"):
        per_param = precision(spec, "fp32", name, load_constants()).optimizer
        assert per_param * params == pytest.approx(optimizer_state_bytes(shapes, name), rel=1e-12)


@pytest.mark.parametrize("name", ["adam8bit", "adafactor", "galore"])
def test_optimizer_state_with_python_numbers_checkpoints_and_resumes(name, tmp_path, tmp_path_factory, monkeypatch):
    """bitsandbytes keeps an integer ``step`` in its state: checkpoints store it as a tensor (no pickled items)
    and a resume gives the optimizer its Python number back; GaLore rebuilds its projector after a resume."""
    pytest.importorskip({"adam8bit": "bitsandbytes", "galore": "galore_torch"}.get(name, "torch"))
    monkeypatch.setenv("ISOFLOP_CACHE", str(shared_cache(tmp_path_factory)))
    base = {"optim": {"name": name, "lr": 0.01, "warmup_steps": 1, "galore_rank": 4}}
    train(build_config(micro_config(**base, train={"max_steps": 4, "ckpt_every": 2, "eval_every": 0})), tmp_path)
    got = train(build_config(micro_config(**base, train={"max_steps": 6, "ckpt_every": 2, "eval_every": 0})), tmp_path)
    assert got["status"] == "complete" and got["steps"] == 6 and got["resumed_from"] == 4
