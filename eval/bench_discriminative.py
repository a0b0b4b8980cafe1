"""Generative vs DIM vs pipeline on WikiMEL test, one table (issue 5).

    python eval/bench_discriminative.py [--test 1000] [--dev 300] [--backend vllm] [--c 10]
                                        [--prompt-tries candidates,kb]

Three sources of entity descriptions, each used everywhere a description is used (dense
retrieval, DIM's entity side, the generative prompt's candidate block):
- the KB's (qid2abs.json),
- written by SmolLM2 (`gen-linker describe --in-process` over the whole KB; the script runs it
  when eval/runs/llm_descriptions/smollm2.jsonl is missing or incomplete, resuming its cache),
- none (names only).
Per source:
- Candidates (BM25 over names/aliases + dense MiniLM over name + description, fused):
  recall@1/10/100; the retriever alone as a linker.
- DIM trained on WikiMEL train (frozen MiniLM features; no images in this copy of WikiMEL);
  ranks the top-100 candidates; also fused with the retriever's ranks.
- Generative with the top-c candidates and their descriptions in the prompt
  (prompts/gemel_candidates.yaml), the trie restricted to those candidates and/or over the KB.
- Pipeline: generative (no candidates in the prompt), DIM as fallback; the margin is chosen on
  a dev sample, never on test.
Generative without candidates: the generative issue's settings (SmolLM2-135M, 16 SimCSE
demonstrations, beam 5).

Mentions are the seeded samples of the suite (test: 1,000 of 5,131, seed 0; dev: 300 of 2,626,
seed 0). Link outputs go to eval/runs/wikimel_discriminative/ (resumed on a rerun); the table
to eval/results/wikimel_discriminative.md and .json.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gen_linker import datasets  # noqa: E402
from gen_linker.annotations import read_descriptions  # noqa: E402
from gen_linker.backends import load_backend  # noqa: E402
from gen_linker.batch import link_to_file  # noqa: E402
from gen_linker.candidates import CandidateRetriever, recall_at  # noqa: E402
from gen_linker.describe import describe_in_process  # noqa: E402
from gen_linker.dim_training import DIMTrainConfig, train_dim  # noqa: E402
from gen_linker.evaluation import gold_of, read_predictions, score  # noqa: E402
from gen_linker.linkers.dim import DIMFeaturizer, DIMLinker  # noqa: E402
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker  # noqa: E402
from gen_linker.linkers.pipeline import PipelineLinker, tune_margin  # noqa: E402
from gen_linker.schema import LinkResult  # noqa: E402
from machine import machine_line  # noqa: E402
from wikimel import WIKIMEL, seeded_sample  # noqa: E402

NAME = "wikimel_discriminative"
LLM_DESCRIPTIONS = ROOT / "eval" / "runs" / "llm_descriptions"
SOURCES = ("KB descriptions", "SmolLM2-written", "names only")


def slug(source: str) -> str:
    """File-name part of a description source ("KB descriptions" -> "kb")."""
    return source.split()[0].lower()


def llm_descriptions(kb, timings: dict) -> dict[str, str]:
    """SmolLM2's description of every KB entity, written (or completed) in process when the
    output file lacks some; the cache makes a rerun free."""
    out = LLM_DESCRIPTIONS / "smollm2.jsonl"
    have = read_descriptions(out) if out.exists() else {}
    if len(have) < len(kb):
        t0 = time.perf_counter()
        summary = describe_in_process(list(kb), LLM_DESCRIPTIONS / "cache.jsonl", out)
        print(summary.line(), flush=True)
        if summary.requested:
            timings["describe (SmolLM2, in process) entities/s"] = summary.requested / (time.perf_counter() - t0)
        have = read_descriptions(out)
    return have


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--backend", default="vllm", choices=("hf", "vllm"))
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--c", type=int, default=10, help="candidates in the generative prompt")
    ap.add_argument("--prompt-tries", default="candidates,kb",
                    help="trie scopes of the candidates-in-prompt runs, comma-separated (candidates, kb)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()

    test_ds = datasets.load(WIKIMEL, "melbench", "test")
    kb = test_ds.kb
    test = seeded_sample(test_ds.valid, args.test)
    dev = seeded_sample(datasets.load(WIKIMEL, "melbench", "dev").valid, args.dev)
    train = datasets.load(WIKIMEL, "melbench", "train").valid
    runs = ROOT / "eval" / "runs" / NAME
    runs.mkdir(parents=True, exist_ok=True)
    gold = gold_of(test)
    rows, recall, timings = [], {}, {}
    descriptions = {"KB descriptions": None, "SmolLM2-written": llm_descriptions(kb, timings),
                    "names only": {e.id: "" for e in kb}}

    def add(run: str, source: str, path_or_records, **extra) -> None:
        recs = read_predictions(path_or_records) if isinstance(path_or_records, Path) else path_or_records
        rows.append({"run": run, "descriptions": source, **score(recs, gold).to_dict(), **extra})
        print(rows[-1], flush=True)

    # --- candidates and DIM, per description source
    dims, retrievers = {}, {}
    for source in SOURCES:
        t0 = time.perf_counter()
        retriever = retrievers[source] = CandidateRetriever(kb, descriptions=descriptions[source],
                                                            show_progress=True)
        cands = retriever.retrieve(test, 100)
        recall[source] = recall_at(cands, test, (1, 10, 100))
        timings[f"candidates ({source}) mentions/s"] = len(test) / (time.perf_counter() - t0)
        print("recall", source, recall[source], flush=True)
        add("candidate retriever alone", source, _records(test, cands))
        featurizer = DIMFeaturizer(retriever.encoder, cache_dir=kb.cache_dir())
        t0 = time.perf_counter()
        model, report = train_dim(kb, train, dev, featurizer, DIMTrainConfig(epochs=args.epochs),
                                  runs / f"dim-{slug(source)}", descriptions[source], retriever)
        timings[f"DIM training ({source}) s"] = time.perf_counter() - t0
        for fuse in (False, True):
            linker = DIMLinker(kb, model, featurizer, retriever, num_candidates=100,
                               descriptions=descriptions[source], fuse_retrieval=fuse)
            dims[(source, fuse)] = linker
            pred = runs / f"dim-{slug(source)}{'-fused' if fuse else ''}.jsonl"
            link_to_file(linker, test, pred, chunk_size=256, overwrite=True, total=len(test))
            add("DIM" + (" fused with retrieval ranks" if fuse else ""), source, pred,
                dev_top1_per_epoch=report.dev_top1)

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
    add("generative (16 SimCSE demos, beam 5, trie over the KB)", "-", runs / "generative-test.jsonl")

    # --- generative with the top-c candidates and their descriptions in the prompt
    for scope in [s.strip() for s in args.prompt_tries.split(",") if s.strip()]:
        for source in SOURCES:
            cfg = GenerativeConfig(num_demos=16, num_beams=5, prompt="gemel_candidates",
                                   candidates_in_prompt=args.c, trie_scope=scope)
            linker = GenerativeLinker(kb, backend, gen.retriever, cfg, candidates=retrievers[source],
                                      descriptions=descriptions[source])
            path = runs / f"generative-c{args.c}-{slug(source)}-trie-{scope}.jsonl"
            t0 = time.perf_counter()
            link_to_file(linker, test, path, chunk_size=128, resume=True, total=len(test))
            timings[f"generative top-{args.c} in prompt ({source}, trie {scope}) s"] = time.perf_counter() - t0
            add(f"generative, top-{args.c} candidates in the prompt, trie over the "
                + ("candidates" if scope == "candidates" else "KB"), source, path)

    # --- pipeline: margin chosen on dev, applied to test
    for (source, fuse), dim in dims.items():
        pipe = PipelineLinker(kb, gen, dim)
        margin, dev_curve = tune_margin(pipe, dev, outputs["dev"])
        decided = pipe.decide(test, outputs["test"], margin)
        path = runs / f"pipeline-{slug(source)}{'-fused' if fuse else ''}.jsonl"
        path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in decided))
        fired = [i for i, r in enumerate(decided) if r.fallback]
        reasons = dict(Counter(decided[i].fallback for i in fired))
        fixes = sum(outputs["test"][i].entity_id != test[i].gold and decided[i].entity_id == test[i].gold for i in fired)
        breaks = sum(outputs["test"][i].entity_id == test[i].gold and decided[i].entity_id != test[i].gold for i in fired)
        add("pipeline: generative, then DIM" + (" fused" if fuse else ""), source, path, margin=margin,
            dev_top1_by_margin=dev_curve, fallbacks=len(fired), fallback_reasons=reasons, fixes=fixes, breaks=breaks)
    write(args, rows, recall, timings, len(test), len(dev), len(train), len(kb))
    return 0


def _records(mentions, cands) -> dict[str, dict]:
    """Retrieved candidates as link output records (the retriever used as a linker)."""
    return {m.id: LinkResult(m.id, c[0].entity_id if c else None, c[0].name if c else None,
                             c[0].score if c else None, c[:10], "candidates").to_dict() for m, c in zip(mentions, cands)}


KIND_ORDER = ("generative (", "generative, top", "candidate retriever", "DIM", "pipeline")


def write(args, rows, recall, timings, n_test, n_dev, n_train, n_kb) -> None:
    """The json, and the markdown's one table; a hand-written `## Reading` section of an existing
    markdown file is kept."""
    meta = {"command": "python eval/bench_discriminative.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "test": n_test, "dev": n_dev, "train": n_train, "kb": n_kb,
            "backend": args.backend, "candidates_in_prompt": args.c, "timings": timings}
    (args.out / f"{NAME}.json").write_text(json.dumps({"meta": meta, "recall": recall, "rows": rows}, indent=2) + "\n")
    md = args.out / f"{NAME}.md"
    reading = md.read_text().partition("\n## Reading")[2] if md.exists() else ""
    lines = ["# WikiMEL test: generative vs DIM vs pipeline, three sources of entity descriptions", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- data: WikiMEL test, seeded sample of {n_test} mentions (seed 0, as the generative suite); "
             f"margin chosen on a dev sample of {n_dev}; DIM trained on {n_train} train mentions; KB {n_kb} entities "
             "(qid2ne.json); no images in this copy of WikiMEL",
             "- descriptions: `KB descriptions` = qid2abs.json; `SmolLM2-written` = `gen-linker describe --in-process` "
             "(SmolLM2-135M-Instruct, prompts/dim_describe.yaml) for every KB entity; `names only` = none. "
             "The source is used by dense retrieval, DIM's entity side and the prompt's candidate block.",
             "- generative: SmolLM2-135M, 16 SimCSE demonstrations, beam 5, vLLM compiled; "
             f"`top-{args.c} candidates in the prompt` = prompts/gemel_candidates.yaml",
             "- candidates: BM25 over names/aliases + dense MiniLM over name + description, reciprocal rank fusion; "
             "their recall@1/10/100 is in the retriever rows; DIM ranks the top 100",
             "", "| run | descriptions | Top-1 | Top-5 | Top-10 | MRR | recall@1 / @10 / @100 | "
             "fallbacks (fixes / breaks) | margin |", "|---|---|---|---|---|---|---|---|---|"]
    order = {kind: i for i, kind in enumerate(KIND_ORDER)}
    ranked = sorted(rows, key=lambda r: (next(order[k] for k in KIND_ORDER if r["run"].startswith(k)), r["run"],
                                         SOURCES.index(r["descriptions"]) if r["descriptions"] in SOURCES else -1))
    for r in ranked:
        rec = recall.get(r["descriptions"]) if r["run"].startswith("candidate retriever") else None
        rec = f"{rec[1]:.3f} / {rec[10]:.3f} / {rec[100]:.3f}" if rec else "-"
        fb = f"{r['fallbacks']} ({r['fixes']} / {r['breaks']})" if "fallbacks" in r else "-"
        margin = f"{r['margin']:.2f}" if "margin" in r else "-"
        lines.append(f"| {r['run']} | {r['descriptions']} | {r['top1']:.4f} | {r['top5']:.4f} | {r['top10']:.4f} | "
                     f"{r['mrr']:.4f} | {rec} | {fb} | {margin} |")
    lines += ["", "Timings of this run (s, or mentions/s; work resumed from eval/runs/ costs ~0): "
              + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())]
    md.write_text("\n".join(lines) + "\n" + ("\n## Reading" + reading if reading else ""))


if __name__ == "__main__":
    raise SystemExit(main())
