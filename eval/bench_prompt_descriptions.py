"""Candidates with descriptions in the generative prompt, on WikiMEL test (issue 5, part 4).

    python eval/bench_prompt_descriptions.py [--mentions 300] [--c 10]

The first N mentions of the generative suite's seeded 1,000-mention test sample; the generative
issue's settings (SmolLM2-135M, 16 SimCSE demonstrations, beam 5, vLLM backend compiled) plus
the top-c candidates of BM25 + dense retrieval (KB descriptions; the same candidates in every
run) with their descriptions in the prompt (prompts/gemel_candidates.yaml):
- descriptions from the KB (qid2abs.json), from SmolLM2 (`gen-linker describe` against a local
  vLLM server, for the candidate entities of these mentions), or none (names only);
- the trie over the whole KB, or restricted to the prompt's candidates.
The plain generative run on the same mentions is read from eval/bench_discriminative.py's
output when present (eval/runs/wikimel_discriminative/generative-test.jsonl), else linked here.
Writes eval/results/prompt_descriptions.md and .json.
"""
from __future__ import annotations

import argparse
import json
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
from gen_linker.describe import DescribeConfig, LocalServer, describe  # noqa: E402
from gen_linker.evaluation import gold_of, read_predictions, score  # noqa: E402
from gen_linker.linkers.generative import GenerativeConfig, GenerativeLinker  # noqa: E402
from gen_linker.retrieval import demonstration_pool, make_retriever  # noqa: E402
from machine import machine_line  # noqa: E402
from wikimel import WIKIMEL, seeded_sample  # noqa: E402



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mentions", type=int, default=300)
    ap.add_argument("--c", type=int, default=10, help="candidates in the prompt")
    ap.add_argument("--backend", default="vllm", choices=("hf", "vllm"))
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()

    ds = datasets.load(WIKIMEL, "melbench", "test")
    kb = ds.kb
    mentions = seeded_sample(ds.valid, 1000)[: args.mentions]
    gold = gold_of(mentions)
    train = datasets.load(WIKIMEL, "melbench", "train").valid
    runs = ROOT / "eval" / "runs" / "prompt_descriptions"
    runs.mkdir(parents=True, exist_ok=True)
    timings = {}

    retriever = CandidateRetriever(kb, show_progress=True)
    cands = retriever.retrieve(mentions, args.c)
    recall = recall_at(cands, mentions, (1, args.c))
    entities = list({c.entity_id: kb.get(c.entity_id) for cs in cands for c in cs}.values())

    # LLM-written descriptions of the candidate entities, SmolLM2 behind a local vLLM server.
    llm_desc = runs / "smollm2-descriptions.jsonl"
    t0 = time.perf_counter()
    with LocalServer(None, name="smollm2", log=runs / "server.log") as server:
        summary = describe(entities, DescribeConfig(base_url=server.base_url, model="smollm2", concurrency=32),
                           runs / "describe-cache.jsonl", llm_desc)
    timings["describe entities/s"] = summary.requested / (time.perf_counter() - t0) if summary.requested else None
    print(summary.line(), flush=True)
    descriptions = {"KB (qid2abs)": None, "SmolLM2-written": read_descriptions(llm_desc),
                    "names only": {e.id: "" for e in entities}}

    backend = load_backend(args.backend, None, **({"compile": True} if args.backend == "vllm" else {}))
    pool = demonstration_pool(train, kb)
    demos = make_retriever("simcse", pool)
    rows = []
    plain = ROOT / "eval" / "runs" / "wikimel_discriminative" / "generative-test.jsonl"
    plain_recs = read_predictions(plain) if plain.exists() else {}
    if not all(m.id in plain_recs for m in mentions):
        linker = GenerativeLinker(kb, backend, demos, GenerativeConfig(num_demos=16, num_beams=5))
        link_to_file(linker, mentions, runs / "plain.jsonl", chunk_size=128, resume=True, total=len(mentions))
        plain_recs = read_predictions(runs / "plain.jsonl")
    rows.append({"run": "no candidates in the prompt", "trie": "KB", **score(plain_recs, gold).to_dict()})
    variants = [("KB (qid2abs)", "kb"), ("KB (qid2abs)", "candidates"), ("SmolLM2-written", "kb"),
                ("names only", "kb")]
    for label, scope in variants:
        cfg = GenerativeConfig(num_demos=16, num_beams=5, prompt="gemel_candidates", candidates_in_prompt=args.c,
                               trie_scope=scope)
        linker = GenerativeLinker(kb, backend, demos, cfg, candidates=retriever, descriptions=descriptions[label])
        path = runs / f"{label.split()[0].lower()}-{scope}.jsonl"
        t0 = time.perf_counter()
        link_to_file(linker, mentions, path, chunk_size=128, resume=True, total=len(mentions))
        timings[f"{label}, trie {scope}: s"] = time.perf_counter() - t0
        rows.append({"run": f"top-{args.c} candidates, {label} descriptions",
                     "trie": "KB" if scope == "kb" else "candidates", **score(read_predictions(path), gold).to_dict()})
        print(rows[-1], flush=True)
    write(args, rows, recall, timings, len(entities), summary)
    return 0


def write(args, rows, recall, timings, n_entities, summary) -> None:
    meta = {"command": "python eval/bench_prompt_descriptions.py " + " ".join(sys.argv[1:]),
            "machine": machine_line(), "date": time.strftime("%Y-%m-%d"), "mentions": args.mentions, "c": args.c,
            "described_entities": n_entities, "describe": summary.line(), "timings": timings}
    (args.out / "prompt_descriptions.json").write_text(json.dumps({"meta": meta, "recall": recall, "rows": rows},
                                                                  indent=2) + "\n")
    lines = ["# Candidates with descriptions in the generative prompt (WikiMEL test)", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- mentions: the first {args.mentions} of the generative suite's seeded 1,000-mention test sample; "
             f"SmolLM2-135M, 16 SimCSE demonstrations, beam 5 ({args.backend}); top-{args.c} candidates from BM25 + "
             f"dense retrieval (recall@1 {recall[1]:.3f}, recall@{args.c} {recall[args.c]:.3f}), the same in every run",
             f"- SmolLM2-written descriptions: {n_entities} candidate entities, `gen-linker describe` against a local "
             f"vLLM server ({summary.line()})", "",
             "| run | trie | Top-1 | Top-5 | MRR |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['trie']} | {r['top1']:.4f} | {r['top5']:.4f} | {r['mrr']:.4f} |")
    lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items() if v is not None)]
    (args.out / "prompt_descriptions.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
