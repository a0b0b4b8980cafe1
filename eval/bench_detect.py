"""Mention detection on WikiMEL: the gazetteer detector's spans vs the annotated mentions.

    python eval/bench_detect.py [--split test] [--cases smart,exact,ignore]

Gold: each sample's `mentions` strings located in its sentence (as the WikiMEL loader does;
samples with a mention that cannot be located are left out, and counted). Predicted:
`gen_linker.detect.detect_mentions(sentence, kb, case)` over the WikiMEL KB (18,880 entity
names, no aliases). Micro precision / recall / F1 over all spans of the split, exact spans
and overlapping spans; the gazetteer's recall ceiling (gold mentions written as a KB surface
form, ignoring case); detection speed. WikiMEL annotates one or two mentions per sentence,
not every name in it, so precision here counts unannotated but real names as errors: it is a
lower bound. Writes eval/results/detect.md and .json.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from gen_linker import datasets
from gen_linker.detect import CASE_MODES, Gazetteer, surface_forms
from gen_linker.errors import RecordError
from machine import machine_line
from wikimel import WIKIMEL


def prf(tp_p: int, n_pred: int, tp_g: int, n_gold: int) -> dict:
    p = tp_p / n_pred if n_pred else 0.0
    r = tp_g / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def gold_samples(split: str):
    """{sample id: (sentence, [(start, end)])} and how many samples were left out."""
    ds = datasets.load(WIKIMEL, "melbench", split)
    samples: dict[str, tuple[str, list]] = {}
    broken: set[str] = set()
    for rec in ds.mentions:
        if isinstance(rec, RecordError):
            broken.add((rec.record_id or "").rsplit("-", 1)[0])
            continue
        sid = rec.id.rsplit("-", 1)[0]
        samples.setdefault(sid, (rec.text, []))[1].append((rec.start, rec.end))
    return {k: v for k, v in samples.items() if k not in broken}, len(broken), ds.kb


def score(samples, gaz: Gazetteer, case: str) -> dict:
    counts = defaultdict(int)
    t0 = time.perf_counter()
    predicted = {sid: gaz.find(text, case) for sid, (text, _) in samples.items()}
    seconds = time.perf_counter() - t0
    for sid, (text, gold) in samples.items():
        pred = [(s, e) for s, e, _ in predicted[sid]]
        gold_set = set(gold)
        counts["pred"] += len(pred)
        counts["gold"] += len(gold)
        counts["exact"] += sum(1 for p in pred if p in gold_set)
        counts["pred_overlap"] += sum(1 for s, e in pred if any(s < ge and gs < e for gs, ge in gold))
        counts["gold_overlap"] += sum(1 for gs, ge in gold if any(s < ge and gs < e for s, e in pred))
    chars = sum(len(text) for text, _ in samples.values())
    return {"case": case, "predicted": counts["pred"], "gold": counts["gold"],
            "exact": prf(counts["exact"], counts["pred"], counts["exact"], counts["gold"]),
            "overlap": prf(counts["pred_overlap"], counts["pred"], counts["gold_overlap"], counts["gold"]),
            "sentences_per_s": len(samples) / seconds, "chars_per_s": chars / seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", default="test", choices=("train", "dev", "test"))
    ap.add_argument("--cases", default=",".join(CASE_MODES), help="case modes to measure (default: all)")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    samples, left_out, kb = gold_samples(args.split)
    t0 = time.perf_counter()
    gaz = Gazetteer.from_kb(kb)
    build_s = time.perf_counter() - t0
    folded = {re.sub(r"\s+", " ", f).casefold() for e in kb for n in (e.name, *e.aliases) for f in surface_forms(n)}
    gold_mentions = [re.sub(r"\s+", " ", text[s:e]).casefold() for text, spans in samples.values() for s, e in spans]
    ceiling = sum(m in folded for m in gold_mentions) / len(gold_mentions)
    rows = [score(samples, gaz, case) for case in args.cases.split(",")]
    meta = {"command": "python eval/bench_detect.py " + " ".join(sys.argv[1:]), "machine": machine_line(),
            "date": time.strftime("%Y-%m-%d"), "split": args.split, "sentences": len(samples),
            "gold_mentions": len(gold_mentions), "samples_left_out": left_out, "kb_entities": len(kb),
            "surface_forms": len(gaz), "gazetteer_build_s": build_s, "recall_ceiling": ceiling}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detect.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    lines = ["# Mention detection on WikiMEL: the gazetteer detector vs the annotated mentions", "",
             f"- command: `{meta['command']}`", f"- machine: {meta['machine']}", f"- date: {meta['date']}",
             f"- data: WikiMEL {args.split} split, {len(samples)} sentences with {len(gold_mentions)} annotated "
             f"mentions ({left_out} samples left out: a mention not found in its sentence)",
             f"- detector: `gen_linker.detect`, longest match over {len(gaz)} surface forms of {len(kb)} KB entities "
             f"(names, and names without a Wikipedia disambiguator; this KB has no aliases), built in "
             f"{build_s:.2f} s",
             f"- recall ceiling of any gazetteer over these names: {ceiling:.3f} of the gold mentions are written "
             "as a KB surface form (ignoring case); the rest are surnames, short forms or nicknames",
             "- precision counts every detected span that is not an annotated mention as wrong, but WikiMEL "
             "annotates only some of the names in a sentence: it is a lower bound", "",
             "| case | detected | exact P | exact R | exact F1 | overlap P | overlap R | overlap F1 | sentences/s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        e, o = r["exact"], r["overlap"]
        lines.append(f"| {r['case']} | {r['predicted']} | {e['precision']:.3f} | {e['recall']:.3f} | {e['f1']:.3f} | "
                     f"{o['precision']:.3f} | {o['recall']:.3f} | {o['f1']:.3f} | {r['sentences_per_s']:.0f} |")
    (args.out / "detect.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
