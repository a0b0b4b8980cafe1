"""BM25 benchmark: gen-linker's sparse `BM25Index` vs rank_bm25's `BM25Okapi`, same scores.

    python eval/bench_bm25.py [--queries 1000]

Two indexes of WikiMEL, as gen-linker uses them:
- KB names: 18,880 entities' names + aliases, queried with test mentions' words (candidate
  retrieval, DIM's hard negatives, the bm25 baseline);
- demonstrations: the train sentences, queried with test sentences (the bm25 demonstration
  retriever).
Build time, query throughput (the seeded test sample, one call per query for rank_bm25, batches
of 256 for the sparse index, as the callers do), and whether the top-100 rankings agree.
Writes eval/results/bm25.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from gen_linker import datasets
from gen_linker.bm25 import BM25Index
from gen_linker.bm25 import top_indices, words
from machine import machine_line
from wikimel import WIKIMEL, seeded_sample



def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def compare(docs: list[list[str]], queries: list[list[str]]) -> dict:
    from rank_bm25 import BM25Okapi

    ref, ref_build = timed(lambda: BM25Okapi(docs))
    ref_scores, ref_query = timed(lambda: [ref.get_scores(q) for q in queries])
    index, build = timed(lambda: BM25Index(docs))
    scores, query = timed(lambda: np.concatenate([index.scores(queries[i : i + 256])
                                                  for i in range(0, len(queries), 256)]))
    same = sum(np.array_equal(top_indices(a, 100, positive=True), top_indices(b, 100, positive=True))
               for a, b in zip(ref_scores, scores))
    return {"documents": len(docs), "queries": len(queries),
            "rank_bm25": {"build_s": ref_build, "queries_per_s": len(queries) / ref_query},
            "sparse": {"build_s": build, "queries_per_s": len(queries) / query},
            "speedup": ref_query / query, "same_top100": same,
            "max_abs_score_diff": float(np.abs(np.stack(ref_scores) - scores).max())}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    test = datasets.load(WIKIMEL, "melbench", "test")
    train = datasets.load(WIKIMEL, "melbench", "train").valid
    mentions = seeded_sample(test.valid, args.queries)
    rows = {
        "KB names (mention words)": compare([words(" ".join((e.name, *e.aliases))) or ["_"] for e in test.kb],
                                            [words(m.mention) for m in mentions]),
        "train sentences (sentence words)": compare([words(m.text) or ["_"] for m in train],
                                                    [words(m.text) for m in mentions]),
    }
    meta = {"command": "python eval/bench_bm25.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d")}
    (args.out / "bm25.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# BM25: sparse `BM25Index` vs rank_bm25 `BM25Okapi` (same scores)", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- queries: the seeded sample of {args.queries} WikiMEL test mentions (seed 0, as the suites); "
             "rank_bm25 one call per query, the sparse index batches of 256", "",
             "| index | documents | rank_bm25 queries/s | sparse queries/s | speed-up | build s (rank_bm25 / sparse) "
             "| same top-100 | max score diff |", "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['documents']} | {r['rank_bm25']['queries_per_s']:.1f} | "
                     f"{r['sparse']['queries_per_s']:.0f} | {r['speedup']:.0f}x | "
                     f"{r['rank_bm25']['build_s']:.2f} / {r['sparse']['build_s']:.2f} | "
                     f"{r['same_top100']}/{r['queries']} | {r['max_abs_score_diff']:.1e} |")
    (args.out / "bm25.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
