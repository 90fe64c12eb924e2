"""``isoflop data curate`` on datatrove: filters, exact/MinHash dedup, decontamination, stats, manifest, resume,
Slurm dry run, and the trainer/ladder/planner reading the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytest.importorskip("datatrove")

from isoflop.curate.manifest import read_manifest
from isoflop.curate.pipeline import CurateRequest, build_executors, build_stages
from isoflop.curate.recipe import Recipe, builtin_recipes, load_recipe
from isoflop.curate.run import curate
from isoflop.errors import IsoflopError

ROOT = Path(__file__).resolve().parents[1]
N_FILES = 16
TEST_RECIPE = "filters: [{code: {}}]\ndedup: {exact: true, minhash: {n_grams: 5, bands: 4, rows: 3}}\n"


def _stdlib_texts(n: int) -> list[str]:
    std = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted(std.glob("*.py")) if 2000 < p.stat().st_size < 20000]
    return texts[:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Stdlib files in two domains, with planted exact and near duplicates, junk, bad inputs and an eval file."""
    root = tmp_path_factory.mktemp("curate")
    src = root / "src"
    (src / "lib").mkdir(parents=True)
    (src / "web").mkdir()
    texts = _stdlib_texts(N_FILES)
    for i, text in enumerate(texts):
        (src / "lib" / f"f{i:02d}.py").write_text(text)
    (src / "web" / "exact0.py").write_text(texts[0])  # exact duplicate
    lines = texts[1].splitlines()
    (src / "web" / "near1.py").write_text("\n".join(lines[:-2] + ["# edited", *lines[-2:]]))  # near duplicate
    (src / "web" / "junk.txt").write_text("x" * 5000)  # one 5000-character line: the code filter drops it
    (src / "web" / "binary.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (src / "web" / "latin1.txt").write_bytes("caf\xe9 au lait ".encode("latin-1") * 20)
    records = [json.dumps({"text": texts[2] + "\n# jsonl copy", "id": "j0", "source_tag": "kept-metadata"}), "{broken"]
    (src / "web" / "docs.jsonl").write_text("\n".join(records) + "\n")
    evals = root / "eval.jsonl"  # a benchmark passage copied from texts[3]: that file is contaminated
    passage = " ".join(texts[3].split()[40:80])
    evals.write_text(json.dumps({"text": passage}) + "\n")
    recipe = root / "test_recipe.yaml"
    recipe.write_text(TEST_RECIPE)
    out = root / "out"
    args = ["data", "curate", str(src), "--out", str(out), "--recipe", str(recipe), "--workers", "2"]
    args += ["--decontaminate", str(evals), "--keep-removed", "--json"]
    return {"src": src, "out": out, "args": args, "texts": texts}


@pytest.fixture(scope="module")
def curated(corpus) -> dict:
    """Run the CLI once (in a subprocess, the user's path) and return its JSON."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "isoflop", *corpus["args"]], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def _kept(out: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((out / "data").glob("*.jsonl")) for line in p.read_text().splitlines()]


def test_curate_removes_planted_duplicates_junk_and_contamination(corpus, curated):
    stats, manifest = curated["stats"], curated["manifest"]
    kept = _kept(corpus["out"])
    ids = {d["id"] for d in kept}
    # 16 stdlib files + exact copy + near copy + junk + jsonl copy read; binary, latin-1 and broken JSON skipped
    assert stats["documents_read"] == N_FILES + 4
    assert stats["skipped_inputs"] == {"binary": 1, "not_utf8": 1, "invalid_json": 1}
    assert stats["removed"]["code"] == 1 and "lib/f03.py" not in ids  # junk line; contaminated file
    assert stats["removed"]["decont"] == 1
    assert stats["removed"]["exact_dedup"] == 1
    assert stats["removed"]["minhash_dedup"] >= 1  # the near copy (and the jsonl copy when J is above the curve)
    check = next(s for s in stats["stages"] if s["name"] == "minhash_chk")["minhash_pairs"]
    assert check["candidates"] > check["rejected"] >= 0  # 4 bands x 3 rows pair far more than the verified ones
    assert sum(stats["removed"].values()) + len(kept) == stats["documents_read"]
    for i in (0, 1, 2):  # one member of each planted cluster survives
        copies = [d for d in kept if d["text"].startswith(corpus["texts"][i][:200])]
        assert len(copies) == 1, i
    assert manifest["documents"] == len(kept)
    assert manifest["bytes"] == sum(len(d["text"].encode()) for d in kept)
    assert sum(d["documents"] for d in manifest["domains"].values()) == len(kept)
    assert set(manifest["domains"]) <= {"lib", "web"}
    jsonl = [d for d in kept if d["id"] == "j0"]
    assert not jsonl or jsonl[0]["metadata"]["source_tag"] == "kept-metadata"  # metadata preserved
    removed = {p.parent.name for p in (corpus["out"] / ".removed").rglob("*.jsonl") if p.stat().st_size}
    assert {"code", "decont", "exact_dedup", "minhash_dedup"} <= removed


def test_trainer_ladder_and_planner_read_the_output(corpus, curated, cli):
    from isoflop.ladder.presets import get_ladder_preset, with_data
    from isoflop.train.data.config import DataConfig
    from isoflop.train.data.corpus import load_corpus

    out = corpus["out"]
    loaded = load_corpus(DataConfig(source=str(out), val_fraction=0.2))
    assert len(loaded.train) + len(loaded.val) == curated["manifest"]["documents"]
    assert not loaded.skipped  # stats/manifest JSON and the hidden .curate/.removed folders are not read as text
    assert with_data(get_ladder_preset(_first_preset()), str(out)).data_source == str(out.resolve())
    res = cli("plan", "--budget-flops", "1e20", "--law", "muennighoff", "--data", str(out), "--json")
    assert res.code == 0, res.err
    assert res.json()["law_optimum"]["unique_tokens"] == pytest.approx(read_manifest(out).tokens)


def _first_preset() -> str:
    from isoflop.ladder.presets import PRESETS

    return next(iter(PRESETS))


def test_rerun_resumes_only_unfinished_tasks(corpus, curated):
    out = corpus["out"]
    marker = out / ".curate" / "logs" / "write" / "completions" / "00001"
    shard = out / "data" / "00001.jsonl"
    assert marker.is_file() and shard.is_file()
    before = shard.read_text()
    marker.unlink()  # as if task 1 of the last stage had been killed
    shard.write_text("partial")
    (out / "manifest.json").unlink()
    req = CurateRequest(
        source=corpus["src"], out=out, recipe=load_recipe(str(out.parent / "test_recipe.yaml")), workers=2,
        eval_files=(out.parent / "eval.jsonl",), keep_removed=True,
    )  # fmt: skip
    result = curate(req)
    assert shard.read_text() == before
    assert result.manifest.documents == curated["manifest"]["documents"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / ".curate/logs/write/completions").iterdir()}
    assert stamps["00001"] > stamps["00000"]  # only task 1 ran again


def test_unfinished_run_is_never_marked_complete(corpus, tmp_path, monkeypatch):
    from datatrove.executor import LocalPipelineExecutor

    real = LocalPipelineExecutor.run
    monkeypatch.setattr(
        LocalPipelineExecutor, "run", lambda self: None if "write" in str(self.logging_dir.path) else real(self)
    )
    req = CurateRequest(
        source=corpus["src"] / "lib", out=tmp_path / "o", recipe=Recipe(dedup={"exact": False, "minhash": None})
    )
    with pytest.raises(IsoflopError, match="unfinished tasks; rerun"):
        curate(req)
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_changed_settings_need_overwrite(corpus, curated):
    req = CurateRequest(source=corpus["src"], out=corpus["out"], recipe=load_recipe("minimal"))
    with pytest.raises(IsoflopError, match="other settings; pass --overwrite"):
        curate(req)


def test_slurm_dry_run_writes_sbatch_scripts_without_submitting(corpus, tmp_path, cli):
    out = tmp_path / "slurm"
    res = cli(
        "data", "curate", str(corpus["src"]), "--out", str(out), "--recipe", "fineweb", "--executor", "slurm",
        "--dry-run", "--workers", "4", "--partition", "hopper-cpu", "--time", "01:30:00", "--json",
    )  # fmt: skip
    assert res.code == 0, res.err
    scripts = [Path(p) for p in res.json()["slurm_scripts"]]
    assert [p.parent.name for p in scripts] == [
        "filter", "exact_sig", "exact_find", "minhash_sig", "minhash_bkt", "minhash_chk", "minhash_clu", "write"
    ]  # fmt: skip
    text = scripts[0].read_text()
    assert text.startswith("#!/bin/bash\n")
    assert "#SBATCH --partition=hopper-cpu" in text and "#SBATCH --time=01:30:00" in text
    assert "#SBATCH --array=0-3%4" in text and "launch_pickled_pipeline" in text
    assert "#SBATCH --array=0-13%4" in scripts[4].read_text()  # one task per MinHash band (14)
    assert not (out / "manifest.json").exists()


def test_recipes_and_minhash_curve():
    assert {"minimal", "gopher", "c4", "fineweb", "code"} <= set(builtin_recipes())
    for name in builtin_recipes():
        assert load_recipe(name).name == name
    spec = load_recipe("fineweb").dedup.minhash
    assert spec.threshold == pytest.approx((1 / 14) ** (1 / 8))
    # at the threshold the band-collision probability is 1 - (1 - 1/b)^b (close to 1 - 1/e)
    assert spec.detect_probability(spec.threshold) == pytest.approx(1 - (1 - 1 / 14) ** 14)


def test_candidate_check_keeps_exactly_the_pairs_at_or_above_the_threshold(tmp_path):
    """The check step against a brute-force reference: the exact Jaccard of Python sets of word 5-grams."""
    import struct

    from datatrove.pipeline.dedup import MinhashConfig, MinhashDedupSignature
    from datatrove.pipeline.readers import JsonlReader

    from isoflop.curate.steps import MinhashVerifyCandidates

    words = [
        "".join(chr(97 + (i // 26**k) % 26) for k in range(3)) for i in range(200)
    ]  # letters: digits are normalised away
    docs = [" ".join(words), " ".join(words[:190] + ["x"] * 10), " ".join(words[:120] + ["y"] * 80), "short"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "00000.jsonl").write_text(
        "".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(docs))
    )
    pairs = [(0, 0, 0, 1), (0, 0, 0, 2), (0, 1, 0, 2), (0, 2, 0, 3)]
    (tmp_path / "bkt").mkdir()
    (tmp_path / "bkt" / "00000_00.dups").write_bytes(b"".join(struct.pack("<4I", *p) for p in pairs))
    sig = MinhashDedupSignature(str(tmp_path / "sig"), config=MinhashConfig(n_grams=5))
    reader = JsonlReader(str(tmp_path / "in"), glob_pattern="*.jsonl", compression=None)
    step = MinhashVerifyCandidates(str(tmp_path / "bkt"), str(tmp_path / "chk"), sig, [reader], 1, threshold=0.8)
    list(step.run())
    raw = (tmp_path / "chk" / "00000_00.dups").read_bytes()
    kept = {struct.unpack("<4I", raw[i : i + 16]) for i in range(0, len(raw), 16)}

    def grams(t: str) -> set[tuple[str, ...]]:
        w = t.split()
        return {tuple(w[i : i + 5]) for i in range(len(w) - 4)}

    def jaccard(a: str, b: str) -> float:
        return len(grams(a) & grams(b)) / len(grams(a) | grams(b)) if grams(a) and grams(b) else 0.0

    assert kept == {p for p in pairs if jaccard(docs[p[1]], docs[p[3]]) >= 0.8} == {(0, 0, 0, 1)}


def test_build_stages_uses_datatrove_steps(corpus, tmp_path):
    req = CurateRequest(source=corpus["src"], out=tmp_path, recipe=load_recipe("fineweb"), workers=2)
    stages = build_stages(req)
    first = [type(s).__name__ for s in stages[0].pipeline]
    assert first[-5:] == [
        "GopherRepetitionFilter", "GopherQualityFilter", "C4QualityFilter", "FineWebQualityFilter", "JsonlWriter"
    ]  # fmt: skip
    assert [type(e).__name__ for e in build_executors(req, stages)] == ["LocalPipelineExecutor"] * len(stages)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "curate", "/no/such/dir", "--out", "o"], "source '/no/such/dir' does not exist"),
        (["data", "curate", ".", "--out", "o", "--recipe", "nope"], "recipe 'nope' is neither built in nor a file"),
        (["data", "curate", ".", "--out", "o", "--executor", "mpi"], "--executor 'mpi' is unknown"),
        (["data", "curate", ".", "--out", "o", "--dry-run"], "--dry-run applies to --executor slurm"),
        (["plan", "--budget-flops", "1e18", "--data", "/no/such/dir"], "has no manifest.json"),
    ],
)
def test_bad_input_is_one_line_exit_2(cli, args, message):
    res = cli(*args)
    assert res.code == 2 and message in res.err and len(res.err.strip().splitlines()) == 1


def test_malformed_recipe_file(cli, tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("filters: [\n")
    res = cli("data", "curate", str(tmp_path), "--out", str(tmp_path / "o"), "--recipe", str(bad))
    assert res.code == 2 and res.err.startswith("error: malformed recipe") and len(res.err.splitlines()) == 1


def test_core_imports_without_datatrove(tmp_path):
    """``isoflop`` (and ``plan --data``) run without the extra; ``data curate`` then names it in one line."""
    code = (
        "import sys; sys.modules['datatrove'] = None\n"
        "import isoflop.cli, isoflop.curate.manifest, isoflop.curate.recipe\n"
        "sys.argv = ['isoflop', 'data', 'curate', '.', '--out', sys.argv[1]]\n"
        "isoflop.cli.main()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "o")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: data curation needs the 'curate' extra; pip install isoflop[curate]"


def test_readers_cover_every_source_format(tmp_path):
    """JSONL (plain, gzip, zstd), Parquet and a save_to_disk folder each yield their documents with ids kept."""
    import gzip

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from isoflop.curate.pipeline import source_readers

    rows = [{"text": f"document number {i} " * 5, "id": f"r{i}"} for i in range(3)]
    lines = "".join(json.dumps(r) + "\n" for r in rows).encode()
    (tmp_path / "plain.jsonl").write_bytes(lines)
    (tmp_path / "g.jsonl.gz").write_bytes(gzip.compress(lines))
    (tmp_path / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    hf = tmp_path / "hf"
    datasets.Dataset.from_list(rows).save_to_disk(str(hf))
    for source in ["plain.jsonl", "g.jsonl.gz", "z.jsonl.zst", "t.parquet", "hf"]:
        (reader,) = source_readers(tmp_path / source, "text")
        docs = list(reader.run(rank=0, world_size=1))
        assert [d.text for d in docs] == [r["text"] for r in rows], source
        if source != "hf":
            assert [d.id for d in docs] == [r["id"] for r in rows], source
