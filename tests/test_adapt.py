"""`gen-linker adapt`: a linker folder for a new KB from a few examples (the bundled WikiMEL
sample's KB and mentions, the packaged default linker and MiniLM; nothing downloaded)."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_jsonl
from gen_linker import datasets, load_linker
from gen_linker.adapt import MIN_REFIT, adapt
from gen_linker.cli import main
from gen_linker.errors import GenLinkerError
from gen_linker.fusion import FusionModel
from gen_linker.kb import KnowledgeBase
from gen_linker.loader import DEFAULT_LINKER
from gen_linker.schema import Mention

SAMPLE = Path(__file__).resolve().parents[1] / "gen_linker" / "data" / "wikimel_sample"


@pytest.fixture(scope="module")
def kb_folder(tmp_path_factory) -> Path:
    """The sample KB as a prepared folder (entities + the default linker's caches), as a user
    builds it once with `gen-linker build-kb --prepare`."""
    folder = tmp_path_factory.mktemp("newkb") / "kb"
    kb = KnowledgeBase.from_jsonl(SAMPLE / "entities.jsonl")
    kb.save(folder)
    kb = KnowledgeBase.open(folder)
    name = kb.names()[0]
    load_linker(kb).link([Mention("p", name, name, 0, len(name))])
    assert any((folder / "cache").glob("emb-*.npy"))
    return folder


@pytest.fixture(scope="module")
def train_mentions():
    return datasets.load(SAMPLE / "train.jsonl", "jsonl").valid


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_adapt_writes_a_folder_that_links(kb_folder, train_mentions, tmp_path):
    examples = write_jsonl(tmp_path / "few.jsonl", [m.to_dict() for m in train_mentions[:40]]
                           + [{"id": "x1", "text": "A man", "mention": "man", "gold": "Q_NOT_IN_KB"},
                              {"id": "x2", "text": "no gold here", "mention": "gold"},
                              "{not json"])
    before = tree_digest(DEFAULT_LINKER)
    out = tmp_path / "adapted"
    report = adapt(kb_folder, examples, out, progress=False)
    assert tree_digest(DEFAULT_LINKER) == before               # the old linker's folder is only read
    assert report.examples == 40 and len(report.skipped) == 3
    assert any("Q_NOT_IN_KB" in s and "x1" in s for s in report.skipped)
    assert any("x2" in s and "no gold" in s for s in report.skipped)
    # 40 examples: 10 held out, the fusion refitted on 30 and its dev Top-1 before/after reported
    assert report.dev_examples == 10 and report.fit_examples == 30
    assert set(report.dev_top1) == {"base", "refit"} and all(0 <= v <= 1 for v in report.dev_top1.values())
    assert report.chosen in ("base", "refit")
    assert sorted(p.name for p in out.iterdir()) == ["adapt.yaml", "examples.jsonl", "fusion", "kb", "linker.yaml"]
    assert len((out / "examples.jsonl").read_text().splitlines()) == 40
    spec = yaml.safe_load((out / "linker.yaml").read_text())
    assert spec["generative"]["demos"] == "examples.jsonl" and spec["rerank"]["fusion"] == "fusion"
    card = yaml.safe_load((out / "adapt.yaml").read_text())
    assert card["report"]["examples"] == 40 and len(card["report"]["skipped"]) == 3
    refit, base = FusionModel.load(out / "fusion"), FusionModel.load(DEFAULT_LINKER / "fusion")
    moved = any(not np.allclose(a.detach().numpy(), b.detach().numpy())
                for a, b in zip(refit.net.parameters(), base.net.parameters()))
    assert moved == (report.chosen == "refit")
    # the folder stands alone: moved elsewhere, it still loads and links, its pool the examples
    moved_to = tmp_path / "elsewhere" / "linker"
    moved_to.parent.mkdir()
    out.rename(moved_to)
    linker = load_linker(moved_to / "kb", moved_to)
    test = datasets.load(SAMPLE / "test.jsonl", "jsonl").valid[:30]
    results = linker.link(test)
    assert len(results) == 30 and all(r.entity_id in linker.kb for r in results)
    assert sum(r.entity_id == m.gold for r, m in zip(results, test)) >= 20
    assert all(0 <= r.confidence <= 1 for r in results)


def test_few_examples_are_a_pool_only(kb_folder, train_mentions, tmp_path):
    examples = write_jsonl(tmp_path / "few.jsonl", [m.to_dict() for m in train_mentions[: MIN_REFIT - 1]])
    report = adapt(kb_folder, examples, tmp_path / "a", progress=False)
    assert report.examples == MIN_REFIT - 1 and not report.dev_top1 and report.chosen == "base"
    assert tree_digest(tmp_path / "a" / "fusion") == tree_digest(DEFAULT_LINKER / "fusion")
    # zero examples: no pool at all
    report = adapt(kb_folder, None, tmp_path / "b", progress=False)
    assert report.examples == 0 and not (tmp_path / "b" / "examples.jsonl").exists()
    assert yaml.safe_load((tmp_path / "b" / "linker.yaml").read_text())["generative"]["demos"] is None


def test_repeated_example_ids_are_split_by_position(kb_folder, train_mentions, tmp_path):
    rows = [{**m.to_dict(), "id": "same"} for m in train_mentions[:20]]
    report = adapt(kb_folder, write_jsonl(tmp_path / "dup.jsonl", rows), tmp_path / "d", progress=False)
    assert (report.fit_examples, report.dev_examples) == (15, 5) and set(report.dev_top1) == {"base", "refit"}


def test_tune_stops_at_its_time_budget(kb_folder, train_mentions, tmp_path):
    examples = write_jsonl(tmp_path / "few.jsonl", [m.to_dict() for m in train_mentions[:24]])
    report = adapt(kb_folder, examples, tmp_path / "t", tune=True, max_minutes=0.02, progress=False)
    assert set(report.dev_top1) == {"base", "refit", "tuned"}
    assert report.tune_s is not None and report.tune_stopped_at_step is not None
    spec = yaml.safe_load((tmp_path / "t" / "linker.yaml").read_text())
    assert (spec["candidates"]["encoder"] == "biencoder") == (report.chosen == "tuned")
    # the KB embeddings of an encoder that was not kept do not stay in the folder
    assert len(list((tmp_path / "t" / "kb" / "cache").glob("emb-*.npy"))) == 1 + (report.chosen == "tuned")
    load_linker(tmp_path / "t" / "kb", tmp_path / "t").link(datasets.load(SAMPLE / "test.jsonl", "jsonl").valid[:3])


def test_bad_input_errors_name_it(kb_folder, train_mentions, tmp_path):
    empty_kb = write_jsonl(tmp_path / "empty_kb.jsonl", [])
    with pytest.raises(GenLinkerError, match="empty_kb.jsonl"):
        adapt(empty_kb, None, tmp_path / "o1", progress=False)
    empty = write_jsonl(tmp_path / "none.jsonl", [])
    with pytest.raises(GenLinkerError, match="none.jsonl"):
        adapt(kb_folder, empty, tmp_path / "o2", progress=False)
    with pytest.raises(GenLinkerError, match="never writes to the old linker"):
        adapt(kb_folder, None, DEFAULT_LINKER / "new", progress=False)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists()
    assert not list(tmp_path.glob(".o*"))                        # no temporary folder left behind
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "f").write_text("x")
    assert main(["adapt", "--kb", str(kb_folder), "--output", str(tmp_path / "taken"), "--no-progress"]) == 1
    assert (tmp_path / "taken" / "f").read_text() == "x"


def test_killed_adapt_leaves_no_half_folder(kb_folder, train_mentions, tmp_path):
    examples = write_jsonl(tmp_path / "few.jsonl", [m.to_dict() for m in train_mentions[:64]])
    out = tmp_path / "adapted"
    argv = [sys.executable, "-m", "gen_linker.cli", "adapt", "--kb", str(kb_folder), "--examples", str(examples),
            "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".adapted.adapt-*/kb/entities.jsonl")):   # well into the work
            assert proc.poll() is None and time.monotonic() < deadline, "adapt ended before it could be killed"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert not out.exists()
    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "dev Top-1" in rerun.stdout and "link with: gen-linker link" in rerun.stdout
    assert (out / "linker.yaml").exists() and len((out / "examples.jsonl").read_text().splitlines()) == 64
    res = subprocess.run([sys.executable, "-m", "gen_linker.cli", "link", "--kb", str(out / "kb"), "--linker-config",
                          str(out), "--input", str(SAMPLE / "test.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                          "--no-progress"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "o.jsonl").read_text().splitlines()]
    assert len(rows) == 300 and len({r["id"] for r in rows}) == 300
