"""Batch linking on Ray: `gen-linker link ... --engine ray [--address auto|HOST:PORT] [--workers N]`.

One process stops being enough at millions of mentions; Ray spreads the linking over a pool of
actors on this machine or a cluster, and this module adds only what gen-linker's batch promises
on top of it:

- **Reading** is a Ray Data datasource (`ray_input.MentionChunks`) over the input JSONL (a
  file, or a folder of `.jsonl` shards, in name order). Its read tasks run on the driver's
  node, so the input need only be there; each parses its file with the local batch's own
  reader (bad lines become the same error records) and cuts it into the local batch's chunks
  (`chunk_size` mentions each, error records riding along), one row per chunk.
- **Linking** is `map_batches` over an actor pool (`ActorPoolStrategy`): each actor builds its
  linker once with `load_linker(kb, spec)` (the spec travels as a dict, with absolute paths; the
  KB folder is read from a path every node sees) and links one chunk per call with the local
  batch's `_link_chunk`, so a chunk's output lines are those the local batch writes.
- **Writing** happens in the driver, in input order: chunks come back in any order and wait in
  a small heap until the next one due arrives; each is written, flushed and fsynced. A chunk
  seen twice (a task Ray retried after its actor was killed) is dropped, so no record is
  written twice, and a missing one is an error at the end, never a silent gap.
- **Resume** (`--resume`) is the local batch's: the complete lines of the output are checked
  against the first input records, a partial last line is cut, and the read tasks skip what
  is done.

Ray Data's pool actors restart when killed (`max_restarts=-1`) and their tasks are retried
(`max_task_retries=-1`); a restarted actor loads its linker again. Every actor of the pool is
started before linking begins (`wait_for_min_actors_s`), so a short run is shared too and a
pool the cluster cannot place fails with a message instead of waiting. CPU accounting: actors get
fractional CPUs so that the read task always has room (`ray.init(num_cpus=2)` with two 1-CPU
actors would leave the reader unscheduled forever). On a cluster with GPUs and the vllm
backend, each actor holds one GPU and the pool has one actor per GPU.
"""
from __future__ import annotations

import heapq
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from ..batch import BatchSummary, _link_chunk, completed_ids
from ..errors import GenLinkerError, ResumeError
from ..schema import Mention
from ..spec import LinkerSpec

from .ray_input import MentionChunks, chunk_size_for, count_records, decode_record, input_files

try:
    import ray
    from ray.data import ActorPoolStrategy
except ImportError:  # the [ray] extra is not installed: link_on_ray says how to get it
    ray = None

RAY_VERSION = "2.60.0"
READ_CPUS = 0.1            # CPU reserved for a read task (parsing JSONL is cheap)
# How long the pool's actors may take to start (load their linker) before the run fails:
# $GEN_LINKER_RAY_START_TIMEOUT seconds, default 15 minutes (large models on a cold disk).
ACTOR_START_TIMEOUT_S = int(os.environ.get("GEN_LINKER_RAY_START_TIMEOUT", "900"))
# Environment variables the driver hands to its actors (model cache, offline mode, dtype).
FORWARDED_ENV_PREFIXES = ("GEN_LINKER_", "HF_", "TRANSFORMERS_", "SENTENCE_TRANSFORMERS_HOME", "TORCH_HOME",
                          "VLLM_", "TOKENIZERS_PARALLELISM")


@dataclass
class RaySummary(BatchSummary):
    """The batch summary, plus where the chunks were linked and what Ray repeated."""

    workers: int = 0
    chunks_per_node: dict[str, int] = field(default_factory=dict)
    actors_used: set[str] = field(default_factory=set)   # node:pid of each actor that linked a chunk
    duplicates_dropped: int = 0     # chunks delivered again (a retried task) and not written again

    def line(self) -> str:
        return super().line() + (f" (Ray: {self.workers} worker(s); chunks linked by {len(self.actors_used)} actor "
                                 f"process(es) on {len(self.chunks_per_node)} node(s))")


@dataclass
class RayPlan:
    """How a run is laid out on the cluster: pool size and each actor's resources."""

    workers: int
    num_cpus: float
    num_gpus: float
    threads: int


# ----------------------------------------------------------------------------- actors
class LinkActor:
    """One actor of the pool: its own linker, built once, linking one chunk per row."""

    def __init__(self, kb: str, spec: dict, threads: int, n_mentions: int | None) -> None:
        import torch

        from ..loader import load_linker

        torch.set_num_threads(max(1, threads))
        self.linker = load_linker(kb, LinkerSpec.from_dict(spec), n_mentions=n_mentions)
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: dict) -> dict:
        out: dict[str, list] = {k: [] for k in ("first", "count", "text", "linked", "nil", "errors",
                                                 "image_errors", "messages", "node", "actor")}
        for first, records in zip(batch["first"], batch["records"]):
            chunk = [(int(first) + i, decode_record(r)) for i, r in enumerate(json.loads(str(records)))]
            summary = BatchSummary()
            lines = _link_chunk(self.linker, chunk, summary)
            out["first"].append(int(first))
            out["count"].append(len(chunk))
            out["text"].append("".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in lines))
            out["linked"].append(summary.linked)
            out["nil"].append(summary.nil)
            out["errors"].append(summary.errors)
            out["image_errors"].append(summary.image_errors)
            out["messages"].append(json.dumps(summary.error_messages[:10]))
            out["node"].append(self.node)
            out["actor"].append(f"{self.node}:{os.getpid()}")
        return out


# ----------------------------------------------------------------------------- output
class OrderedWriter:
    """Writes chunks to the output in input order, each once: early ones wait in a heap, a
    repeated one (a retried task) is dropped."""

    def __init__(self, out, next_index: int, bar) -> None:
        self.out, self.next, self.bar = out, next_index, bar
        self.pending: list[tuple[int, int, str]] = []
        self.waiting: set[int] = set()
        self.duplicates = 0

    def put(self, first: int, count: int, text: str) -> bool:
        """Queue a chunk; False if it was written or queued before (and is dropped)."""
        if first < self.next or first in self.waiting:
            self.duplicates += 1
            return False
        heapq.heappush(self.pending, (first, count, text))
        self.waiting.add(first)
        while self.pending and self.pending[0][0] == self.next:
            first, count, text = heapq.heappop(self.pending)
            self.waiting.discard(first)
            self.out.write(text)
            self.out.flush()
            os.fsync(self.out.fileno())
            self.next += count
            self.bar.update(count)
        return True


# ------------------------------------------------------------------------------ driver
def link_on_ray(kb: str | Path, spec: LinkerSpec, input: str | Path, output: str | Path, *,
                address: str | None = None, workers: int | None = None, resume: bool = False,
                overwrite: bool = False, chunk_size: int | None = None, progress: bool = True) -> RaySummary:
    """Link the JSONL `input` (a file or a folder of shards) into `output` on Ray: the output
    the local `link_to_file` writes, resumable the same way. Joins the running Ray session if
    this process has one, else `address` (auto, HOST:PORT), else starts Ray on this machine
    (and stops it at the end). `workers`: actors (default: one per CPU of the cluster, or per
    GPU with the vllm backend on GPUs)."""
    if ray is None:
        raise GenLinkerError(f"--engine ray needs Ray: pip install 'gen-linker[ray]' (ray[data]=={RAY_VERSION})")
    from ..loader import check_spec

    kb, output = Path(kb).resolve(), Path(output)
    if not kb.exists():
        raise GenLinkerError(f"knowledge base {kb} does not exist")
    spec = absolute_paths(spec)
    check_spec(spec)
    files = input_files(Path(input))
    counts = [count_records(f) for f in files]
    starts = [1 + sum(counts[:i]) for i in range(len(files))]
    total = sum(counts)
    done = _resume_point(output, files, resume, overwrite)
    chunk_size = chunk_size or chunk_size_for(spec)

    started = not ray.is_initialized()
    if started:
        options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
        if address is None:
            options["include_dashboard"] = False
        ray.init(address=address, **options)
    try:
        plan = plan_pool(spec, workers)
        summary = _run(kb, spec, files, counts, starts, total, done, output, chunk_size, plan, progress)
    finally:
        if started:
            ray.shutdown()
    return summary


def absolute_paths(spec: LinkerSpec) -> LinkerSpec:
    """The spec with its relative paths made absolute: actors do not run in this directory."""
    return LinkerSpec.from_dict(spec.to_dict(), base_dir=os.getcwd())


def _resume_point(output: Path, files: list[Path], resume: bool, overwrite: bool) -> int:
    """How many records the output already answers (checked against the input, as the local
    batch does); the output is emptied or cut to its complete lines."""
    from ..datasets.jsonl import read_mentions

    if not (output.exists() and output.stat().st_size > 0):
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("")
        return 0
    if not resume:
        if not overwrite:
            raise GenLinkerError(f"output {output} already exists: pass --resume to continue it "
                                 "or --overwrite to replace it")
        output.write_text("")
        return 0
    done_ids = completed_ids(output)
    records = (rec for f in files for rec in read_mentions(f))
    for index, rec in enumerate(islice(records, len(done_ids)), 1):
        rid = rec.id if isinstance(rec, Mention) else (rec.record_id or str(index))
        if rid != done_ids[index - 1]:
            raise ResumeError(f"cannot resume: output line {index} answers record {done_ids[index - 1]!r} "
                              f"but input record {index} is {rid!r}; is it the same input?")
    return len(done_ids)


def plan_pool(spec: LinkerSpec, workers: int | None) -> RayPlan:
    """Pool size and per-actor resources from the cluster's: GPUs for the vllm backend when the
    cluster has them (one actor per GPU), else CPUs shared out, READ_CPUS left for reading."""
    resources = ray.cluster_resources()
    cpus, gpus = float(resources.get("CPU", 1)), int(resources.get("GPU", 0))
    node_cpus = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=cpus)
    if spec.backend.name == "vllm" and gpus > 0 and spec.linker in ("generative", "pipeline", "fused"):
        n = workers or gpus
        return RayPlan(workers=n, num_cpus=min(1.0, max(0.1, (cpus - READ_CPUS) / n)), num_gpus=1, threads=1)
    n = workers or max(1, int(cpus))
    if n < 1:
        raise GenLinkerError(f"--workers must be at least 1, not {n}")
    per_actor = min(node_cpus - READ_CPUS, (cpus - READ_CPUS) / n)
    if per_actor <= 0:
        raise GenLinkerError(f"the Ray cluster has {cpus:g} CPU(s): too few for {n} linker actors and a reader")
    return RayPlan(workers=n, num_cpus=round(per_actor, 3), num_gpus=0, threads=max(1, math.floor(per_actor)))


def forwarded_env() -> dict[str, str]:
    """The driver's settings that the actors need too (cache folder, offline mode, dtype)."""
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES)}


def _run(kb: Path, spec: LinkerSpec, files: list[Path], counts: list[int], starts: list[int], total: int,
         done: int, output: Path, chunk_size: int, plan: RayPlan, progress: bool) -> RaySummary:
    from tqdm.auto import tqdm

    logging.getLogger("ray.data").setLevel(logging.WARNING)   # our bar and summary say what matters
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    # Start every actor of the pool before linking (else the first one ready takes all the work
    # of a short run), and fail with a message, not hang, where the cluster cannot place them.
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    ctx.execution_options.preserve_order = False   # OrderedWriter restores the order
    summary = RaySummary(resumed=done, workers=plan.workers)
    bar = tqdm(total=total, initial=done, desc=f"linking ({spec.linker}, Ray x{plan.workers})", unit="mention",
               disable=not progress, dynamic_ncols=True, mininterval=1.0)
    if done >= total:
        bar.close()
        return summary
    source = MentionChunks([(str(f), n, s) for f, n, s in zip(files, counts, starts)], done, chunk_size)
    ds = ray.data.read_datasource(source, num_cpus=READ_CPUS)
    linked = ds.map_batches(
        LinkActor, batch_size=1, batch_format="numpy",
        fn_constructor_kwargs={"kb": str(kb), "spec": spec.to_dict(), "threads": plan.threads,
                               "n_mentions": total - done},
        compute=ActorPoolStrategy(size=plan.workers), num_cpus=plan.num_cpus, num_gpus=plan.num_gpus or None,
        runtime_env={"env_vars": forwarded_env()})   # Ray Data: max_restarts=-1, max_task_retries=-1
    with output.open("a", encoding="utf-8") as out:
        writer = OrderedWriter(out, done + 1, bar)
        try:
            for row in linked.iter_rows():
                if writer.put(int(row["first"]), int(row["count"]), str(row["text"])):
                    summary.linked += int(row["linked"])
                    summary.nil += int(row["nil"])
                    summary.errors += int(row["errors"])
                    summary.image_errors += int(row["image_errors"])
                    summary.error_messages.extend(json.loads(str(row["messages"])))
                    node = str(row["node"])
                    summary.chunks_per_node[node] = summary.chunks_per_node.get(node, 0) + 1
                    summary.actors_used.add(str(row["actor"]))
        except ray.exceptions.GetTimeoutError as exc:
            raise GenLinkerError(
                f"the Ray cluster did not start {plan.workers} linker actor(s) of {plan.num_cpus:g} CPU"
                + (f" and {plan.num_gpus:g} GPU" if plan.num_gpus else "")
                + f" each within {ACTOR_START_TIMEOUT_S}s (too few free resources, or a linker that cannot "
                "load on the workers: see the Ray logs); fewer --workers may fit") from exc
        except ray.exceptions.RayError as exc:
            raise GenLinkerError(f"linking on Ray failed (rerun with --resume to continue): {exc}") from exc
    bar.close()
    summary.duplicates_dropped = writer.duplicates
    if writer.next != total + 1 or writer.pending:
        raise GenLinkerError(f"linking on Ray ended with records {writer.next}..{total} unwritten "
                             f"({len(writer.pending)} chunk(s) waiting); rerun with --resume")
    return summary


def link_with_ray(args) -> int:
    """`gen-linker link --engine ray`: the linker flags as a spec, linked on Ray."""
    from ..linker_flags import spec_from_args

    if getattr(args, "detect", False):
        raise GenLinkerError("--detect is not supported with --engine ray: detect the mentions first "
                             "(gen-linker link --detect writes them), then link them on Ray")
    if args.format not in ("auto", "jsonl"):
        raise GenLinkerError(f"--engine ray reads JSONL mentions, not --format {args.format}: convert {args.input} "
                             "first with gen-linker convert")
    spec = spec_from_args(args)
    if getattr(args, "save_linker", None):
        from ..loader import save_linker

        folder = save_linker(spec, args.save_linker)
        print(f"saved linker folder {folder} (load it with --linker-config {folder})", file=sys.stderr)
    t0 = time.perf_counter()
    summary = link_on_ray(args.kb, spec, args.input, args.output, address=args.address, workers=args.workers,
                          resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"{args.output}: {summary.line()} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    for msg in summary.error_messages[:10]:
        print(f"  error: {msg}", file=sys.stderr)
    return 0
