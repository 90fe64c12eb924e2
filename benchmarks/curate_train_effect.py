"""Benchmark: does curation lower held-out loss at equal compute? Raw vs curated corpus, tiny model, two seeds.

1. Clean documents: stdlib ``.py`` files; a held-out set of them is never trained on.
2. Raw corpus: the clean training files, plus planted duplicates (some files copied ``--copies`` times, half of
   the copies with a one-line edit) and planted junk (files with a minified line of random base64, and
   auto-generated tables), which the ``code`` recipe is designed to remove.
3. Curated corpus: ``isoflop data curate RAW --recipe code`` (2 local workers).
4. One byte-level BPE trained on the clean training files is given to every run (``data.tokenizer``), so the
   losses share a unit. Each run is ``isoflop train`` of the same small model (``MODEL``) for the same steps
   and batch (``TRAIN``): equal compute.
5. Loss on the held-out files of each run's exported model (transformers), in nats per token.

Run: ``python benchmarks/curate_train_effect.py [--steps 150] [--seeds 0 1]``; the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# About 0.3M parameters (mostly the embedding): small enough for a shared 2-core machine.
MODEL = {"name": "curate-effect", "d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128, "max_seq_len": 64}
MODEL["tie_embeddings"] = True
TRAIN = {"seq_len": 64, "global_batch": 16, "eval_every": 0, "eval_batches": 4, "log_every": 25, "ckpt_every": 0}


def build_corpora(root: Path, rng: random.Random, n_train: int, n_heldout: int, copies: int, junk: int):
    std = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    files = sorted(p for p in std.rglob("*.py") if 2000 < p.stat().st_size < 40000 and not skip & set(p.parts))
    if len(files) < n_train + n_heldout:
        raise SystemExit(f"only {len(files)} stdlib files; lower --train-files/--heldout-files")
    rng.shuffle(files)
    texts = [p.read_text(encoding="utf-8") for p in files[: n_train + n_heldout]]
    train, heldout = texts[:n_train], texts[n_train:]
    raw = root / "raw"
    (raw / "clean").mkdir(parents=True)
    (raw / "planted").mkdir()
    for i, t in enumerate(train):
        (raw / "clean" / f"{i:04d}.py").write_text(t)
    for i in range(len(train) // 5):  # a fifth of the files repeated `copies` times
        for c in range(copies):
            t = train[i] if c % 2 == 0 else train[i] + f"\n# mirror {c}\n"
            (raw / "planted" / f"dup{i:04d}_{c}.py").write_text(t)
    for j in range(junk):
        if j % 2 == 0:
            blob = base64.b64encode(rng.randbytes(6000)).decode()
            (raw / "planted" / f"min{j:04d}.py").write_text(f"_d = '{blob}'\n")
        else:
            rows = "\n".join(f"    {rng.randrange(10**8)}: {rng.randrange(10**8)}," for _ in range(300))
            (raw / "planted" / f"gen{j:04d}.py").write_text(f"# auto-generated, do not edit\nT = {{\n{rows}\n}}\n")
    return raw, train, heldout


def heldout_loss(hf_dir: Path, texts: list[str], seq_len: int) -> float:
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    tok = Tokenizer.from_file(str(hf_dir / "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for t in texts:
            ids = tok.encode(t).ids
            for s in range(0, len(ids) - 1, seq_len):
                window = torch.tensor([ids[s : s + seq_len + 1]])
                if window.shape[1] < 2:
                    continue
                out = model(window[:, :-1], labels=None)
                logp = torch.log_softmax(out.logits.float(), dim=-1)
                nll = -logp.gather(-1, window[:, 1:, None]).squeeze(-1)
                total += float(nll.sum())
                count += nll.numel()
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--train-files", type=int, default=150)
    ap.add_argument("--heldout-files", type=int, default=30)
    ap.add_argument("--copies", type=int, default=8)
    ap.add_argument("--junk", type=int, default=150)
    ap.add_argument("--vocab", type=int, default=2048)
    args = ap.parse_args()
    from isoflop.train.data.tokenizer import train_bpe

    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env["ISOFLOP_CACHE"] = str(root / "cache")
        raw, train, heldout = build_corpora(root, rng, args.train_files, args.heldout_files, args.copies, args.junk)
        tok_path = root / "tokenizer.json"
        train_bpe(train, args.vocab).save(str(tok_path))
        t0 = time.perf_counter()
        cur = subprocess.run(
            [sys.executable, "-m", "isoflop", "data", "curate", str(raw), "--out", str(root / "curated")]
            + ["--recipe", "code", "--workers", "2", "--tokenizer", str(tok_path), "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        assert cur.returncode == 0, cur.stderr[-2000:]
        curate_s = time.perf_counter() - t0
        curated = json.loads(cur.stdout)
        runs = []
        for name, source in (("raw", raw), ("curated", root / "curated")):
            for seed in args.seeds:
                out = root / f"run_{name}_{seed}"
                cfg = {
                    "model": {**MODEL, "vocab_size": args.vocab},
                    "data": {"source": str(source), "tokenizer": str(tok_path), "vocab_size": args.vocab},
                    "train": {**TRAIN, "max_steps": args.steps, "seed": seed},
                    "optim": {"lr": 3e-3, "warmup_steps": 5},
                }
                (root / "cfg.yaml").write_text(yaml.safe_dump(cfg))
                cmd = [sys.executable, "-m", "isoflop", "train", str(root / "cfg.yaml"), "--out", str(out), "--json"]
                proc = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True)
                assert proc.returncode == 0, proc.stderr[-2000:]
                summary = json.loads((out / "summary.json").read_text())
                runs.append(
                    {
                        "corpus": name,
                        "seed": seed,
                        "heldout_loss": round(heldout_loss(out / "hf", heldout, TRAIN["seq_len"]), 4),
                        "own_val_loss": round(summary["val_loss"], 4),
                        "steps": args.steps,
                    }
                )
                print(json.dumps(runs[-1]), flush=True)
    mean = {c: sum(r["heldout_loss"] for r in runs if r["corpus"] == c) / len(args.seeds) for c in ("raw", "curated")}
    print(
        json.dumps(
            {
                "benchmark": "curate_train_effect",
                "runs": runs,
                "heldout_loss_mean": {k: round(v, 4) for k, v in mean.items()},
                "curated_minus_raw": round(mean["curated"] - mean["raw"], 4),
                "curated_lower_every_seed": all(
                    next(r for r in runs if r["corpus"] == "curated" and r["seed"] == s)["heldout_loss"]
                    < next(r for r in runs if r["corpus"] == "raw" and r["seed"] == s)["heldout_loss"]
                    for s in args.seeds
                ),
                "curation": {
                    "documents_read": curated["stats"]["documents_read"],
                    "documents_kept": curated["stats"]["documents_kept"],
                    "removed": curated["stats"]["removed"],
                    "seconds": round(curate_s, 1),
                },
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
