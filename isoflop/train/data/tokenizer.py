"""Tokenizers: a byte-level BPE trained on the training split with Hugging Face ``tokenizers``, or a given one.

BPE merges the most frequent adjacent symbol pair repeatedly (Sennrich et al. 2016); the byte-level variant
(Radford et al. 2019, GPT-2 §2.2) starts from the 256 byte values, so any UTF-8 text encodes without unknown
tokens and decodes back exactly. Merges are learned on the corpus up to ``vocab_size`` entries.
One special token, ``<|endoftext|>``, separates packed documents.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from isoflop import structured
from isoflop.errors import IsoflopError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

EOT = "<|endoftext|>"
# End-of-document tokens of common tokenizers, tried in order when a tokenizer is given.
EOT_CANDIDATES = (EOT, "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>", "[SEP]")


def train_bpe(texts: Iterable[str], vocab_size: int, length: int | None = None) -> Tokenizer:
    """Train a byte-level BPE with ``vocab_size`` entries (256 bytes + merges + ``<|endoftext|>``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=length)
    return tok


def tokenizer_file(spec: str) -> Path:
    """The tokenizer.json named by ``spec``: the file itself, or ``<folder>/tokenizer.json``."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise IsoflopError(
            f"tokenizer {spec!r} is not a tokenizer.json file nor a folder holding one; "
            "give a Hugging Face tokenizer.json or its folder, or leave data.tokenizer empty"
        )
    return path


def load_tokenizer(spec: str) -> Tokenizer:
    """Load a tokenizer.json or a Hugging Face tokenizer folder (its ``tokenizer.json``)."""
    from tokenizers import Tokenizer

    path = tokenizer_file(spec)
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:
        raise IsoflopError(f"cannot load tokenizer {str(path)!r} ({exc}); give a valid tokenizer.json") from exc


def find_eot(tok: Tokenizer, folder: Path | None = None) -> int | None:
    """Id of the end-of-document token: the folder's tokenizer_config ``eos_token``, else a known name."""
    names: list[str] = []
    if folder is not None and (folder / "tokenizer_config.json").is_file():
        try:
            eos = structured.read(folder / "tokenizer_config.json", "tokenizer config", "", "json").get("eos_token")
            if isinstance(eos, dict):
                eos = eos.get("content")
            if isinstance(eos, str):
                names.append(eos)
        except (OSError, ValueError, AttributeError, IsoflopError):
            pass
    for name in [*names, *EOT_CANDIDATES]:
        tid = tok.token_to_id(name)
        if tid is not None:
            return tid
    return None


def encode_batch(tok: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of ``texts`` without special tokens, encoded in parallel in Rust."""
    fast = getattr(tok, "encode_batch_fast", None)  # tokenizers >= 0.20: skips offset tracking
    encodings = (fast or tok.encode_batch)(texts, add_special_tokens=False)
    return [e.ids for e in encodings]
