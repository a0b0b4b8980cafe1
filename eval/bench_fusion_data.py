"""Does the fusion over-fit a model's score for want of data? The default's fusion (no model
score) and the cross-encoder's (`adapters/wikimel-crossencoder.yaml`), each fitted on the
recipe's 1,500 dev mentions alone and on those plus N training mentions, on WikiMEL test,
beside BM25 and the retriever on the same mentions.

    python eval/bench_fusion_data.py [--train-mentions 3000] [--seeds 0,1,2] [--hidden 32,128]

Needs the cross-encoder linker (`gen-linker train --recipe adapters/wikimel-crossencoder.yaml`,
eval/runs/linkers/wikimel-crossencoder). The extra training mentions are of the entity-disjoint
split's train (seed 0), never among the 2,000 the cross-encoder was trained on (its scores there
are over-confident: the probe below measures it), and their pool features leave the mention's
own label out (`DemoPool(leave_one_out=True)`, as `gen-linker adapt` fits). Test: the suites'
seeded 1,000-mention sample with WikiMEL train as the pool. Features are computed once (the
cross-encoder scores 20 candidates per mention: ~7 mentions/s here); each fit takes seconds.
Writes eval/results/fusion_data.md and .json.
"""
from __future__ import annotations

import argparse
import copy
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from gen_linker.evaluation import top1
from gen_linker.features import DemoPool, feature_names
from gen_linker.fusion import FusionConfig, examples_top1, fit
from gen_linker.hardware import machine_line
from gen_linker.linkers.fused import FusedLinker, fusion_examples
from gen_linker.loader import LinkerParts, load_linker, read_spec
from wikimel import disjoint_fusion_data

ROOT = Path(__file__).resolve().parent.parent
CE_LINKER = ROOT / "eval" / "runs" / "linkers" / "wikimel-crossencoder"
CE_TRAINING_MENTIONS = 2000      # adapters/wikimel-crossencoder.yaml: crossencoder.mentions, seed 0


def without_ce(examples, n_base: int) -> list:
    """The same examples with the cross-encoder's columns dropped: the default's features."""
    out = []
    for e in examples:
        e2 = copy.copy(e)
        e2.features = e.features[:, :n_base]
        out.append(e2)
    return out


def ce_top1(examples, column: int) -> float:
    """Top-1 of the cross-encoder alone: its best-scored candidate (a missed gold is wrong)."""
    return float(np.mean([e.gold is not None and len(e.features) and int(np.argmax(e.features[:, column])) == e.gold
                          for e in examples]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-mentions", type=int, default=3000)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--hidden", default="32,128")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    if not (CE_LINKER / "linker.yaml").exists():
        print(f"{CE_LINKER} is missing: run `gen-linker train --recipe adapters/wikimel-crossencoder.yaml` first",
              file=sys.stderr)
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    hiddens = [int(h) for h in args.hidden.split(",")]
    data, split, dev, test = disjoint_fusion_data()                     # dev: 1,500, as the recipes
    kb = data["test"].kb
    train_pool = [m for m in split.train if m.gold in kb]
    ce_seen = {m.id for m in random.Random(0).sample(train_pool, CE_TRAINING_MENTIONS)}
    unseen = [m for m in train_pool if m.id not in ce_seen]
    extra = random.Random(1).sample(unseen, args.train_mentions)

    spec = read_spec(CE_LINKER)
    parts = LinkerParts(kb, spec, n_mentions=len(dev), progress=True)
    parts.pool = DemoPool(train_pool, parts.similarity_encoder)
    linker = FusedLinker.from_spec(spec, parts, fusion=None, rerankers=["ce"])
    names, base = feature_names(["ce"]), feature_names([])
    column = names.index("ce_rel")
    t0 = time.perf_counter()
    probe = {"seen": ce_top1(fusion_examples(linker, random.Random(2).sample(
                 [m for m in train_pool if m.id in ce_seen], 128), desc="probe: trained-on mentions"), column),
             "unseen": ce_top1(fusion_examples(linker, random.Random(2).sample(unseen, 128),
                                               desc="probe: other train mentions"), column)}
    dev_ex = fusion_examples(linker, dev)
    linker.pool = DemoPool(train_pool, parts.similarity_encoder, leave_one_out=True)
    train_ex = fusion_examples(linker, extra, desc="fusion features (train, own label left out)")
    linker.pool = DemoPool([m for m in data["train"].valid if m.gold in kb], parts.similarity_encoder)
    test_ex = fusion_examples(linker, test, desc="fusion features (test)")
    features_s = time.perf_counter() - t0
    bm25_top1 = top1(load_linker(kb, {"linker": "bm25"}).link(test), test)
    retrieval_top1 = float(np.mean([e.gold == 0 for e in test_ex]))     # candidates come in fused-rank order

    rows = []
    for label, fn, fnames in (("default features + cross-encoder", lambda x: x, names),
                              ("default features", lambda x: without_ce(x, len(base)), base)):
        for fitted_on, examples in (("dev 1,500", dev_ex), (f"dev 1,500 + train {len(extra):,}", dev_ex + train_ex)):
            for hidden in hiddens:
                runs = []
                for seed in seeds:
                    model, report = fit(fn(examples), fnames, FusionConfig(kind="mlp", hidden=hidden, seed=seed))
                    runs.append({"seed": seed, "test_top1": examples_top1(model, fn(test_ex)),
                                 "held_out_top1": report.held_out_top1})
                rows.append({"features": label, "fitted_on": fitted_on, "hidden": hidden, "runs": runs,
                             "test_top1_mean": float(np.mean([r["test_top1"] for r in runs]))})
                print(f"  {label} | {fitted_on} | hidden {hidden}: {rows[-1]['test_top1_mean']:.4f}",
                      file=sys.stderr, flush=True)
    result = {"command": "python eval/bench_fusion_data.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
              "date": time.strftime("%Y-%m-%d"), "test_mentions": len(test), "bm25_top1": bm25_top1,
              "retrieval_top1": retrieval_top1, "crossencoder_alone_top1": ce_top1(test_ex, column),
              "probe_crossencoder_top1": probe, "features_s": features_s, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_data.json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# fusion_data: the fusion fitted on more mentions, with and without the cross-encoder's score", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}", f"- date: {result['date']}",
             f"- test: {len(test)} WikiMEL test mentions (the suites' seeded sample), KB {len(kb)} entities; on the "
             f"same mentions BM25 Top-1 **{bm25_top1:.4f}**, the retriever {retrieval_top1:.4f}, the cross-encoder "
             f"alone {result['crossencoder_alone_top1']:.4f}",
             f"- extra training mentions: {len(extra):,} of the entity-disjoint split's train, none of the "
             f"{CE_TRAINING_MENTIONS:,} the cross-encoder trained on (its Top-1 on 128 of those: {probe['seen']:.3f}, "
             f"on 128 others: {probe['unseen']:.3f}), pool features with their own label left out; features took "
             f"{features_s / 60:.1f} min", "",
             "| features | fitted on | hidden units | test Top-1 (mean) | vs BM25 | per seed | held-out Top-1 per seed |",
             "|---|---|---|---|---|---|---|"]
    def per_seed(r: dict, key: str) -> str:
        return ", ".join(f"{x[key]:.3f}" for x in r["runs"])

    lines += [f"| {r['features']} | {r['fitted_on']} | {r['hidden']} | {r['test_top1_mean']:.4f} | "
              f"{r['test_top1_mean'] - bm25_top1:+.4f} | {per_seed(r, 'test_top1')} | {per_seed(r, 'held_out_top1')} |"
              for r in rows]
    (args.out / "fusion_data.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
