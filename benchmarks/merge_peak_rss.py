"""Benchmark: peak resident memory of ``isoflop merge`` against the size of the models it merges.

Run: ``python benchmarks/merge_peak_rss.py [--hidden 768 --layers 6 --vocab 16000] [--mergekit]``. Writes a base and
three random Llama-shaped fp32 models (safetensors) to a temporary folder, then runs each merge in a fresh child
process that reports its own peak RSS (``VmHWM``): a 3-model linear soup and a 3-model TIES merge over the base
(4 inputs), with the output in 1 shard (and in 256 MiB shards for the soup). ``baseline`` is the peak of a child
that only imports the same modules, so ``peak - baseline`` is what the merge itself holds. With ``--mergekit`` the
same linear soup is also run through mergekit (if installed) for comparison. The last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = r"""
import json, sys
mode, args = sys.argv[1], sys.argv[2:]
if mode == "isoflop":
    from isoflop.cli import main
    sys.argv = ["isoflop", "merge", *args]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, exc.code
elif mode == "isoflop-baseline":
    import isoflop.cli, isoflop.merge.engine  # noqa: F401
elif mode == "mergekit":
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions
    run_merge(MergeConfiguration.model_validate(json.loads(args[0])), args[1],
              options=MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
elif mode == "mergekit-baseline":
    import mergekit.merge  # noqa: F401
# VmHWM: the high-water mark of this program's own address space (ru_maxrss would include the parent's RSS
# inherited between fork and exec)
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"maxrss_bytes": int(hwm.split()[1]) * 1024}))
"""


def llama_shapes(hidden: int, layers: int, ff: int, vocab: int) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, hidden),
        "lm_head.weight": (vocab, hidden),
    }
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in "qkvo":
            shapes[p + f"self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[p + "mlp.gate_proj.weight"] = (ff, hidden)
        shapes[p + "mlp.up_proj.weight"] = (ff, hidden)
        shapes[p + "mlp.down_proj.weight"] = (hidden, ff)
        shapes[p + "input_layernorm.weight"] = (hidden,)
        shapes[p + "post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    return shapes


def write_model(folder: Path, shapes: dict[str, tuple[int, ...]], seed: int, config: dict) -> int:
    import torch
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    tensors = {name: 0.02 * torch.randn(shape, generator=g) for name, shape in shapes.items()}
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))
    return sum(t.numel() * 4 for t in tensors.values())


def child(mode: str, *args: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, mode, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise SystemExit(f"{mode} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_bytes"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--ff", type=int, default=2048)
    ap.add_argument("--vocab", type=int, default=16000)
    ap.add_argument("--mergekit", action="store_true")
    args = ap.parse_args()
    shapes = llama_shapes(args.hidden, args.layers, args.ff, args.vocab)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.hidden,
        "intermediate_size": args.ff,
        "num_hidden_layers": args.layers,
        "num_attention_heads": args.hidden // 64,
        "num_key_value_heads": args.hidden // 64,
        "vocab_size": args.vocab,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sizes = [write_model(root / name, shapes, i, config) for i, name in enumerate(["base", "a", "b", "c"])]
        model_bytes = sizes[0]
        largest = max(4 * __import__("math").prod(s) for s in shapes.values())
        baseline = child("isoflop-baseline")
        models = [str(root / n) for n in "abc"]
        runs = {
            "linear_3_models": ["--method", "linear", "--models", *models, "--weights", "1", "1", "1"],
            "ties_base_plus_3": [
                "--method",
                "ties",
                "--base",
                str(root / "base"),
                "--models",
                *models,
                "--weights",
                "1",
                "1",
                "1",
                "--density",
                "0.5",
            ],
        }
        for name, flags in runs.items():
            for shard_gib in (8.0, 0.25) if name.startswith("linear") else (8.0,):
                out = root / f"out-{name}-{shard_gib}"
                t0 = time.perf_counter()
                peak = child("isoflop", *flags, "--out", str(out), "--shard-size", str(shard_gib))
                results[f"{name}_shard_{shard_gib}GiB"] = {
                    "peak_rss_bytes": peak,
                    "merge_rss_bytes": peak - baseline,
                    "merge_rss_over_model_size": round((peak - baseline) / model_bytes, 3),
                    "merge_rss_over_largest_tensor": round((peak - baseline) / largest, 2),
                    "wall_s": round(time.perf_counter() - t0, 2),
                }
                import shutil

                shutil.rmtree(out)
        if args.mergekit:
            mk_baseline = child("mergekit-baseline")
            recipe = {"merge_method": "linear", "models": [{"model": m, "parameters": {"weight": 1.0}} for m in models]}
            t0 = time.perf_counter()
            peak = child("mergekit", json.dumps(recipe), str(root / "out-mergekit"))
            results["mergekit_linear_3_models"] = {
                "peak_rss_bytes": peak,
                "merge_rss_bytes": peak - mk_baseline,
                "merge_rss_over_model_size": round((peak - mk_baseline) / model_bytes, 3),
                "wall_s": round(time.perf_counter() - t0, 2),
            }
    print(
        json.dumps(
            {
                "model_bytes": model_bytes,
                "largest_tensor_bytes": largest,
                "inputs_bytes_linear": 3 * model_bytes,
                "inputs_bytes_ties": 4 * model_bytes,
                "import_baseline_rss_bytes": baseline,
                **results,
            }
        )
    )


if __name__ == "__main__":
    main()
