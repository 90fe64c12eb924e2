"""A tiny Hugging Face Llama (built locally, no download) with an isoflop BPE tokenizer, and SFT JSONL files."""

from __future__ import annotations

import json
from pathlib import Path

TEXTS = [
    f"def {name}(x):\n    return x {op} {k}\n" for name in ("add", "sub", "mul", "scale") for op in "+-*" for k in range(8)
]


def tiny_llama(folder: Path, vocab: int = 320, layers: int = 2, seed: int = 0) -> Path:
    """``LlamaForCausalLM`` (d=64, 2 layers, GQA 4/2 heads) saved with ``save_pretrained`` plus a tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from isoflop.train.data.tokenizer import EOT, train_bpe
    from isoflop.train.export import export_tokenizer

    tok = train_bpe(TEXTS * 4, vocab_size=vocab)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tok.get_vocab_size(),
        max_position_embeddings=256,
        eos_token_id=tok.token_to_id(EOT),
        bos_token_id=tok.token_to_id(EOT),
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    export_tokenizer(tok, folder, 256, tok.token_to_id(EOT))
    return folder


def sft_jsonl(path: Path, n: int = 24, kind: str = "prompt") -> Path:
    """``n`` examples: docstring-like prompt -> function body, as prompt/completion, text or chat messages."""
    lines = []
    for i in range(n):
        name, k = ("add", "sub", "mul", "scale")[i % 4], i % 8
        prompt, completion = f"# {name} {k}\n", f"def {name}(x):\n    return x + {k}\n"
        if kind == "text":
            lines.append({"text": prompt + completion})
        elif kind == "chat":
            lines.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]})
        else:
            lines.append({"prompt": prompt, "completion": completion})
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path
