"""Ray benchmark: the same WikiMEL mentions through the local batch and through `--engine ray`
with 1 and 2 workers on this machine, for the generative linker and for BM25.

    python eval/bench_ray.py [--mentions 512] [--linkers generative,bm25] [--dtypes float32,bfloat16]
    # smoke test: python eval/bench_ray.py --mentions 12 --num-demos 2 --dtypes float32 --out /tmp/rb

Every run is the `gen-linker link` command a user types, timed from start to exit (model loads
and actor start-up included): the local batch with one torch thread (OMP_NUM_THREADS=1), the
local batch with two (what one process gets from this machine without Ray), and Ray with 1 and
2 workers (one torch thread each) on a 2-CPU Ray head started once for the benchmark (so Ray's
own start-up is not in the times; it is reported apart). Generative: packaged SmolLM2-135M, hf
backend, beam 5, 16 SimCSE demonstrations from WikiMEL train, KB = the 18,880 WikiMEL
entities; BM25 over names on the same KB. Caches (trie, embeddings) are built by an untimed
warm-up run first.

Reported: wall seconds, mentions/s, Ray 2 workers / Ray 1 worker (goal >= 1.5x for the
generative linker), Ray 1 worker / local 1 thread (Ray's overhead), and the output lines equal
to the local batch's with one thread, as each Ray worker has (float32: all; bf16: the share of
equal answers; the local batch with two threads differs in the last bits of float32 scores
too, as summation order follows the thread count). Writes
eval/results/ray.md and .json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_line  # noqa: E402
from wikimel import WIKIMEL, seeded_sample  # noqa: E402


def link(kb: Path, mentions: Path, output: Path, flags: list[str], threads: int, extra: list[str],
         env_extra: dict | None = None) -> dict:
    """One `gen-linker link` run, timed; its output lines."""
    output.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **(env_extra or {})}
    cmd = [sys.executable, "-m", "gen_linker.cli", "link", "--kb", str(kb), "--input", str(mentions),
           "--output", str(output), "--no-progress", *flags, *extra]
    t0 = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stderr[-3000:]}")
    return {"wall_s": wall, "lines": output.read_text().splitlines(), "stderr_tail": result.stderr.strip()[-300:]}


def same(a: list[str], b: list[str]) -> dict:
    answers = lambda lines: [json.loads(x).get("entity_id") for x in lines]  # noqa: E731
    return {"identical_lines": sum(x == y for x, y in zip(a, b)), "equal_answers": sum(
        x == y for x, y in zip(answers(a), answers(b))), "lines": len(a)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mentions", type=int, default=512, help="WikiMEL test mentions (seeded sample); 512 = 8 "
                    "chunks of 64, the local batch's, shared evenly by 2 workers")
    ap.add_argument("--linkers", default="generative,bm25")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="generative linker dtypes (bm25 has none)")
    ap.add_argument("--num-demos", type=int, default=16)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "gen_linker_bench_ray")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()

    from gen_linker import datasets
    from gen_linker.engines.ray_nodes import RayNode

    args.work.mkdir(parents=True, exist_ok=True)
    test = datasets.load(WIKIMEL, "melbench", "test")
    kb = args.work / "kb"
    if not (kb / "entities.jsonl").exists():
        test.kb.save(kb)
    mentions = args.work / "mentions.jsonl"
    mentions.write_text("".join(json.dumps(m.to_dict()) + "\n" for m in seeded_sample(test.valid, args.mentions)))
    warm = args.work / "warm.jsonl"
    warm.write_text("".join(mentions.read_text().splitlines(keepends=True)[:2]))

    configs = []
    for name in args.linkers.split(","):
        if name == "generative":
            for dtype in args.dtypes.split(","):
                configs.append((f"generative {dtype}", ["--linker", "generative", "--dtype", dtype, "--beams",
                                                         str(args.beams), "--num-demos", str(args.num_demos),
                                                         "--demos", str(WIKIMEL), "--demos-format", "melbench",
                                                         "--demos-split", "train"]))
        else:
            configs.append((name, ["--linker", name]))

    rows = []
    t0 = time.perf_counter()
    head = RayNode(num_cpus=2, object_store_mb=500).start()
    ray_start_s = time.perf_counter() - t0
    try:
        for label, flags in configs:
            print(f"== {label}", flush=True)
            link(kb, warm, args.work / "warm-out.jsonl", flags, 2, [])          # builds the caches, untimed
            runs = {
                "local, 1 thread": link(kb, mentions, args.work / "local1.jsonl", flags, 1, []),
                "local, 2 threads": link(kb, mentions, args.work / "local2.jsonl", flags, 2, []),
                "Ray, 1 worker": link(kb, mentions, args.work / "ray1.jsonl", flags, 1,
                                      ["--engine", "ray", "--address", head.address, "--workers", "1"],
                                      head.driver_env),
                "Ray, 2 workers": link(kb, mentions, args.work / "ray2.jsonl", flags, 1,
                                       ["--engine", "ray", "--address", head.address, "--workers", "2"],
                                       head.driver_env),
            }
            base = runs["local, 1 thread"]
            row = {"linker": label, "mentions": args.mentions, "runs": {}}
            for run, r in runs.items():
                row["runs"][run] = {"wall_s": r["wall_s"], "mentions_per_s": args.mentions / r["wall_s"],
                                    **same(base["lines"], r["lines"]), "summary": r["stderr_tail"]}
            row["ray_scaling_2_vs_1"] = runs["Ray, 1 worker"]["wall_s"] / runs["Ray, 2 workers"]["wall_s"]
            row["ray1_vs_local1_time"] = runs["Ray, 1 worker"]["wall_s"] / base["wall_s"]
            row["ray2_vs_local2_speed"] = runs["local, 2 threads"]["wall_s"] / runs["Ray, 2 workers"]["wall_s"]
            rows.append(row)
            print(json.dumps(row, indent=1), flush=True)
    finally:
        head.stop()
    meta = {"command": "python eval/bench_ray.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "ray_head_start_s": ray_start_s}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ray.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "ray.md").write_text(table(meta, rows))
    print(table(meta, rows))
    return 0


def table(meta: dict, rows: list[dict]) -> str:
    lines = ["# Ray engine: local batch vs `--engine ray` with 1 and 2 workers (this machine)", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- times: the whole `gen-linker link` command (model loads and actor start-up included); the Ray head "
             f"was started once beforehand ({meta['ray_head_start_s']:.1f} s, not included)", "",
             "| linker | run | wall s | mentions/s | lines equal to local 1 thread | equal answers |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        for run, x in r["runs"].items():
            lines.append(f"| {r['linker']} | {run} | {x['wall_s']:.1f} | {x['mentions_per_s']:.2f} | "
                         f"{x['identical_lines']}/{x['lines']} | {x['equal_answers']}/{x['lines']} |")
    lines += ["", "| linker | Ray 2 workers vs 1 (speed-up; goal >= 1.5x generative) | Ray 1 worker / local 1 thread "
              "(time: overhead) | Ray 2 workers vs local 2 threads (speed-up) |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['linker']} | {r['ray_scaling_2_vs_1']:.2f}x | {r['ray1_vs_local1_time']:.2f}x | "
                     f"{r['ray2_vs_local2_speed']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
