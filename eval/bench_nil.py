"""Calibration and NIL: are the default linker's confidences honest, and does `--nil-threshold`
find the mentions whose entity is not in the KB?

    python eval/bench_nil.py [--linker-config gen_linker/data/linkers/default] [--mentions 1000]
                             [--share 0.2] [--seed 0] [--dev 600] [--judge qwen2.5-coder-1.5b-instruct]

The suites' seeded WikiMEL test sample; a seeded share of its mentions have their gold entity
removed from the KB (every mention of a removed entity then has NIL as its right answer). The
linker (demonstrations: WikiMEL train) links the sample against that KB; for each threshold t,
answers with confidence < t become NIL, and the table gives NIL precision and recall, Top-1 on
the mentions whose entity is in the KB, and accuracy over all mentions (NIL right where the
entity was removed). The threshold to use is chosen the same way on dev mentions (never on
test). ECE: the confidences against correctness on the full KB (no entity removed).
Writes eval/results/nil.md and .json (with --judge, the default plus the LLM judge: nil_judge.md
and .json).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from gen_linker import datasets, load_linker
from gen_linker.evaluation import top1
from gen_linker.fusion import expected_calibration_error
from gen_linker.hardware import machine_line
from gen_linker.kb import KnowledgeBase
from wikimel import WIKIMEL, WIKIMEL_DEMOS, seeded_sample

ROOT = Path(__file__).resolve().parent.parent
THRESHOLDS = [round(x, 2) for x in np.linspace(0.0, 0.9, 19)]


def removed_kb(kb: KnowledgeBase, mentions, share: float, seed: int) -> tuple[KnowledgeBase, set[str]]:
    """The KB without the gold entities of a seeded share of `mentions`."""
    chosen = random.Random(seed).sample(mentions, round(share * len(mentions)))
    gone = {m.gold for m in chosen}
    return KnowledgeBase.from_entities([e for e in kb if e.id not in gone], source=f"{kb.source} minus {len(gone)}"), gone


def sweep(results, mentions, gone: set[str]) -> list[dict]:
    rows = []
    for t in THRESHOLDS:
        pred_nil = [bool(r.entity_id is None or (r.confidence or 0.0) < t) for r in results]
        gold_nil = [m.gold in gone for m in mentions]
        tp = sum(p and g for p, g in zip(pred_nil, gold_nil))
        in_kb = [(r, m) for r, m, g in zip(results, mentions, gold_nil) if not g]
        linked_right = sum((not p) and r.entity_id == m.gold for (r, m), p in
                           zip(in_kb, [p for p, g in zip(pred_nil, gold_nil) if not g]))
        overall = (tp + linked_right) / len(mentions)
        rows.append({"threshold": t, "nil_predicted": sum(pred_nil), "nil_gold": sum(gold_nil),
                     "nil_precision": tp / sum(pred_nil) if sum(pred_nil) else 1.0,
                     "nil_recall": tp / sum(gold_nil) if sum(gold_nil) else 1.0,
                     "top1_in_kb": linked_right / len(in_kb), "accuracy": overall})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--linker-config", default=str(ROOT / "gen_linker" / "data" / "linkers" / "default"))
    ap.add_argument("--mentions", type=int, default=1000)
    ap.add_argument("--dev", type=int, default=600)
    ap.add_argument("--share", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--judge", help="the LLM judge of the unsure answers (gen-linker get-judge)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    stem = "nil_judge" if args.judge else "nil"
    ds = datasets.load(WIKIMEL, "melbench", "test")
    test = seeded_sample(ds.valid, 1000)[: args.mentions]
    dev = seeded_sample(datasets.load(WIKIMEL, "melbench", "dev").valid, args.dev, seed=1)
    demos = {"generative": WIKIMEL_DEMOS}
    from gen_linker.loader import read_spec

    spec = read_spec(args.linker_config).merged(demos)
    if args.judge:
        spec = spec.merged({"rerank.judge": args.judge})
    t0 = time.perf_counter()
    full = load_linker(ds.kb, spec).link(test)
    conf = [r.confidence or 0.0 for r in full]
    hit = [r.entity_id == m.gold for r, m in zip(full, test)]
    ece = expected_calibration_error(conf, hit)
    bm25 = load_linker(ds.kb, {"linker": "bm25"}).link(test)          # the baseline, same mentions
    bm25_top1 = top1(bm25, test)
    curves = {}
    for name, mentions, seed in (("dev", dev, args.seed + 1), ("test", test, args.seed)):
        kb, gone = removed_kb(ds.kb, mentions, args.share, seed)
        results = load_linker(kb, spec).link(mentions)
        curves[name] = sweep(results, mentions, gone)
    best = max(curves["dev"], key=lambda r: (r["accuracy"], -r["threshold"]))["threshold"]
    chosen = next(r for r in curves["test"] if r["threshold"] == best)
    meta = {"command": "python eval/bench_nil.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "linker": args.linker_config, "mentions": len(test), "dev": len(dev),
            "share": args.share, "seed": args.seed, "ece": ece, "top1_full_kb": float(np.mean(hit)),
            "dev_threshold": best, "bm25_top1_full_kb": bm25_top1, "wall_s": time.perf_counter() - t0}
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "curves": curves}, indent=2) + "\n")
    title = "default linker + LLM judge" if args.judge else "default linker"
    lines = [f"# Calibration and NIL ({title}, WikiMEL test)", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- {len(test)} test mentions (the suites' seeded sample); demonstrations: WikiMEL train; the gold "
             f"entities of a seeded {args.share:.0%} of the mentions removed from the KB (their mentions' right "
             f"answer is then NIL); threshold chosen on {len(dev)} dev mentions the same way.",
             f"- full KB: Top-1 {meta['top1_full_kb']:.3f} (BM25 on the same mentions {bm25_top1:.3f}), "
             f"**ECE {ece:.3f}** (10 bins)",
             f"- threshold chosen on dev: **{best}** -> on test: NIL precision {chosen['nil_precision']:.3f}, "
             f"recall {chosen['nil_recall']:.3f}, Top-1 on in-KB mentions {chosen['top1_in_kb']:.3f}, "
             f"accuracy {chosen['accuracy']:.3f}", "",
             "| threshold | NIL predicted | NIL precision | NIL recall | Top-1 (entity in KB) | accuracy (all) |",
             "|---|---|---|---|---|---|"]
    for r in curves["test"]:
        lines.append(f"| {r['threshold']:.2f} | {r['nil_predicted']} | {r['nil_precision']:.3f} | "
                     f"{r['nil_recall']:.3f} | {r['top1_in_kb']:.3f} | {r['accuracy']:.3f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
