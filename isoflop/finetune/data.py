"""Supervised fine-tuning data: JSONL with ``text``, ``prompt``/``completion`` or chat ``messages``.

Each line is one example, tokenised on its own and truncated or right-padded to ``seq_len`` (no packing, so
examples never attend to each other). The loss counts completion tokens only: ``prompt`` tokens, everything
before the last chat message (which must be the assistant's) and padding get the label ``-100``; a ``text``
example trains on all its tokens. Chat messages use the tokenizer's chat template when it has one, else the
default ``<|role|>\\ncontent\\n`` per message. A seeded shuffle holds out ``val_fraction`` of the examples.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from isoflop import structured
from isoflop.errors import IsoflopError

IGNORE = -100


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str


@dataclass(frozen=True)
class SftData:
    """Tokenised splits: ``input_ids`` and ``labels`` of shape ``(n, seq_len)`` each. Padding sits on the right,
    after every real token, so causal attention never lets a real token see it: no attention mask is needed
    (and SDPA keeps its fused causal kernel, which saves no ``s x s`` matrix)."""

    train: dict[str, torch.Tensor]
    val: dict[str, torch.Tensor]

    @property
    def train_tokens(self) -> int:
        return int((self.train["labels"] != IGNORE).sum())


def _default_chat(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)


def parse_line(obj: Any, where: str, tokenizer: Any) -> Example:
    """One JSON object as a (prompt, completion) pair."""
    if not isinstance(obj, dict):
        raise IsoflopError(f"{where}: expected a JSON object; write one object per line")
    if isinstance(obj.get("text"), str):
        return Example("", obj["text"])
    if isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str):
        return Example(obj["prompt"], obj["completion"])
    messages = obj.get("messages")
    if isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages):
        if messages[-1].get("role") != "assistant":
            raise IsoflopError(f"{where}: the last chat message must be the assistant's; it is the one trained on")
        if getattr(tokenizer, "chat_template", None):
            full = tokenizer.apply_chat_template(messages, tokenize=False)
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            if full.startswith(prompt):
                return Example(prompt, full[len(prompt) :])
        prompt = _default_chat(messages[:-1]) + "<|assistant|>\n"
        return Example(prompt, str(messages[-1].get("content", "")) + "\n")
    raise IsoflopError(f"{where}: needs 'text', 'prompt' and 'completion', or 'messages'; see `isoflop finetune -h`")


def read_jsonl(path: str | Path, tokenizer: Any) -> list[Example]:
    file = Path(path)
    if not file.is_file():
        raise IsoflopError(f"data file {str(file)!r} does not exist; pass a JSONL file with --data")
    examples = []
    text = structured.read_text(file, "data file", "write UTF-8 JSONL, one JSON object per line")
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = structured.loads(line, "json", f"{file}:{i}", "JSONL", "")
        except structured.ParseError as exc:
            raise IsoflopError(f"{file}:{i}: invalid JSON ({exc.reason}); write one JSON object per line") from None
        examples.append(parse_line(obj, f"{file}:{i}", tokenizer))
    if len(examples) < 2:
        raise IsoflopError(f"{file} holds {len(examples)} example(s); fine-tuning needs at least 2 (train and val)")
    return examples


def encode(examples: list[Example], tokenizer: Any, seq_len: int) -> dict[str, torch.Tensor]:
    """Token ids (prompt, completion, EOS), labels masked outside the completion, padded to ``seq_len``."""
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    ids = torch.full((len(examples), seq_len), pad, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE)
    for row, ex in enumerate(examples):
        p = tokenizer(ex.prompt, add_special_tokens=False)["input_ids"] if ex.prompt else []
        c = tokenizer(ex.completion, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        seq = (p + c)[:seq_len]
        n = len(seq)
        ids[row, :n] = torch.tensor(seq, dtype=torch.long)
        labels[row, len(p) : n] = ids[row, len(p) : n]
    return {"input_ids": ids, "labels": labels}


def load_sft(path: str | Path, tokenizer: Any, seq_len: int, val_fraction: float, seed: int) -> SftData:
    """Read, shuffle (seeded), split and tokenise; at least one example in each split."""
    if not 0.0 < val_fraction < 1.0:
        raise IsoflopError(f"--val-fraction must be in (0, 1), got {val_fraction}; e.g. 0.1")
    examples = read_jsonl(path, tokenizer)
    random.Random(seed).shuffle(examples)
    n_val = min(max(1, round(len(examples) * val_fraction)), len(examples) - 1)
    train, val = encode(examples[n_val:], tokenizer, seq_len), encode(examples[:n_val], tokenizer, seq_len)
    if int((train["labels"] != IGNORE).sum()) == 0:
        raise IsoflopError("no completion token survives truncation; raise --seq-len or shorten the prompts")
    return SftData(train, val)
