"""The default linker's learning curve: Top-1 on WikiMEL test against the number of dev
mentions its fusion is fitted on, beside BM25 and the retriever on the same mentions.

    python eval/bench_fusion_curve.py [--sizes 25,50,100,250,500,1000,1500] [--mentions 1000]

Fitted as `adapters/default.yaml` fits it (the entity-disjoint split, seed 0: dev minus the
mentions of new entities, a seeded sample of 1,500; the split's train as the labelled pool; the
same FusionConfig), on nested seeded subsets of those 1,500. Test: the suites' seeded
1,000-mention WikiMEL test sample, WikiMEL train as the pool (as eval/suites/wikimel_trained.yaml).
Candidate features are computed once for dev and once for test; each size is only a fit.
Writes eval/results/fusion_curve.md and .json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from gen_linker.evaluation import top1
from gen_linker.features import DemoPool, feature_names
from gen_linker.fusion import FusionConfig, examples_top1, fit
from gen_linker.hardware import machine_line
from gen_linker.linkers.fused import FusedLinker, fusion_examples
from gen_linker.loader import DEFAULT_LINKER, LinkerParts, read_spec
from wikimel import disjoint_fusion_data

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="25,50,100,250,500,1000,1500")
    ap.add_argument("--mentions", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    parts_data, split, dev, test = disjoint_fusion_data(max(sizes), args.mentions)
    kb = parts_data["test"].kb
    spec = read_spec(DEFAULT_LINKER)
    parts = LinkerParts(kb, spec, n_mentions=len(dev), progress=True)
    t0 = time.perf_counter()
    parts.pool = DemoPool([m for m in split.train if m.gold in kb], parts.similarity_encoder)
    linker = FusedLinker.from_spec(spec, parts, fusion=None, rerankers=[])
    dev_ex = fusion_examples(linker, dev)
    linker.pool = DemoPool([m for m in parts_data["train"].valid if m.gold in kb], parts.similarity_encoder)
    test_ex = fusion_examples(linker, test, desc="fusion features (test)")
    features_s = time.perf_counter() - t0
    # the baselines on the same test mentions: BM25's and the retriever's first candidate
    from gen_linker.loader import load_linker

    bm25 = load_linker(kb, {"linker": "bm25"}).link(test)
    bm25_top1 = top1(bm25, test)
    retrieval_top1 = float(np.mean([e.gold == 0 for e in test_ex]))     # candidates come in fused-rank order
    recall = float(np.mean([e.gold is not None for e in test_ex]))
    rows = []
    config = FusionConfig(kind="mlp", seed=0)                          # as adapters/default.yaml
    for n in sizes:
        t1 = time.perf_counter()
        model, report = fit(dev_ex[:n], feature_names([]), config)
        rows.append({"dev_mentions": n, "test_top1": examples_top1(model, test_ex), "held_out_top1": report.held_out_top1,
                     "fit_s": time.perf_counter() - t1})
        print(f"  {n} dev mentions: test Top-1 {rows[-1]['test_top1']:.4f}", file=sys.stderr, flush=True)
    result = {"command": "python eval/bench_fusion_curve.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
              "date": time.strftime("%Y-%m-%d"), "test_mentions": len(test), "bm25_top1": bm25_top1,
              "retrieval_top1": retrieval_top1, "recall_at_candidates": recall, "features_s": features_s,
              "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_curve.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# fusion_curve: the default linker's Top-1 against the dev mentions its fusion is fitted on", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}", f"- date: {result['date']}",
             f"- test: {len(test)} WikiMEL test mentions (the suites' seeded sample), KB {len(kb)} entities; "
             f"on the same mentions BM25 Top-1 **{bm25_top1:.4f}**, the retriever (BM25 + dense, rank-fused) "
             f"{retrieval_top1:.4f}; the gold is among the {spec.rerank.candidates} candidates for {recall:.4f}",
             f"- fit: nested seeded subsets of 1,500 dev mentions of the entity-disjoint split (seed 0), pool = its "
             f"train; features for dev and test took {features_s:.0f} s, each fit the seconds below", "",
             "| dev mentions fitted | test Top-1 | vs BM25 | held-out dev Top-1 | fit s |", "|---|---|---|---|---|"]
    lines += [f"| {r['dev_mentions']} | {r['test_top1']:.4f} | {r['test_top1'] - bm25_top1:+.4f} | "
              f"{r['held_out_top1']:.4f} | {r['fit_s']:.1f} |" for r in rows]
    (args.out / "fusion_curve.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
