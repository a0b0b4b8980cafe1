"""Choose the LLM judge's settings on dev (never test): which unsure answers it reads
(`rerank.judge_below`) and how much its letters weigh beside the fusion (`rerank.judge_weight`).

    gen-linker get-judge                      # once: the judge LLM, into the gen-linker cache
    python eval/fit_judge.py [--judge qwen2.5-coder-1.5b-instruct] [--adapter eval/runs/linkers/wikimel-judge]

Dev: the entity-disjoint split's dev mentions that the default's fusion was *not* fitted on
(the recipe fits it on a seeded 1,500 of them: its confidences on those would be optimistic),
linked by the shipped default with the split's train as its labelled pool, as in training.
The judge is asked once per mention whose confidence is below the largest threshold tried;
each grid point then re-ranks with `gen_linker.judge.combine`, as the linker does. The chosen
point (best dev Top-1; ties to the smaller weight, then the lower threshold) is the spec's
default; the last step links dev through the real linker with it and checks the same Top-1.
Writes eval/results/judge_fit.md and .json (with --adapter, a LoRA-tuned judge from
`gen-linker train --recipe adapters/wikimel-judge.yaml`: judge_fit_ADAPTERNAME.md and .json).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_line  # noqa: E402
from wikimel import disjoint_fusion_data  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BELOW = (0.5, 0.6, 0.7, 0.8, 0.9)
WEIGHTS = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def fit_temperature(scores: list[np.ndarray], right: list[bool], masses: list[float]) -> float:
    """The temperature whose judged confidences (as the linker computes them: times the fusion's
    probability of the judged candidates) best predict right answers (binary log loss)."""
    from gen_linker.judge import judged_confidence

    def loss(t: float) -> float:
        p = np.clip([judged_confidence(s, t, w) for s, w in zip(scores, masses)], 1e-6, 1 - 1e-6)
        y = np.asarray(right, dtype=float)
        return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())

    return min((round(t, 2) for t in np.geomspace(0.25, 8.0, 41)), key=loss) if scores else 1.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judge", default="qwen2.5-coder-1.5b-instruct", help="the judge LLM (name or folder)")
    ap.add_argument("--adapter", type=Path, help="the judge's trained LoRA folder (gen-linker train, task: judge)")
    ap.add_argument("--candidates", type=int, default=5, help="options per question")
    ap.add_argument("--out", type=Path, default=ROOT / "eval" / "results")
    args = ap.parse_args()
    import gen_linker.data as packaged
    from gen_linker.fusion import expected_calibration_error
    from gen_linker.judge import LLMJudge, combine, options, question
    from gen_linker.loader import load_linker, read_spec

    data, split, fusion_dev, _ = disjoint_fusion_data()
    kb = data["test"].kb
    fitted = {m.id for m in fusion_dev}
    dev = [m for m in split.dev if m.id not in fitted and m.gold in kb]
    pool = ROOT / "eval" / "runs" / "wikimel_disjoint" / "train.jsonl"
    if not pool.exists():
        raise SystemExit(f"{pool} is missing: run gen-linker compare --suite eval/suites/wikimel_disjoint_fewshot.yaml "
                         "once (its prepare step writes the split)")
    base = read_spec(Path(packaged.__file__).parent / "linkers" / "default").merged(
        {"generative.demos": str(pool), "generative.demos_format": "jsonl", "top_k": 20})
    fused = load_linker(kb, base)
    plain = fused.link(dev)
    judge = LLMJudge(args.judge, base.backend.dtype, adapter=str(args.adapter) if args.adapter else None)
    asked = [i for i, r in enumerate(plain) if r.confidence is not None and r.confidence < max(BELOW)
             and len(r.candidates) > 1]
    t0 = time.perf_counter()
    tops = [plain[i].candidates[: args.candidates] for i in asked]
    logprobs = judge.letter_logprobs([question(dev[i], options(kb, [c.entity_id for c in top], fused.descriptions))
                                      for i, top in zip(asked, tops)], [len(top) for top in tops])
    per_question = (time.perf_counter() - t0) / max(1, len(asked))
    bm25_top1 = float(np.mean([r.entity_id == m.gold for r, m in zip(load_linker(kb, {"linker": "bm25"}).link(dev), dev)]))
    base_right = np.array([r.entity_id == m.gold for r, m in zip(plain, dev)])
    grid = []
    for below in BELOW:
        for weight in WEIGHTS:
            right = base_right.copy()
            for i, top, lp in zip(asked, tops, logprobs):
                if plain[i].confidence < below:
                    new = combine([c.score for c in top], lp, weight)
                    right[i] = top[int(np.argmax(new))].entity_id == dev[i].gold
            grid.append({"below": below, "weight": weight, "judged": sum(plain[i].confidence < below for i in asked),
                         "top1": float(right.mean())})
    best = max(grid, key=lambda g: (round(g["top1"], 9), -g["weight"], -g["below"]))
    judged = [(i, top, lp) for i, top, lp in zip(asked, tops, logprobs) if plain[i].confidence < best["below"]]
    scores = [combine([c.score for c in top], lp, best["weight"]) for _, top, lp in judged]
    right = [top[int(np.argmax(s))].entity_id == dev[i].gold for (i, top, _), s in zip(judged, scores)]
    masses = [float(fused.fusion.confidences(np.array([c.score for c in plain[i].candidates]))[: len(top)].sum())
              for i, top, _ in judged]             # top_k 20 = every candidate the fusion ranked
    temperature = fit_temperature(scores, right, masses)
    # the same dev mentions through the linker's own judging step, with the judge already loaded
    fused.judge = judge
    fused.judge_settings = base.merged({"rerank.judge_below": best["below"], "rerank.judge_weight": best["weight"],
                                        "rerank.judge_temperature": temperature,
                                        "rerank.judge_candidates": args.candidates}).rerank
    check = fused.link(dev)
    check_top1 = float(np.mean([r.entity_id == m.gold for r, m in zip(check, dev)]))
    ece = {"default": expected_calibration_error([r.confidence for r in plain], list(base_right)),
           "judged": expected_calibration_error([r.confidence for r in check], [r.entity_id == m.gold
                                                                                 for r, m in zip(check, dev)])}
    result = {"command": "python eval/fit_judge.py" + (f" --judge {args.judge}" if args.judge != ap.get_default("judge")
                                                       else "") + (f" --adapter {args.adapter}" if args.adapter else ""),
              "machine": machine_line(), "date": date.today().isoformat(), "judge": args.judge,
              "adapter": str(args.adapter) if args.adapter else None,
              "dev_mentions": len(dev), "asked": len(asked), "seconds_per_question": per_question,
              "bm25_top1": bm25_top1, "default_top1": float(base_right.mean()), "grid": grid, "chosen": best, "temperature": temperature,
              "ece_dev": ece, "linker_check_top1": check_top1}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "judge_fit" + (f"_{args.adapter.name}" if args.adapter else "")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# {stem}", "",
             "The LLM judge's settings chosen on dev: the entity-disjoint split's dev mentions the default's fusion "
             "was not fitted on, linked by the shipped default (pool: the split's train).", "",
             f"- command: `{result['command']}`", f"- machine: {result['machine']}", f"- date: {result['date']}",
             f"- judge: {args.judge}" + (f" + LoRA {args.adapter}" if args.adapter else "") + f"; {len(dev)} dev mentions, the default's Top-1 {base_right.mean():.4f}; "
             f"{len(asked)} asked (confidence < {max(BELOW)}), {per_question:.2f} s per question",
             f"- chosen: judge_below {best['below']}, judge_weight {best['weight']}: dev Top-1 {best['top1']:.4f} "
             f"(linked again through the linker with them: {check_top1:.4f})",
             "", "| linker (same dev mentions) | Top-1 |", "|---|---|", f"| bm25 | {bm25_top1:.4f} |",
             f"| the default | {base_right.mean():.4f} |",
             f"| the default + judge (chosen settings, through the linker) | {check_top1:.4f} |", "",
             f"- the judged answers' confidence: temperature {temperature:.2f} (the binary log loss of confidence against "
             f"correctness over the {len(judged)} judged dev answers, grid 0.25-8); dev ECE {ece['judged']:.3f} "
             f"(the default alone: {ece['default']:.3f})", "",
             "| judge_below \\ judge_weight | " + " | ".join(str(w) for w in WEIGHTS) + " |",
             "|---|" + "---|" * len(WEIGHTS)]
    for below in BELOW:
        row = [g for g in grid if g["below"] == below]
        lines.append(f"| {below} ({row[0]['judged']} judged) | " + " | ".join(f"{g['top1']:.4f}" for g in row) + " |")
    lines.append("| bm25, the same mentions (no judge) | " + " | ".join(f"{bm25_top1:.4f}" for _ in WEIGHTS) + " |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if abs(check_top1 - best["top1"]) < 1e-9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
