"""Generative vs DIM vs pipeline on WikiMEL test, one table (issue 5).

    python eval/bench_discriminative.py [--test 1000] [--dev 300] [--backend vllm]

- Candidates (BM25 over names/aliases + dense MiniLM over name + description, fused):
  recall@1/10/100, with the KB's descriptions (qid2abs) and with names only.
- DIM trained on WikiMEL train (frozen MiniLM features; no images in this copy of WikiMEL),
  with KB descriptions and with names only; ranks the top-100 candidates.
- Generative: the generative issue's settings (SmolLM2-135M, 16 SimCSE demonstrations, beam 5).
- Pipeline: generative, DIM as fallback; the margin is chosen on a dev sample, never on test.

Mentions are the seeded samples of the suite (test: 1,000 of 5,131, seed 0; dev: 300 of 2,626,
seed 0). Link outputs go to eval/runs/wikimel_discriminative/ (resumed on a rerun); the table
to eval/results/wikimel_discriminative.md and .json.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gen_linker import datasets  # noqa: E402
from gen_linker.backends import load_backend  # noqa: E402
from gen_linker.batch import link_to_file  # noqa: E402
from gen_linker.candidates import CandidateRetriever, recall_at  # noqa: E402
from gen_linker.dim_training import DIMTrainConfig, train_dim  # noqa: E402
from gen_linker.evaluation import gold_of, read_predictions, score  # noqa: E402
from gen_linker.linkers.dim import DIMFeaturizer, DIMLinker  # noqa: E402
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker  # noqa: E402
from gen_linker.linkers.pipeline import PipelineLinker, fallback_reason, tune_margin  # noqa: E402
from gen_linker.schema import LinkResult  # noqa: E402
from machine import machine_line  # noqa: E402

WIKIMEL = ROOT.parent / "shared" / "data" / "wikimel"
NAME = "wikimel_discriminative"


def sample(mentions, size, seed=0):
    return random.Random(seed).sample(mentions, size) if size and size < len(mentions) else mentions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--backend", default="vllm", choices=("hf", "vllm"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()

    test_ds = datasets.load(WIKIMEL, "melbench", "test")
    kb = test_ds.kb
    test = sample(test_ds.valid, args.test)
    dev = sample(datasets.load(WIKIMEL, "melbench", "dev").valid, args.dev)
    train = datasets.load(WIKIMEL, "melbench", "train").valid
    runs = ROOT / "eval" / "runs" / NAME
    runs.mkdir(parents=True, exist_ok=True)
    gold = gold_of(test)
    rows, recall, timings = [], {}, {}
    names_only = {e.id: "" for e in kb}

    # --- candidates and DIM, with KB descriptions and with names only
    dims = {}
    for label, descriptions in (("KB descriptions", None), ("names only", names_only)):
        t0 = time.perf_counter()
        retriever = CandidateRetriever(kb, descriptions=descriptions, show_progress=True)
        cands = retriever.retrieve(test, 100)
        recall[label] = recall_at(cands, test, (1, 10, 100))
        timings[f"candidates ({label}) mentions/s"] = len(test) / (time.perf_counter() - t0)
        print("recall", label, recall[label], flush=True)
        featurizer = DIMFeaturizer(retriever.encoder, cache_dir=kb.cache_dir())
        t0 = time.perf_counter()
        model, report = train_dim(kb, train, dev, featurizer, DIMTrainConfig(epochs=args.epochs),
                                  runs / f"dim-{label.split()[0].lower()}", descriptions, retriever)
        timings[f"DIM training ({label}) s"] = time.perf_counter() - t0
        rows.append({"run": f"candidate retriever alone ({label})", **score(_records(test, cands), gold).to_dict()})
        for fuse in (False, True):
            linker = DIMLinker(kb, model, featurizer, retriever, num_candidates=100, descriptions=descriptions,
                               fuse_retrieval=fuse)
            dims[(label, fuse)] = linker
            pred = runs / f"dim-{label.split()[0].lower()}{'-fused' if fuse else ''}.jsonl"
            link_to_file(linker, test, pred, chunk_size=256, overwrite=True, total=len(test))
            rows.append({"run": f"DIM ({label}{', fused with retrieval ranks' if fuse else ''})",
                         **score(read_predictions(pred), gold).to_dict(), "dev_top1_per_epoch": report.dev_top1})
            print(rows[-1], flush=True)

    # --- generative (test and dev), the generative issue's settings
    backend = load_backend(args.backend, None, **({"compile": True} if args.backend == "vllm" else {}))
    gen = GenerativeLinker.from_pretrained(kb, backend=backend, demos=train,
                                           config=GenerativeConfig(num_demos=16, retriever="simcse", num_beams=5))
    outputs = {}
    for split, mentions in (("test", test), ("dev", dev)):
        path = runs / f"generative-{split}.jsonl"
        t0 = time.perf_counter()
        link_to_file(gen, mentions, path, chunk_size=128, resume=True, total=len(mentions))
        timings[f"generative {split} s"] = time.perf_counter() - t0
        recs = read_predictions(path)
        outputs[split] = [LinkResult.from_dict(recs[m.id]) for m in mentions]
    rows.insert(0, {"run": "generative (16 SimCSE demos, beam 5, trie over the KB)",
                    **score(read_predictions(runs / "generative-test.jsonl"), gold).to_dict()})

    # --- pipeline: margin chosen on dev, applied to test
    for (label, fuse), dim in dims.items():
        pipe = PipelineLinker(kb, gen, dim)
        margin, dev_curve = tune_margin(pipe, dev, outputs["dev"])
        decided = pipe.decide(test, outputs["test"], margin)
        path = runs / f"pipeline-{label.split()[0].lower()}{'-fused' if fuse else ''}.jsonl"
        path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in decided))
        fired = [i for i, r in enumerate(outputs["test"]) if fallback_reason(r, kb, margin)]
        reasons = {}
        for i in fired:
            reasons[decided[i].fallback] = reasons.get(decided[i].fallback, 0) + 1
        fixes = sum(outputs["test"][i].entity_id != test[i].gold and decided[i].entity_id == test[i].gold for i in fired)
        breaks = sum(outputs["test"][i].entity_id == test[i].gold and decided[i].entity_id != test[i].gold for i in fired)
        rows.append({"run": f"pipeline (DIM with {label}{', fused' if fuse else ''})", **score(read_predictions(path), gold).to_dict(),
                     "margin": margin, "dev_top1_by_margin": dev_curve, "fallbacks": len(fired),
                     "fallback_reasons": reasons, "fixes": fixes, "breaks": breaks})
        print(rows[-1], flush=True)
    write(args, rows, recall, timings, len(test), len(dev), len(train), len(kb))
    return 0


def _records(mentions, cands) -> dict[str, dict]:
    """Retrieved candidates as link output records (the retriever used as a linker)."""
    return {m.id: LinkResult(m.id, c[0].entity_id if c else None, c[0].name if c else None,
                             c[0].score if c else None, c[:10], "candidates").to_dict() for m, c in zip(mentions, cands)}


def write(args, rows, recall, timings, n_test, n_dev, n_train, n_kb) -> None:
    meta = {"command": "python eval/bench_discriminative.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "test": n_test, "dev": n_dev, "train": n_train, "kb": n_kb,
            "backend": args.backend, "timings": timings}
    (args.out / f"{NAME}.json").write_text(json.dumps({"meta": meta, "recall": recall, "rows": rows}, indent=2) + "\n")
    lines = ["# WikiMEL test: generative vs DIM vs pipeline", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- data: WikiMEL test, seeded sample of {n_test} mentions (seed 0, as the generative suite); "
             f"margin chosen on a dev sample of {n_dev}; DIM trained on {n_train} train mentions; KB {n_kb} entities "
             "(qid2ne.json), descriptions from qid2abs.json; no images in this copy of WikiMEL",
             "", "## Candidates (BM25 names + dense name/description, fused)", "",
             "| entity text | recall@1 | recall@10 | recall@100 |", "|---|---|---|---|"]
    for label, r in recall.items():
        lines.append(f"| {label} | {r[1]:.4f} | {r[10]:.4f} | {r[100]:.4f} |")
    lines += ["", "## Linking", "", "| run | Top-1 | Top-5 | Top-10 | MRR | fallbacks (fixes / breaks) | margin |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        fb = f"{r['fallbacks']} ({r['fixes']} / {r['breaks']})" if "fallbacks" in r else "-"
        margin = f"{r['margin']:.3f}" if "margin" in r else "-"
        lines.append(f"| {r['run']} | {r['top1']:.4f} | {r['top5']:.4f} | {r['top10']:.4f} | {r['mrr']:.4f} | "
                     f"{fb} | {margin} |")
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    (args.out / f"{NAME}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
