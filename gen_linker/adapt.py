"""`gen-linker adapt`: a saved linker for a new KB from a handful of labelled examples.

What a user with a new KB has is the entities and perhaps a few labelled mentions. `adapt`
turns them into a linker folder that `link`, `compare` and `serve` load, without retraining:

1. the KB folder (entities and the caches the linker reads: BM25, tries, dense embeddings) is
   built inside the new linker folder (`kb/`);
2. the examples become the labelled pool the linker reads at link time (demonstrations, the
   fusion's pool features): `examples.jsonl`;
3. with `MIN_REFIT` or more examples, the fusion model is refitted on them, starting from the
   old linker's and held near it (a quarter of the examples kept aside as dev, to report Top-1
   before and after and to keep the old model when the refit is worse); with `tune`, a LoRA
   update of the dense retriever's encoder on the same examples (within a time budget) is
   tried as well, with the refitted fusion, and kept only where dev Top-1 rises.

Everything is written to a temporary folder beside the output and moved into place at the end
(`save_linker`): a killed `adapt` leaves no half-written linker, and the old linker's folder is
only read.
"""
from __future__ import annotations

import random
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from .datasets.jsonl import write_mentions
from .errors import GenLinkerError
from .schema import Mention

MIN_REFIT = 16          # fewer examples: pool only (a dev split of 3 says nothing)
DEV_SHARE = 0.25
CARD = "adapt.yaml"
KB_DIR, EXAMPLES = "kb", "examples.jsonl"


@dataclass
class AdaptReport:
    """What `adapt` did and measured (also written to the folder's `adapt.yaml`)."""

    entities: int = 0
    examples: int = 0                    # kept (gold in the new KB)
    skipped: list[str] = field(default_factory=list)    # one message per example left out
    fit_examples: int = 0
    dev_examples: int = 0
    dev_top1: dict[str, float] = field(default_factory=dict)    # base / refit / tuned -> dev Top-1
    chosen: str = "base"
    tune_s: float | None = None
    tune_stopped_at_step: int | None = None
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        out = [f"{self.entities} entities, {self.examples} example(s) kept"
               + (f", {len(self.skipped)} skipped" if self.skipped else "")]
        if self.dev_top1:
            scores = ", ".join(f"{k} {v:.3f}" for k, v in self.dev_top1.items())
            out.append(f"dev Top-1 on {self.dev_examples} held-out example(s) (fit on {self.fit_examples}): "
                       f"{scores}; kept: {self.chosen}")
        elif self.examples:
            out.append(f"fewer than {MIN_REFIT} examples: used as the labelled pool, nothing refitted")
        if self.tune_s is not None:
            out.append(f"tuning: {self.tune_s:.0f} s" + (f" (time budget reached at step {self.tune_stopped_at_step})"
                                                         if self.tune_stopped_at_step else ""))
        out.append(f"wall time {self.wall_s:.0f} s")
        return out


def read_examples(path: str | Path, kb, fmt: str = "auto", split: str | None = None
                  ) -> tuple[list[Mention], list[str]]:
    """The labelled examples whose gold is in `kb`, and a message for each one left out (an
    unreadable record, no gold id, a gold id the KB lacks). An example file without a single
    record is an error."""
    from . import datasets

    ds = datasets.load(path, fmt, split)
    if not ds.mentions:
        raise GenLinkerError(f"example file {path} holds no records: give labelled mentions "
                             "(one JSON object per line with a gold entity id), or leave --examples out")
    kept, skipped = [], [f"{path}: {err}" for err in ds.errors]
    for m in ds.valid:
        if m.gold is None:
            skipped.append(f"{path}: example {m.id!r} has no gold entity id")
        elif m.gold not in kb:
            skipped.append(f"{path}: example {m.id!r}: gold id {m.gold!r} is not in the new KB")
        else:
            kept.append(m)
    return kept, skipped


def adapt(kb: str | Path, examples: str | Path | None, output: str | Path, base: str | Path | None = None,
          tune: bool = False, max_minutes: float = 5.0, seed: int = 0, progress: bool = True,
          examples_format: str = "auto") -> AdaptReport:
    """Write a linker folder for the KB `kb` (entities JSONL or KB folder) at `output`, starting
    from the linker folder `base` (None: the packaged default) with `examples` as its pool."""
    from .kb import KnowledgeBase
    from .loader import DEFAULT_LINKER, load_linker, read_spec, save_linker, warm_caches

    t0 = time.perf_counter()
    output = Path(output)
    base_dir = Path(base) if base is not None else DEFAULT_LINKER
    if output.resolve() == base_dir.resolve() or base_dir.resolve() in output.resolve().parents:
        raise GenLinkerError(f"--output {output} is inside the linker it adapts ({base_dir}): "
                             "adapt never writes to the old linker's folder; give a new folder")
    spec = read_spec(base_dir)
    source = KnowledgeBase.open(kb)          # an empty KB fails here, naming the file
    report = AdaptReport(entities=len(source))
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.adapt-", dir=output.parent))
    try:
        kb_folder = _build_kb(source, Path(kb), work / KB_DIR, progress)
        new_kb = KnowledgeBase.open(kb_folder)
        kept: list[Mention] = []
        if examples is not None:
            kept, report.skipped = read_examples(examples, new_kb, examples_format)
            for msg in report.skipped[:20]:
                print(f"skipped: {msg}", file=sys.stderr)
            if len(report.skipped) > 20:
                print(f"skipped: ... and {len(report.skipped) - 20} more (all in {CARD})", file=sys.stderr)
        report.examples = len(kept)
        overrides = {"generative.demos": None, "generative.demos_split": None}
        if kept:
            write_mentions(kept, work / EXAMPLES)
            overrides.update({"generative.demos": str(work / EXAMPLES), "generative.demos_format": "jsonl"})
        spec = spec.merged(overrides)
        if spec.linker == "fused" and len(kept) >= MIN_REFIT:
            spec = _refit(spec, new_kb, kept, work, report, tune, max_minutes, seed, progress)
        warm_caches(load_linker(new_kb, spec, n_mentions=1, progress=progress), new_kb)
        report.wall_s = time.perf_counter() - t0
        card = work / CARD
        card.write_text(yaml.safe_dump({"kb": str(kb), "examples": str(examples) if examples else None,
                                        "from": str(base_dir), "tune": tune, "max_minutes": max_minutes,
                                        "seed": seed, "created": time.strftime("%Y-%m-%d %H:%M"),
                                        "report": asdict(report)}, sort_keys=False))
        save_linker(spec, output, extra={KB_DIR: kb_folder, CARD: card}, bundle={"generative.demos": EXAMPLES})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _build_kb(source, path: Path, folder: Path, progress: bool) -> Path:
    """The new KB as a folder; a KB folder given as input brings its prepared caches along."""
    source.save(folder, progress=progress)
    if path.is_dir() and (path / "cache").is_dir():
        shutil.copytree(path / "cache", folder / "cache")
    return folder


def _refit(spec, kb, examples: Sequence[Mention], work: Path, report: AdaptReport, tune: bool,
           max_minutes: float, seed: int, progress: bool):
    """Refit the fusion (and, with `tune`, the dense encoder) on the examples; the spec of the
    best on the held-out quarter (ties keep the simpler)."""
    from .fusion import FusionConfig, FusionModel, examples_top1, fit

    positions = list(range(len(examples)))      # by position: ids need not be unique
    random.Random(seed).shuffle(positions)
    n_dev = max(4, round(DEV_SHARE * len(positions)))
    dev = set(positions[:n_dev])
    report.fit_examples, report.dev_examples = len(positions) - n_dev, n_dev
    base = FusionModel.load(spec.rerank.fusion)
    config = FusionConfig(kind=base.kind, hidden=base.hidden, lr=0.003, anchor=0.01, patience=20, seed=seed)

    fit_ex, dev_ex = _split(_features(spec, kb, examples, base, progress), dev)
    report.dev_top1["base"] = examples_top1(base, dev_ex)
    refit, _ = fit(fit_ex, base.feature_names, config, init=base)
    refit.card = {**base.card, "adapted_on": len(fit_ex), "adapt_dev": len(dev_ex)}
    report.dev_top1["refit"] = examples_top1(refit, dev_ex)
    models = {"base": base, "refit": refit, "tuned": refit}
    specs = {"base": spec, "refit": spec}
    cache = kb.cache_dir()
    cached_before = set(cache.iterdir()) if cache.is_dir() else set()
    if tune:
        # the tuned encoder is judged with the refit fusion as it is: a fusion refitted on features
        # of the very examples the encoder was trained on would learn to over-trust them
        encoder = _tune_encoder(spec, kb, [m for i, m in enumerate(examples) if i not in dev], work / "biencoder",
                                max_minutes, seed, report, progress)
        specs["tuned"] = spec.merged({"candidates.encoder": str(encoder)})
        held_out = [examples[i] for i in sorted(dev)]
        report.dev_top1["tuned"] = examples_top1(refit, _features(specs["tuned"], kb, examples, base, progress,
                                                                  of=held_out))
    # the refit over the base unless it is worse on dev; tuning only where it is strictly better
    chosen = "refit" if report.dev_top1["refit"] >= report.dev_top1["base"] else "base"
    if "tuned" in report.dev_top1 and report.dev_top1["tuned"] > report.dev_top1[chosen]:
        chosen = "tuned"
    report.chosen = chosen
    if tune and chosen != "tuned":      # the tuned encoder's KB embeddings (and index) are not needed
        for path in set(cache.iterdir()) - cached_before:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    folder = work / "fusion"
    models[chosen].save(folder)
    return specs[chosen].merged({"rerank.fusion": str(folder)})


def _features(spec, kb, examples: Sequence[Mention], base, progress: bool, of: Sequence[Mention] | None = None):
    """The fusion features of the examples (or of those in `of`), each computed with the other
    examples as the labelled pool."""
    from .features import DemoPool
    from .linkers.fused import FusedLinker, fusion_examples
    from .loader import LinkerParts

    parts = LinkerParts(kb, spec, n_mentions=len(examples), progress=progress)
    parts.pool = DemoPool(examples, parts.similarity_encoder, leave_one_out=True)
    linker = FusedLinker.from_spec(spec, parts, fusion=base)
    return fusion_examples(linker, list(examples if of is None else of), progress=progress,
                           desc="fusion features (examples)")


def _split(fusion_examples, dev: set[int]):
    """(fit, dev) examples, `dev` holding the positions of the held-out ones."""
    fit_ex = [e for i, e in enumerate(fusion_examples) if i not in dev]
    dev_ex = [e for i, e in enumerate(fusion_examples) if i in dev]
    return fit_ex, dev_ex


def _tune_encoder(spec, kb, train: Sequence[Mention], folder: Path, max_minutes: float, seed: int,
                  report: AdaptReport, progress: bool) -> Path:
    """A LoRA update of the dense retriever's encoder on the examples (MultipleNegativesRanking
    with retrieved hard negatives), stopped at the time budget."""
    from .loader import LinkerParts
    from .rerankers import RerankerConfig, train_reranker

    parts = LinkerParts(kb, spec, progress=progress)
    config = RerankerConfig(kind="biencoder", base=spec.candidates.encoder, epochs=4, lr=1e-4, batch_size=16,
                            negatives=1, candidates=20, seed=seed, max_seconds=max_minutes * 60)
    result = train_reranker(kb, train, folder, parts.retriever, config, parts.descriptions, progress=progress)
    report.tune_s, report.tune_stopped_at_step = result.train_s, result.stopped_at_step
    return folder


__all__ = ["AdaptReport", "MIN_REFIT", "adapt", "read_examples"]
