"""Tensor (+ sequence) and pipeline parallelism against one process on the same global batch (2 gloo
processes, fp32, CPU), the shared stage split, and the one-line refusals of layouts that cannot run."""

from __future__ import annotations

import json
import shutil

import pytest
from _train_common import micro_config, run_cli, run_torchrun, shared_cache, write_config

from isoflop.errors import IsoflopError
from isoflop.perf.layout import rank_layers, stage_layers, stage_split
from isoflop.train.config import build_config
from isoflop.train.data import DataConfig, prepare_data
from isoflop.train.parallel.apply import plan_layout
from isoflop.train.parallel.context import cp_positions
from isoflop.train.parallel.mesh import MeshLayout

REL = 1e-5
# 3 layers: a 2-stage pipeline is uneven (1 + 2); untied head so the embedding and the head sit on different stages
CFG = micro_config(
    model={"n_layers": 3, "tie_embeddings": False},
    train={"max_steps": 20, "eval_every": 0, "ckpt_every": 10, "log_every": 1, "micro_batch": 2},
    # lr 0.01 spikes the gradient norm at step 6 and amplifies fp32 reduction-order noise past 1e-5 there
    optim={"lr": 0.003, "warmup_steps": 2},
)


def test_stage_split_matches_llama3_and_sums():
    split = stage_split(126, 16)  # Llama 3 405B: 126 layers over 16 stages, one fewer on the first and last
    assert split[0] == split[-1] == 7 and set(split[1:-1]) == {8} and sum(split) == 126
    assert stage_split(3, 2) == (1, 2) and stage_split(8, 4) == (2, 2, 2, 2)
    for n, pp in ((126, 16), (70, 12), (3, 2), (32, 5)):  # the performance model costs the fullest stage
        assert stage_layers(n, pp) == max(stage_split(n, pp))
    assert rank_layers(10, 2, 2) == (5, 5) and sum(rank_layers(126, 16, 2)) == 126
    with pytest.raises(IsoflopError, match="cannot split"):
        stage_split(3, 4)


def test_mesh_coordinates_put_tp_innermost():
    lay = MeshLayout(pp=2, dp_shard=2, tp=2)
    assert [lay.coords(r)["tp"] for r in range(8)] == [0, 1] * 4
    assert [lay.coords(r)["pp"] for r in range(8)] == [0] * 4 + [1] * 4
    assert [lay.dp_rank(r) for r in range(4)] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    "parallel, world, needle",
    [
        ({"tp": 2}, 1, "does not divide the 1 launched processes"),
        ({"tp": 2, "dp": 2}, 2, "must equal the 2 launched processes"),
        ({"tp": 4}, 4, "must divide n_heads=2"),
        ({"pp": 4}, 4, "exceeds n_layers=3"),
        ({"cp": 2}, 2, "context_parallel"),
        ({"cp": 3}, 3, "does not split into 2\\*cp = 6 equal chunks"),  # seq_len 32
        ({"cp": 2, "tp": 2}, 4, "context_parallel"),
        ({"pp": 2, "interleave": 2}, 2, "exceeds n_layers"),
        ({"pp": 2, "pp_schedule": "zero-bubble"}, 2, "needs interleave > 1"),
    ],
)
def test_bad_layouts_are_refused_before_any_work(parallel, world, needle):
    cfg = build_config(json.loads(json.dumps({**CFG, "parallel": parallel})))
    with pytest.raises(IsoflopError, match=needle):
        plan_layout(cfg, world)


def test_tp_must_divide_the_kv_heads():
    cfg = build_config({**CFG, "model": {**CFG["model"], "n_heads": 4, "n_kv_heads": 2}, "parallel": {"tp": 4}})
    with pytest.raises(IsoflopError, match="must divide n_heads=4 and n_kv_heads=2"):
        plan_layout(cfg, 4)


@pytest.mark.parametrize("seq_len, cp", [(32, 2), (48, 4), (24, 3), (16, 1)])
def test_cp_split_is_torchs_head_tail_load_balancing(seq_len, cp):
    """``cp_positions`` against torch's own ``_HeadTailLoadBalancer`` (what ``context_parallel`` shards by): the
    rearranged sequence cut into ``cp`` equal parts, one per rank."""
    from torch.distributed.tensor.experimental._context_parallel._load_balancer import _HeadTailLoadBalancer

    order = _HeadTailLoadBalancer(seq_len, cp, "cpu")._generate_indices()[0].tolist()
    per_rank = seq_len // cp
    for rank in range(cp):
        assert cp_positions(seq_len, cp, rank) == order[rank * per_rank : (rank + 1) * per_rank]
    assert sorted(i for r in range(cp) for i in cp_positions(seq_len, cp, r)) == list(range(seq_len))
    with pytest.raises(IsoflopError, match="equal chunks"):
        cp_positions(seq_len + 2, 2 * cp if cp > 1 else 2, 0)


def test_pipeline_with_tied_embeddings_is_refused():
    cfg = build_config({**CFG, "model": {**CFG["model"], "tie_embeddings": True}, "parallel": {"pp": 2}})
    with pytest.raises(IsoflopError, match="untied embeddings"):
        plan_layout(cfg, 2)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    cache = shared_cache(tmp_path_factory)
    prepare_data(DataConfig(**CFG["data"]), cache_dir=cache / "data")
    return cache


@pytest.fixture(scope="module")
def reference(cache_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("par-ref")
    cfg = write_config(root / "micro.yaml", CFG)
    result = run_cli(["train", str(cfg), "--out", str(root / "run"), "--json"], cache_dir)
    assert result.returncode == 0, result.stderr
    return cfg, root / "run"


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out):
    from safetensors.torch import load_file

    return load_file(str(out / "hf" / "model.safetensors"))


def _assert_same_training(ref_out, out):
    ref, got = _rows(ref_out), _rows(out)
    assert len(got) == len(ref) == CFG["train"]["max_steps"]
    for a, b in zip(ref, got, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=REL)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=REL)
    ref_s = json.loads((ref_out / "summary.json").read_text())
    got_s = json.loads((out / "summary.json").read_text())
    assert got_s["val_loss"] == pytest.approx(ref_s["val_loss"], rel=REL)
    wa, wb = _weights(ref_out), _weights(out)  # the export gathers every shard and stage under the same names
    assert set(wa) == set(wb)
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() < 1e-4, k


def test_tensor_parallel_two_processes_match_one(reference, cache_dir, tmp_path):
    cfg, ref_out = reference
    out = tmp_path / "tp2"
    result = run_torchrun(2, ["train", str(cfg), "--out", str(out), "--set", "parallel.tp=2"], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["strategy"] == "tp2 x pp1 x dp1"
    _assert_same_training(ref_out, out)
    _assert_resumes_bitwise(
        out, ["train", str(cfg), "--out", str(out), "--nproc-per-node", "2", "--set", "parallel.tp=2"], cache_dir
    )


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["selective", "op"])
def test_tensor_parallel_with_recompute_matches_one(reference, cache_dir, tmp_path, policy):
    """The perf model's recompute policies (isoflop.train.recompute) compose with TP's DTensor blocks."""
    cfg, ref_out = reference
    out = tmp_path / f"tp2-{policy}"
    sets = ["--set", "parallel.tp=2", "--set", f"parallel.recompute={policy}"]
    result = run_torchrun(2, ["train", str(cfg), "--out", str(out), *sets], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_training(ref_out, out)


def _assert_resumes_bitwise(out, args, cache_dir):
    """Lose the final checkpoint (as a SIGKILL would): the resumed run ends bitwise the same."""
    final = json.loads((out / "summary.json").read_text())
    weights = _weights(out)
    shutil.rmtree(out / "checkpoints" / "step-00000020")
    (out / "summary.json").unlink()
    result = run_cli(args, cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((out / "summary.json").read_text())
    assert again["resumed_from"] == 10
    assert (again["final_train_loss"], again["grad_norm"]) == (final["final_train_loss"], final["grad_norm"])
    assert all(bool((weights[k] == w).all()) for k, w in _weights(out).items())


@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
def test_uneven_pipeline_two_stages_match_one(reference, cache_dir, tmp_path, schedule):
    cfg, ref_out = reference
    out = tmp_path / schedule
    args = ["train", str(cfg), "--out", str(out), "--nproc-per-node", "2"]
    result = run_cli([*args, "--set", "parallel.pp=2", "--set", f"parallel.pp_schedule={schedule}"], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["strategy"] == f"tp1 x pp2 {schedule} x dp1"
    _assert_same_training(ref_out, out)
    if schedule == "1f1b":
        _assert_resumes_bitwise(
            out, [*args, "--set", "parallel.pp=2", "--set", f"parallel.pp_schedule={schedule}"], cache_dir
        )


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "parallel.tp=2"], "error: tp*pp*cp = 2*1*1 = 2 does not divide the 1 launched"),
        (["--nproc-per-node", "4", "--set", "parallel.tp=2", "--set", "parallel.dp=1"], "error: tp*pp*cp*dp = 2"),
        (["--nproc-per-node", "2", "--set", "parallel.pp=4"], "error: tp*pp*cp = 1*4*1 = 4 does not divide"),
        (["--nproc-per-node", "4", "--set", "parallel.pp=4"], "error: pp=4 exceeds n_layers=3"),
    ],
)
def test_bad_layouts_are_one_line_exit_2_before_any_process_starts(reference, cache_dir, tmp_path, args, needle):
    cfg, _ = reference
    result = run_cli(["train", str(cfg), "--out", str(tmp_path / "x"), *args], cache_dir)
    assert result.returncode == 2
    assert result.stderr.strip().startswith(needle) and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before any process did work


@pytest.mark.slow
@pytest.mark.parametrize(
    "sets, strategy",
    [
        (["parallel.tp=2", "parallel.pp=2"], "tp2 x pp2 1f1b x dp1"),  # sequence-parallel shards cross the stages
        (["parallel.tp=2", "parallel.strategy=ddp"], "tp2 x pp1 x dp2"),  # replicated over dp (HSDP, shard 1)
        (["parallel.pp=2", "parallel.strategy=ddp"], "tp1 x pp2 1f1b x dp2"),
        (["parallel.tp=2", "parallel.strategy=fsdp"], "tp2 x pp1 x dp2"),  # FSDP2 over dp_shard=2
    ],
    ids=["tp2xpp2", "tp2xdp2", "pp2xdp2", "fsdp2xtp2"],
)
def test_four_process_layouts_match_one(reference, cache_dir, tmp_path, sets, strategy):
    """The four 4-process layouts on one DeviceMesh against 1 process on the same global batch, 20 steps."""
    cfg, ref_out = reference
    out = tmp_path / "four"
    flags = [x for item in sets for x in ("--set", item)]
    result = run_torchrun(4, ["train", str(cfg), "--out", str(out), *flags], cache_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["strategy"].startswith(strategy)
    _assert_same_training(ref_out, out)
