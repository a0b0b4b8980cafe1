"""Throughput: `gen-linker link`'s batched tree-attention beam search vs a reference loop that
links one mention at a time with plain HF `generate` and a GENRE-style nested-dict trie.

    python eval/bench_throughput.py [--mentions 40] [--beams 5] [--num-demos 16]

Same model object (SmolLM2-135M, the default dtype), same prompts (16 SimCSE demonstrations
from WikiMEL train), same trie contents, same scoring (summed log-probs: length_penalty=0),
measured in one run; the table reports mentions/s of each, the ratio, and how often the two
agree on the top-1 name.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from gen_linker import datasets, load_linker
from machine import machine_line
from reference import NestedDictTrie, reference_link
from wikimel import WIKIMEL, WIKIMEL_DEMOS, seeded_sample

ROOT = Path(__file__).resolve().parent.parent



def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mentions", type=int, default=40)
    ap.add_argument("--beams", type=int, default=5)
    ap.add_argument("--num-demos", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()

    test = datasets.load(WIKIMEL, split="test")
    sample = seeded_sample(test.valid, args.mentions, args.seed)
    linker = load_linker(test.kb, {"generative": {**WIKIMEL_DEMOS, "num_demos": args.num_demos, "beams": args.beams,
                                                  "batch_size": args.batch_size}})
    trie = linker.trie
    prompts = linker.prompts(sample)                       # retrieval is outside both timings
    names = test.kb.names()
    nested = NestedDictTrie(seq + [trie.end_token] for seq, _ in trie.sequences())
    tok = linker.backend.tokenizer

    # warm-up, so neither side pays first-call costs
    linker.backend.constrained_beam_search(prompts[:2], trie, args.beams)
    reference_link(linker.backend.model, tok, prompts[0], nested, trie.end_token, args.beams)

    t0 = time.perf_counter()
    got = linker.decode(prompts)                            # what `link` does after retrieval
    ours = [names[h[0].value] for h in got]
    ours_score = [h[0].score for h in got]
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    ref, ref_score = [], []
    for p in prompts:
        beams = reference_link(linker.backend.model, tok, p, nested, trie.end_token, args.beams)
        ref.append(tok.decode(beams[0][0]) if beams else None)
        ref_score.append(beams[0][1] if beams else float("-inf"))
    t_ref = time.perf_counter() - t0

    agree = sum(a == b for a, b in zip(ours, ref)) / len(ref)
    # Where they disagree, which search found the more probable name? (0.05: bfloat16 noise)
    differ = [(o, r) for a, b, o, r in zip(ours, ref, ours_score, ref_score) if a != b]
    ours_better = sum(o > r + 0.05 for o, r in differ)
    ref_better = sum(r > o + 0.05 for o, r in differ)
    gold_names = [test.kb.get(m.gold).name for m in sample]
    acc_ours = sum(a == g for a, g in zip(ours, gold_names)) / len(ref)
    acc_ref = sum(a == g for a, g in zip(ref, gold_names)) / len(ref)
    avg_len = sum(map(len, prompts)) / len(prompts)
    row = {"mentions": len(sample), "beams": args.beams, "num_demos": args.num_demos,
           "batch_size": args.batch_size, "avg_prompt_tokens": avg_len,
           "ours_mentions_per_s": len(sample) / t_ours, "reference_mentions_per_s": len(sample) / t_ref,
           "speedup": t_ref / t_ours, "top1_agreement": agree, "top1_ours": acc_ours, "top1_reference": acc_ref,
           "disagreements": len(differ), "ours_higher_score": ours_better, "reference_higher_score": ref_better,
           "dtype": linker.backend.dtype}
    print(json.dumps(row, indent=2))
    cmd = "python eval/bench_throughput.py " + " ".join(sys.argv[1:])
    lines = ["# Throughput: batched tree-attention beam search vs one-at-a-time HF generate", "",
             f"- command: `{cmd.strip()}`", f"- machine: {machine_line()}", f"- date: {time.strftime('%Y-%m-%d')}",
             f"- {len(sample)} WikiMEL test mentions (seed {args.seed}), KB 18,880 names, SmolLM2-135M-Instruct "
             f"({row['dtype']}), {args.num_demos} SimCSE demonstrations (prompts of {avg_len:.0f} tokens on average), "
             f"beam {args.beams}; retrieval and model loading excluded from both timings",
             "", "| linker loop | mentions/s | Top-1 on these mentions |", "|---|---|---|",
             f"| gen-linker hf backend (batch {args.batch_size}, prompt prefilled once, tree attention over beams, array trie states) "
             f"| {row['ours_mentions_per_s']:.3f} | {acc_ours:.3f} |",
             f"| reference: `model.generate` one mention at a time, nested-dict trie `prefix_allowed_tokens_fn` "
             f"| {row['reference_mentions_per_s']:.3f} | {acc_ref:.3f} |",
             "", f"Speed-up: **{row['speedup']:.2f}x**. The two agree on the top-1 name for {agree:.1%} of mentions. "
             f"Of the {len(differ)} disagreements, gen-linker's top-1 has the higher summed log-probability in "
             f"{ours_better}, the reference's in {ref_better}, and the rest are within bfloat16 noise (0.05): both "
             "are beam searches over the same trie and scores, but HF's `early_stopping=True` ends a search as "
             "soon as `num_beams` names are finished, while gen-linker's ends only when no live beam can beat "
             "the k-th finished name."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "throughput.md").write_text("\n".join(lines) + "\n")
    (args.out / "throughput.json").write_text(json.dumps(row, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
