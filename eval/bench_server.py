"""`gen-linker serve` under load on loopback: latency, throughput vs the offline batch CLI,
and every request answered exactly once, including while the queue overflows.

    python eval/bench_server.py [--mentions 200] [--clients 1,4,16,64] [--linker-args "..."]

One run, one linker (the flags in --linker-args; default: the packaged default linker with
WikiMEL train as its labelled pool, as the README's `link`), the seeded sample of
WikiMEL test mentions (seed 0, as the suites):
1. the offline baseline: what `gen-linker link` does (`cli.make_linker`, `batch.link_to_file`
   with the CLI's chunk size) on the sample, timed in this process: mentions/s;
2. `gen-linker serve` started as a subprocess on 127.0.0.1 (stopped by its pid), warmed up,
   then for each client count: that many concurrent clients (asyncio + httpx, one connection
   each) send single-mention requests until --mentions requests are answered: throughput,
   ratio to the offline mentions/s, p50/p95/p99 latency, the server's mean batch size;
3. overflow: a second server with --overflow-queue (a tiny queue) and the most clients, no
   retries: 503s (with Retry-After) are counted, and every request id must come back exactly
   once (a 200 whose body carries the id, or a 503), none lost, none duplicated.
Every request loop is bounded in count and in time (--level-timeout). The load generator
shares the machine's cores with the server: the ratios are conservative. Writes
eval/results/server.md and .json (or --name.md/json).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from gen_linker import datasets
from gen_linker.kb import write_entities
from gen_linker.server.batching import MAX_WAIT_MS
from machine import machine_line
from wikimel import WIKIMEL, seeded_sample

DEFAULT_LINKER = f"--demos {WIKIMEL} --demos-split train"


def write_inputs(folder: Path, n: int) -> tuple[Path, Path, list[dict]]:
    ds = datasets.load(WIKIMEL, "melbench", "test")
    sample = seeded_sample(ds.valid, n)
    kb = folder / "kb.jsonl"
    write_entities(ds.kb, kb)
    rows = [{"id": m.id, "text": m.text, "mention": m.mention, "start": m.start, "end": m.end} for m in sample]
    mentions = folder / "mentions.jsonl"
    mentions.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return kb, mentions, rows


def offline(kb: Path, mentions: Path, linker_args: list[str], folder: Path) -> dict:
    """The batch CLI's linking, timed without start-up: mentions/s."""
    from gen_linker.batch import link_to_file
    from gen_linker.cli import _chunk_size, build_parser, make_linker
    from gen_linker.datasets.jsonl import read_mentions
    from gen_linker.kb import KnowledgeBase

    out = folder / "offline.jsonl"
    args = build_parser().parse_args(["link", "--kb", str(kb), "--input", str(mentions), "--output", str(out),
                                      "--overwrite", "--no-progress", *linker_args])
    n = sum(1 for _ in mentions.open())
    t0 = time.perf_counter()
    linker = make_linker(args, KnowledgeBase.open(kb), n)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = link_to_file(linker, read_mentions(mentions), out, chunk_size=_chunk_size(linker), overwrite=True,
                           total=n, progress=False)
    dt = time.perf_counter() - t0
    del linker
    gc.collect()
    return {"mentions": n, "seconds": dt, "mentions_per_s": n / dt, "load_s": load_s, "errors": summary.errors}


class Server:
    """`gen-linker serve` in a subprocess on a free loopback port; stopped by its pid."""

    def __init__(self, kb: Path, linker_args: list[str], options: list[str], log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        cmd = [sys.executable, "-m", "gen_linker.cli", "serve", "--kb", str(kb), "--host", "127.0.0.1",
               "--port", str(self.port), "--log-level", "warning", "--no-progress", *options, *linker_args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)

    def wait_ready(self, timeout: float) -> float:
        import httpx

        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gen-linker serve exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.base + "/health/ready", timeout=2).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gen-linker serve not ready after {timeout} s; see {self.log.name}")

    def stats(self) -> dict:
        import httpx

        return httpx.get(self.base + "/v1/stats", timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


async def load(base: str, rows: list[dict], clients: int, requests: int, prefix: str, timeout: float) -> dict:
    """`clients` concurrent clients send `requests` single-mention requests (ids prefix-k);
    every answer is checked against the id it should carry."""
    import httpx

    sent: list[str] = []
    answers: Counter = Counter()
    wrong: list[str] = []
    latencies: list[float] = []
    statuses: Counter = Counter()
    retry_after_missing = 0
    counter = iter(range(requests))
    deadline = time.perf_counter() + timeout

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal retry_after_missing
        for k in counter:
            if time.perf_counter() > deadline:
                return
            rid = f"{prefix}-{k}"
            row = dict(rows[k % len(rows)], id=rid)
            sent.append(rid)
            t0 = time.perf_counter()
            try:
                r = await c.post("/v1/link", json={"mentions": [row]}, headers={"X-Request-ID": rid})
            except httpx.HTTPError as exc:
                statuses[f"transport error ({type(exc).__name__})"] += 1
                continue
            ms = (time.perf_counter() - t0) * 1000
            statuses[r.status_code] += 1
            echoed = r.headers.get("x-request-id")
            if r.status_code == 200:
                results = r.json()["results"]
                ok = echoed == rid and len(results) == 1 and results[0].get("id") == rid
                latencies.append(ms)
            else:
                ok = echoed == rid
                if r.status_code == 503 and "retry-after" not in r.headers:
                    retry_after_missing += 1
            if ok:
                answers[rid] += 1
            else:
                wrong.append(rid)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=base, timeout=timeout, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) if latencies else np.array([np.nan])
    return {"clients": clients, "sent": len(sent), "answered_once": sum(1 for r in sent if answers[r] == 1),
            "lost": sum(1 for r in sent if answers[r] == 0 and r not in wrong),
            "duplicated": sum(1 for r in sent if answers[r] > 1), "wrong": len(wrong),
            "statuses": {str(k): v for k, v in statuses.items()}, "ok": statuses[200], "rejected_503": statuses[503],
            "retry_after_missing": retry_after_missing, "seconds": wall,
            "mentions_per_s": statuses[200] / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)),
            "p99_ms": float(np.percentile(lat, 99)), "stopped_early": len(sent) < requests}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mentions", type=int, default=200, help="sample size = requests per client level (default 200)")
    ap.add_argument("--clients", default="1,4,16,64", help="client counts (default 1,4,16,64)")
    ap.add_argument("--linker-args", default=DEFAULT_LINKER, help=f"linker flags (default: {DEFAULT_LINKER!r})")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS)
    ap.add_argument("--overflow-queue", type=int, default=4, help="--max-queue of the overflow server (default 4)")
    ap.add_argument("--warmup", type=int, default=8, help="requests before measuring (default 8)")
    ap.add_argument("--level-timeout", type=float, default=900.0, help="seconds one level may take (default 900)")
    ap.add_argument("--ready-timeout", type=float, default=600.0)
    ap.add_argument("--name", default="server", help="results file name (default server)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    linker_args = shlex.split(args.linker_args)
    levels = [int(c) for c in args.clients.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="gen-linker-bench-server-"))
    kb, mentions, rows = write_inputs(folder, args.mentions)
    print(f"offline baseline: {len(rows)} mentions ...", file=sys.stderr, flush=True)
    base = offline(kb, mentions, linker_args, folder)
    print(f"  {base['mentions_per_s']:.2f} mentions/s", file=sys.stderr, flush=True)
    options = ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
    results: list[dict] = []
    server = Server(kb, linker_args, options + ["--max-queue", str(max(1024, 2 * max(levels)))],
                    folder / "server.log")
    try:
        ready_s = server.wait_ready(args.ready_timeout)
        asyncio.run(load(server.base, rows, 1, args.warmup, "warmup", args.level_timeout))
        for clients in levels:
            before = server.stats()
            row = asyncio.run(load(server.base, rows, clients, args.mentions, f"c{clients}", args.level_timeout))
            after = server.stats()
            batches = after["batches"] - before["batches"]
            row["mean_batch"] = (after["mentions"] - before["mentions"]) / batches if batches else 0.0
            row["vs_offline"] = row["mentions_per_s"] / base["mentions_per_s"]
            results.append(row)
            print(f"  {clients} clients: {row['mentions_per_s']:.2f} mentions/s ({row['vs_offline']:.2f}x offline), "
                  f"p50 {row['p50_ms']:.0f} ms, p99 {row['p99_ms']:.0f} ms", file=sys.stderr, flush=True)
    finally:
        server.stop()
    overflow_clients = max(levels)
    server = Server(kb, linker_args, options + ["--max-queue", str(args.overflow_queue)], folder / "overflow.log")
    try:
        server.wait_ready(args.ready_timeout)
        overflow = asyncio.run(load(server.base, rows, overflow_clients, args.mentions, "overflow",
                                    args.level_timeout))
        overflow["server_rejected"] = server.stats()["rejected"]
        print(f"  overflow: {overflow['ok']} answered, {overflow['rejected_503']} refused (503), "
              f"{overflow['lost']} lost, {overflow['duplicated']} duplicated", file=sys.stderr, flush=True)
    finally:
        server.stop()

    meta = {"command": "python eval/bench_server.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
            "machine": machine_line(), "date": time.strftime("%Y-%m-%d"), "linker_args": args.linker_args,
            "mentions": len(rows), "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms,
            "server_ready_s": ready_s}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "offline": base, "levels": results,
                                                            "overflow": overflow}, indent=2) + "\n")
    all_once = all(r["answered_once"] == r["sent"] for r in [*results, overflow])
    lines = ["# `gen-linker serve` under load (loopback): latency, throughput vs the offline batch CLI", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- linker flags: `{args.linker_args}`; {len(rows)} WikiMEL test mentions (seeded sample), one "
             f"mention per request; server `--max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms:g}`, "
             f"ready {ready_s:.1f} s after start",
             f"- offline baseline (`gen-linker link`'s batch loop, same linker, same mentions, same run): "
             f"{base['mentions_per_s']:.2f} mentions/s",
             "- the load generator (asyncio + httpx) runs on the same cores as the server", "",
             "| clients | requests | answered | mentions/s | vs offline | mean batch | p50 ms | p95 ms | p99 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['clients']} | {r['sent']} | {r['ok']} | {r['mentions_per_s']:.2f} | "
                     f"{r['vs_offline']:.2f}x | {r['mean_batch']:.1f} | {r['p50_ms']:.0f} | {r['p95_ms']:.0f} | "
                     f"{r['p99_ms']:.0f} |")
    lines += ["", f"Overflow: {overflow_clients} clients against `--max-queue {args.overflow_queue}`, no retries: "
              f"{overflow['sent']} requests, {overflow['ok']} answered (200), {overflow['rejected_503']} refused "
              f"(503, Retry-After missing on {overflow['retry_after_missing']}), {overflow['lost']} lost, "
              f"{overflow['duplicated']} duplicated, {overflow['wrong']} with a wrong id; statuses "
              f"{overflow['statuses']}.", "",
              f"Every request id answered exactly once in every phase: **{'yes' if all_once else 'NO'}**."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all_once else 1


if __name__ == "__main__":
    raise SystemExit(main())
