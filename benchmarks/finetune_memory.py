"""Benchmark: predicted (``isoflop.perf.finetune``) vs measured peak step memory of ``isoflop finetune`` on CPU.

Run: ``python benchmarks/finetune_memory.py [--layers 3] [--batch 4] [--seq-len 64]``. A tiny Llama (built here
with ``save_pretrained``, no download) is fine-tuned for 2 steps per case (methods x ranks x gradient
checkpointing, QLoRA where bitsandbytes runs); the measured peak is every live tensor storage during step 2
(``isoflop.finetune.memtrack``). The last printed line is one JSON object with one row per case.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ALL = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CASES = [
    {"method": "lora", "rank": 4, "targets": ("q_proj", "v_proj")},
    {"method": "lora", "rank": 16, "targets": ("q_proj", "v_proj")},
    {"method": "lora", "rank": 8, "targets": ALL},
    {"method": "lora", "rank": 8, "targets": ALL, "grad_checkpointing": True},
    {"method": "lora", "rank": 8, "targets": ("q_proj", "v_proj"), "dropout": 0.1},
    {"method": "dora", "rank": 8, "targets": ALL},
    {"method": "dora", "rank": 4, "targets": ("q_proj", "v_proj"), "grad_checkpointing": True},
    {"method": "full"},
    {"method": "full", "grad_checkpointing": True},
    {"method": "qlora", "rank": 8, "targets": ALL},
]
TEXTS = [
    f"def {n}(x):\n    return x {op} {k}\n" for n in ("add", "sub", "mul", "scale") for op in "+-*" for k in range(8)
]


def tiny_llama(folder: Path, layers: int = 2, vocab: int = 320, seed: int = 0) -> Path:
    """A ``LlamaForCausalLM`` (d=64, GQA 4/2 heads, untied) with an isoflop byte-level BPE tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from isoflop.train.data.tokenizer import EOT, train_bpe
    from isoflop.train.export import export_tokenizer

    tok = train_bpe(TEXTS * 4, vocab_size=vocab)
    eos = tok.token_to_id(EOT)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=256,
        eos_token_id=eos,
        bos_token_id=eos,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    export_tokenizer(tok, folder, 256, eos)
    return folder


def sft_jsonl(path: Path, n: int = 24, kind: str = "prompt") -> Path:
    """``n`` docstring-like prompt -> function body examples, as prompt/completion, text or chat messages."""
    lines = []
    for i in range(n):
        name, k = ("add", "sub", "mul", "scale")[i % 4], i % 8
        prompt, completion = f"# {name} {k}\n", f"def {name}(x):\n    return x + {k}\n"
        if kind == "text":
            lines.append({"text": prompt + completion})
        elif kind == "chat":
            chat = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            lines.append({"messages": chat})
        else:
            lines.append({"prompt": prompt, "completion": completion})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def run_case(base: Path, data: Path, out: Path, case: dict, batch: int, seq_len: int) -> dict:
    from isoflop.finetune.config import FinetuneConfig
    from isoflop.finetune.trainer import finetune

    cfg = FinetuneConfig(base=str(base), data=str(data), out=str(out), max_steps=2, micro_batch=batch, seq_len=seq_len,
                         **case)  # fmt: skip
    summary = finetune(cfg)
    return {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in case.items()},
        "trainable_params": summary["trainable_params"],
        "predicted_trainable_params": summary["predicted"]["trainable_params"],
        "predicted_gib": summary["predicted"]["total_gib"],
        "measured_gib": summary["measured"]["peak_gib"],
        "error": summary["memory_error"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=64)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, data = tiny_llama(root / "base", args.layers), sft_jsonl(root / "data.jsonl", n=32)
        for i, case in enumerate(CASES):
            rows.append(run_case(base, data, root / f"run{i}", case, args.batch, args.seq_len))
            print(json.dumps(rows[-1]), flush=True)
    worst = max(abs(r["error"]) for r in rows)
    print(json.dumps({"layers": args.layers, "batch": args.batch, "seq_len": args.seq_len, "cases": rows,
                      "max_abs_error": worst}))  # fmt: skip


if __name__ == "__main__":
    main()
