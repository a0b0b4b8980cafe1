"""The Ray engine on real Ray clusters: a local one (`ray.init(num_cpus=2)`) and two nodes on
this host (`ray start --head` + `ray start --address`), each linking the toy KB, compared line
for line with the local batch; resume; a worker actor killed mid-run. Every cluster is stopped
by the test that started it (by PID for the `ray start` nodes; `ray stop` would end every Ray
process of the host)."""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

# This module's local cluster gets its own auth token (Ray 2.60 token auth), set before Ray is
# imported (Ray reads its mode once), so that ray.init writes no token file to ~/.ray.
_SAVED_ENV = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_USAGE_STATS_ENABLED")}
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32), RAY_USAGE_STATS_ENABLED="0")
ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from gen_linker.batch import link_to_file  # noqa: E402
from gen_linker.datasets.jsonl import read_mentions  # noqa: E402
from gen_linker.engines.ray_engine import chunk_size_for, link_on_ray  # noqa: E402
from gen_linker.engines.ray_nodes import RayNode, wait_for_nodes  # noqa: E402
from gen_linker.errors import GenLinkerError  # noqa: E402
from gen_linker.loader import load_linker  # noqa: E402
from gen_linker.spec import LinkerSpec  # noqa: E402

from conftest import TEST, TRAIN, write_jsonl  # noqa: E402

BAD_LINES = ['{"id": "bad-json", "text": "no end', "", '{"id": "no-mention", "text": "Paris"}',
             '{"id": "nowhere", "text": "Paris in spring", "mention": "Lyon"}',
             '{"text": "Hilton in Paris", "mention": "Hilton"}']


def mentions_file(path: Path, n: int, bad: bool = True) -> Path:
    """`n` records cycling through the fixtures' mentions (unique ids), with bad lines spread in."""
    base = TEST + TRAIN
    rows: list = []
    for i in range(n):
        m = dict(base[i % len(base)])
        m["id"] = f"r{i}"
        m.pop("gold", None)
        rows.append(m)
        if bad and i % 23 == 7:
            rows.append(BAD_LINES[(i // 23) % len(BAD_LINES)])
    return write_jsonl(path, rows)


def local_batch(kb, spec, input_path: Path, output: Path, chunk_size: int) -> str:
    linker = load_linker(kb, spec)
    link_to_file(linker, read_mentions(input_path), output, chunk_size=chunk_size, progress=False)
    return output.read_text()


def generative_spec(tiny_llm, train_file) -> LinkerSpec:
    return LinkerSpec.from_dict({"linker": "generative", "backend": {"name": "hf", "llm": str(tiny_llm),
                                                                      "dtype": "float32"},
                                 "generative": {"demos": str(train_file), "demo_retriever": "bm25", "num_demos": 2,
                                                "beams": 3}})


@pytest.fixture(scope="module")
def local_cluster():
    """A real local Ray cluster of 2 CPUs in this process, shut down after the module."""
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 2**20,
             _temp_dir=temp, logging_level="ERROR")
    yield
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)
    for key, value in _SAVED_ENV.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_bm25_on_a_local_cluster_equals_the_local_batch(local_cluster, tmp_path, entities_file):
    """Error records included (malformed JSON, a blank line, missing fields, a mention not in
    its text, a record without id), in order, chunk for chunk; a folder of shards reads as
    their concatenation; an existing output is refused without --resume / --overwrite."""
    spec = LinkerSpec.from_dict({"linker": "bm25"})
    source = mentions_file(tmp_path / "in.jsonl", 150)
    expected = local_batch(entities_file, spec, source, tmp_path / "local.jsonl", 16)
    summary = link_on_ray(entities_file, spec, source, tmp_path / "ray.jsonl", workers=2, chunk_size=16,
                          progress=False)
    assert (tmp_path / "ray.jsonl").read_text() == expected
    lines = expected.splitlines()
    assert summary.errors == sum('"error"' in line for line in lines) == 6
    assert summary.linked + summary.nil + summary.errors == len(lines)
    assert summary.duplicates_dropped == 0 and sum(summary.chunks_per_node.values()) == 10

    with pytest.raises(GenLinkerError, match="already exists"):
        link_on_ray(entities_file, spec, source, tmp_path / "ray.jsonl", workers=1, progress=False)

    shards = tmp_path / "shards"
    shards.mkdir()
    good = mentions_file(tmp_path / "good.jsonl", 90, bad=False).read_text().splitlines(keepends=True)
    for i in range(3):
        (shards / f"part-{i}.jsonl").write_text("".join(good[30 * i: 30 * (i + 1)]))
    expected = local_batch(entities_file, spec, tmp_path / "good.jsonl", tmp_path / "local_good.jsonl", 64)
    link_on_ray(entities_file, spec, shards, tmp_path / "sharded.jsonl", workers=2, progress=False)
    assert (tmp_path / "sharded.jsonl").read_text() == expected


def test_generative_float32_on_ray_equals_the_local_batch(local_cluster, tmp_path, entities_file, tiny_llm,
                                                          train_file):
    """The generative linker (tiny Llama, float32): the same output bytes as the local batch,
    also when chunks are linked by different actors."""
    spec = generative_spec(tiny_llm, train_file)
    source = mentions_file(tmp_path / "in.jsonl", 60)
    expected = local_batch(entities_file, spec, source, tmp_path / "local.jsonl", 8)
    summary = link_on_ray(entities_file, spec, source, tmp_path / "ray.jsonl", workers=2, chunk_size=8,
                          progress=False)
    assert (tmp_path / "ray.jsonl").read_text() == expected
    assert summary.linked == 60 and summary.errors == 3
    assert len(summary.actors_used) == 2                       # both actors linked chunks
    assert chunk_size_for(spec) == 64     # what the CLI uses: the local batch's chunk (2 x hf batch, at least 64)


def test_resume_on_ray_continues_without_duplicates(local_cluster, tmp_path, entities_file):
    """A run killed after 37 lines (and half a line) resumes on Ray: the same file as one run,
    the first 37 records not linked again; resuming another input is refused."""
    spec = LinkerSpec.from_dict({"linker": "exact"})
    source = mentions_file(tmp_path / "in.jsonl", 100)
    expected = local_batch(entities_file, spec, source, tmp_path / "local.jsonl", 64)
    lines = expected.splitlines(keepends=True)
    out = tmp_path / "ray.jsonl"
    out.write_text("".join(lines[:37]) + lines[37][:25])
    summary = link_on_ray(entities_file, spec, source, out, workers=2, chunk_size=10, resume=True, progress=False)
    assert out.read_text() == expected
    assert summary.resumed == 37 and summary.linked + summary.nil + summary.errors == len(lines) - 37

    other = mentions_file(tmp_path / "other.jsonl", 60, bad=False)
    rows = other.read_text().splitlines(keepends=True)
    other.write_text("".join(rows[1:] + rows[:1]))
    with pytest.raises(GenLinkerError, match="cannot resume"):
        link_on_ray(entities_file, spec, other, out, workers=1, resume=True, progress=False)


def _actor_processes() -> list:
    """The linker actors of this process's Ray cluster: descendants of this process."""
    found = []
    for p in psutil.Process().children(recursive=True):
        try:
            if "LinkActor" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:
            pass
    return found


def test_killing_a_worker_actor_mid_run_loses_and_repeats_nothing(local_cluster, tmp_path, entities_file, tiny_llm,
                                                                  train_file):
    """SIGKILL to one of the two linker actors while chunks are in flight: Ray restarts it and
    retries its task; the output is still every record exactly once, equal to the local batch."""
    spec = generative_spec(tiny_llm, train_file)
    source = mentions_file(tmp_path / "in.jsonl", 1000, bad=False)
    expected = local_batch(entities_file, spec, source, tmp_path / "local.jsonl", 8)
    out = tmp_path / "ray.jsonl"
    killed: dict = {}

    def kill_one() -> None:
        """As soon as the first chunk is written (124 more to go, two in flight per actor),
        SIGKILL one linker actor: it holds a chunk being linked and one queued."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if out.exists() and out.stat().st_size > 0:
                actors = _actor_processes()
                if actors:
                    killed.update(pid=actors[0].pid, lines_before=out.read_text().count("\n"))
                    os.kill(actors[0].pid, signal.SIGKILL)
                    return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    summary = link_on_ray(entities_file, spec, source, out, workers=2, chunk_size=8, progress=False)
    killer.join(5)
    assert killed, "no linker actor was found to kill"
    assert killed["lines_before"] < 1000                      # killed mid-run
    text = out.read_text()
    ids = [json.loads(line)["id"] for line in text.splitlines()]
    assert ids == [f"r{i}" for i in range(1000)]              # every record exactly once, in order
    assert text == expected
    assert summary.linked + summary.nil == 1000


def test_two_node_cluster_through_the_cli(tmp_path, entities_file, tiny_llm):
    """`ray start --head` on this host plus a second node joining it, 1 CPU each; `gen-linker
    link --engine ray --address HEAD --workers 2` (the generative linker, tiny Llama, float32)
    links on both nodes (two actors of 0.9 CPU cannot share one) and writes what the local batch
    writes. Both nodes are stopped by PID."""
    source = mentions_file(tmp_path / "in.jsonl", 640)                  # 10 chunks of 64 mentions
    flags = ["--linker", "generative", "--llm", str(tiny_llm), "--dtype", "float32", "--num-demos", "0",
             "--beams", "3"]
    spec = LinkerSpec.from_dict({"linker": "generative", "backend": {"llm": str(tiny_llm), "dtype": "float32"},
                                 "generative": {"num_demos": 0, "beams": 3}})
    expected = local_batch(entities_file, spec, source, tmp_path / "local.jsonl", chunk_size_for(spec))
    head = RayNode(num_cpus=1)
    worker = None
    try:
        head.start()
        worker = head.join(num_cpus=1).start()
        wait_for_nodes(head, 2)
        node_pids = {p.pid for node in (head, worker) for p in psutil.Process(node.proc.pid).children(recursive=True)}
        result = subprocess.run(
            [sys.executable, "-m", "gen_linker.cli", "link", "--engine", "ray", "--address", head.address,
             "--workers", "2", "--kb", str(entities_file), "--input", str(source), "--output",
             str(tmp_path / "ray.jsonl"), "--no-progress", *flags],
            capture_output=True, text=True, timeout=600, env={**os.environ, **head.driver_env})
        assert result.returncode == 0, result.stderr[-3000:]
        summary = [line for line in result.stderr.splitlines() if line.startswith(str(tmp_path / "ray.jsonl"))]
        assert summary and "chunks linked by 2 actor process(es) on 2 node(s)" in summary[0], result.stderr[-3000:]
        assert (tmp_path / "ray.jsonl").read_text() == expected
    finally:
        if worker is not None:
            worker.stop()
        head.stop()
    assert node_pids and not [pid for pid in node_pids if psutil.pid_exists(pid)
                              and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
