"""Trained text rerankers on sentence-transformers' training API: a cross-encoder that reads a
mention in its sentence together with one candidate's name and description, and a fine-tuned
bi-encoder (the dense retriever, and DIM's text tower).

Both start from the packaged all-MiniLM-L6-v2 and train LoRA layers through peft (the
cross-encoder also its new one-logit head), so a trained model is a small PEFT folder
(`adapter_config.json` + `adapter_model.safetensors`, ~1.4 MB) beside a `reranker.yaml` card,
small enough to ship inside the package; `full: true` trains every weight instead (a ~90 MB
folder, loaded from where it is). Hard negatives come from the candidate retriever: the
entities a reranker must learn to tell apart are the ones retrieval confuses.

- cross-encoder: `ListNetLoss` over (query, [gold, negatives...]) groups with a one-hot target
  (gold label 20, see `_train_crossencoder`), i.e. a softmax
  cross-entropy over each mention's candidates (the listwise objective of the fusion issue's
  probe, which reached 0.861 on WikiMEL with 4,000 mentions);
- bi-encoder: `MultipleNegativesRankingLoss` over (mention, gold, hard negative) triplets, with
  the rest of the batch as further negatives.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import yaml

from .candidates import mention_text
from .errors import GenLinkerError
from .kb import KnowledgeBase
from .schema import Mention

CARD = "reranker.yaml"
PEFT_CONFIG, PEFT_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
KINDS = ("crossencoder", "biencoder")


def document_text(name: str, description: str | None, words: int = 40) -> str:
    """What a reranker reads of an entity: its name and the start of its description."""
    if not description:
        return name
    parts = description.split()
    return f"{name}: {' '.join(parts[:words])}"


def query_text(mention: Mention) -> str:
    """What a reranker reads of a mention: the mention, then its sentence."""
    return mention_text(mention)


@dataclass
class RerankerConfig:
    kind: str = "crossencoder"          # crossencoder | biencoder
    base: str | None = None             # starting model (default: packaged all-MiniLM-L6-v2)
    mentions: int | None = None         # training mentions used (a seeded sample; None: all)
    negatives: int = 7                  # hard negatives per mention (cross-encoder); 1 (bi-encoder)
    candidates: int = 30                # retrieval depth the negatives are drawn from
    epochs: int = 1
    lr: float = 4e-5
    batch_size: int = 4                 # mentions per step (cross-encoder); triplets (bi-encoder: 32)
    max_length: int = 128
    description_words: int = 40
    lora: dict | None = field(default_factory=lambda: {"r": 8, "alpha": 16})
    full: bool = False                  # train every weight instead of LoRA
    dev_mentions: int = 200             # dev mentions ranked for the learning curve
    dev_every: int | None = None        # steps between dev checks (None: at the end only)
    seed: int = 0
    max_seconds: float | None = None    # stop training after this long (the weights so far are kept)


# ---------------------------------------------------------------------------- loading
def _base_path(base: str | None) -> str:
    from .models import resolve_sentence_encoder

    return resolve_sentence_encoder(base)


def read_card(folder: str | Path) -> dict:
    folder = Path(folder)
    if not (folder / CARD).exists():
        raise GenLinkerError(f"{folder} is not a trained reranker (no {CARD}); train one with gen-linker train-reranker")
    try:
        return yaml.safe_load((folder / CARD).read_text()) or {}
    except yaml.YAMLError as e:
        raise GenLinkerError(f"{folder / CARD} is not valid YAML: {e}") from None


def _check_weights(folder: Path, card: dict) -> None:
    """The weights the card promises are there and readable (never a silent untrained model)."""
    from safetensors import safe_open

    weights = folder / (PEFT_WEIGHTS if not card.get("full") else "model.safetensors")
    if not weights.exists():
        raise GenLinkerError(f"trained reranker {folder}: {weights.name} is missing; retrain it with "
                             "gen-linker train-reranker")
    try:
        with safe_open(str(weights), "pt") as f:
            list(f.keys())
    except Exception as e:  # safetensors raises several types for a truncated or corrupt file
        raise GenLinkerError(f"trained reranker {folder}: {weights.name} is unreadable or corrupt ({e}); "
                             "retrain it with gen-linker train-reranker") from None


def load_crossencoder(folder: str | Path, max_length: int | None = None):
    """A trained cross-encoder (LoRA on its base, or a full folder), in eval mode."""
    from sentence_transformers.cross_encoder import CrossEncoder

    folder = Path(folder)
    card = read_card(folder)
    if card.get("kind") != "crossencoder":
        raise GenLinkerError(f"{folder} is a {card.get('kind')} reranker, not a cross-encoder")
    _check_weights(folder, card)
    length = max_length or card.get("max_length", 128)
    if card.get("full"):
        return CrossEncoder(str(folder), num_labels=1, max_length=length, device="cpu")
    model = CrossEncoder(_base_path(card.get("base")), num_labels=1, max_length=length, device="cpu")
    model.load_adapter(str(folder))
    return model.eval()


def load_biencoder(folder: str | Path):
    """A trained bi-encoder as a SentenceTransformer (LoRA on its base, or a full folder)."""
    from sentence_transformers import SentenceTransformer

    folder = Path(folder)
    card = read_card(folder)
    if card.get("kind") != "biencoder":
        raise GenLinkerError(f"{folder} is a {card.get('kind')} reranker, not a bi-encoder")
    _check_weights(folder, card)
    if card.get("full"):
        return SentenceTransformer(str(folder), device="cpu")
    model = SentenceTransformer(_base_path(card.get("base")), device="cpu")
    model.load_adapter(str(folder))
    return model.eval()


def is_reranker_folder(path: str | Path) -> bool:
    return (Path(path) / CARD).exists()


class CrossEncoderScorer:
    """Scores of (mention, candidate entity) pairs by a trained cross-encoder (raw logits)."""

    def __init__(self, folder: str | Path, kb: KnowledgeBase, descriptions: Mapping[str, str] | None = None,
                 batch_size: int = 64) -> None:
        self.folder, self.kb, self.batch_size = Path(folder), kb, batch_size
        self.card = read_card(folder)
        self.model = load_crossencoder(folder)
        self.descriptions = descriptions or {}
        self.words = self.card.get("description_words", 40)

    def score(self, mentions: Sequence[Mention], candidates: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Per mention, the scores of its candidate ids (in the given order)."""
        import torch

        pairs, sizes = [], []
        for m, ids in zip(mentions, candidates):
            q = query_text(m)
            for eid in ids:
                ent = self.kb.get(eid)
                pairs.append((q, document_text(ent.name, self.descriptions.get(eid, ent.description), self.words)))
            sizes.append(len(ids))
        flat = (self.model.predict(pairs, batch_size=self.batch_size, activation_fn=torch.nn.Identity(),
                                   show_progress_bar=False, convert_to_numpy=True) if pairs else np.zeros(0))
        flat = np.asarray(flat, dtype=np.float64).reshape(-1)
        out, start = [], 0
        for n in sizes:
            out.append(flat[start : start + n])
            start += n
        return out


# ---------------------------------------------------------------------------- training
@dataclass
class RerankerReport:
    examples: int = 0
    train_s: float = 0.0
    train_loss: float | None = None
    dev_curve: list = field(default_factory=list)     # (training mentions seen, dev Top-1 of the reranking)
    peak_rss_gb: float | None = None
    stopped_at_step: int | None = None                # where the time budget stopped it (None: it did not)


def hard_negative_lists(kb: KnowledgeBase, mentions: Sequence[Mention], retriever, depth: int
                        ) -> list[tuple[Mention, list[str]]]:
    """(mention, retrieved non-gold entity ids best first) for mentions with a gold in the KB."""
    usable = [m for m in mentions if m.gold is not None and m.gold in kb]
    lists = retriever.retrieve(usable, depth)
    return [(m, [c.entity_id for c in cands if c.entity_id != m.gold]) for m, cands in zip(usable, lists)]


def train_reranker(kb: KnowledgeBase, train: Sequence[Mention], output: str | Path, retriever,
                   config: RerankerConfig | None = None, descriptions: Mapping[str, str] | None = None,
                   dev: Sequence[Mention] = (), progress: bool = True) -> RerankerReport:
    """Train a cross-encoder or bi-encoder on `train` (hard negatives from `retriever`) and
    write it to `output` (PEFT folder or full model, and the card)."""
    import random
    import resource

    import torch

    config = config or RerankerConfig()
    if config.kind not in KINDS:
        raise GenLinkerError(f"unknown reranker kind {config.kind!r}: use one of {', '.join(KINDS)}")
    torch.manual_seed(config.seed)
    pool = [m for m in train if m.gold is not None and m.gold in kb]
    if not pool:
        raise GenLinkerError("no training mention has a gold entity in the KB")
    if config.mentions and config.mentions < len(pool):
        pool = random.Random(config.seed).sample(pool, config.mentions)
    descriptions = descriptions or {}
    doc = {}

    def text(eid: str) -> str:
        if eid not in doc:
            ent = kb.get(eid)
            doc[eid] = document_text(ent.name, descriptions.get(eid, ent.description), config.description_words)
        return doc[eid]

    report = RerankerReport()
    lists = hard_negative_lists(kb, pool, retriever, config.candidates)
    rng = random.Random(config.seed)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    dev_lists = [(m, [m.gold] + negs[:19]) for m, negs in
                 hard_negative_lists(kb, list(dev)[: config.dev_mentions], retriever, 20)] if dev else []
    curve = DevCurve(config, dev_lists, text, report)
    t0 = time.perf_counter()
    if config.kind == "crossencoder":
        model, loss_value = _train_crossencoder(config, lists, text, rng, output, progress, curve)
    else:
        model, loss_value = _train_biencoder(config, lists, text, rng, output, progress, curve)
    report.examples = len(lists)
    if dev_lists:
        curve.measure(model, len(lists) * max(config.epochs, 0))
    report.train_s = time.perf_counter() - t0
    report.train_loss = loss_value
    report.peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    if config.full:
        model.save_pretrained(str(output))
    else:   # the LoRA layers (and the cross-encoder's head) as a PEFT folder
        model.transformers_model.save_pretrained(str(output))
    card = {"kind": config.kind, "base": config.base, "full": config.full, "max_length": config.max_length,
            "description_words": config.description_words, "training": asdict(config),
            "report": asdict(report), "created": time.strftime("%Y-%m-%d %H:%M")}
    (output / CARD).write_text(yaml.safe_dump(card, sort_keys=False))
    return report


def _lora_config(config: RerankerConfig, task: str):
    from peft import LoraConfig

    lora = {"r": 8, "alpha": 16, "dropout": 0.0, **(config.lora or {})}
    extra = {"modules_to_save": ["classifier"]} if task == "SEQ_CLS" else {}
    return LoraConfig(task_type=task, r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                      target_modules=lora.get("targets", ["query", "key", "value", "dense"]), **extra)


def _training_args(config: RerankerConfig, output: Path, progress: bool, per_device: int):
    return dict(output_dir=str(output / "trainer"), num_train_epochs=config.epochs,
                per_device_train_batch_size=per_device, learning_rate=config.lr, warmup_steps=0.1,
                lr_scheduler_type="linear", report_to=[], logging_steps=50, save_strategy="no", use_cpu=True,
                seed=config.seed, disable_tqdm=not progress, dataloader_num_workers=0)


class DevCurve:
    """Dev Top-1 of the reranking (gold among its 19 hardest negatives) every `dev_every`
    steps: the learning curve of a training run."""

    def __init__(self, config: RerankerConfig, dev_lists, text, report: RerankerReport) -> None:
        self.config, self.dev_lists, self.text, self.report = config, dev_lists, text, report

    def measure(self, model, seen: int) -> None:
        import torch

        if not self.dev_lists:
            return
        hits = []
        with torch.no_grad():
            for m, ids in self.dev_lists:
                q = query_text(m)
                if self.config.kind == "crossencoder":
                    s = model.predict([(q, self.text(e)) for e in ids], activation_fn=torch.nn.Identity(),
                                      show_progress_bar=False)
                else:
                    emb = model.encode([q] + [self.text(e) for e in ids], normalize_embeddings=True,
                                       show_progress_bar=False)
                    s = emb[1:] @ emb[0]
                s = np.asarray(s, dtype=float)
                hits.append(int(len(s) == 1 or s[0] > s[1:].max()))      # a tie is a miss
        self.report.dev_curve.append((seen, float(np.mean(hits))))

    def callback(self, model, per_step: int):
        """The trainer callback that measures the curve, and stops at `config.max_seconds`."""
        from transformers import TrainerCallback

        curve, every, budget = self, self.config.dev_every, self.config.max_seconds
        start = time.perf_counter()

        class _Every(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if every and state.global_step % every == 0:
                    was = model.training
                    model.eval()
                    curve.measure(model, state.global_step * per_step)
                    model.train(was)
                if budget is not None and time.perf_counter() - start > budget:
                    curve.report.stopped_at_step = state.global_step
                    control.should_training_stop = True

        return _Every()


GOLD_LABEL = 20.0     # the gold's ListNet label (the negatives': 0), see _train_crossencoder


def _train_crossencoder(config, lists, text, rng, output: Path, progress: bool, curve: DevCurve):
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (CrossEncoder, CrossEncoderTrainer,
                                                     CrossEncoderTrainingArguments)
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    model = CrossEncoder(_base_path(config.base), num_labels=1, max_length=config.max_length, device="cpu")
    if not config.full:
        model.add_adapter(_lora_config(config, "SEQ_CLS"))
    queries, docs, labels = [], [], []
    for m, negs in lists:
        group = [m.gold] + negs[: config.negatives]
        order = list(range(len(group)))
        rng.shuffle(order)
        queries.append(query_text(m))
        docs.append([text(group[i]) for i in order])
        # ListNet's target is the softmax of the labels: 0/1 labels would give the gold only
        # e / (e + 7) = 28% of the target among 8, i.e. a gold scored one nat above the
        # negatives is already optimal and the loss can only fall from ln 8 = 2.08 to ~2.0 (the
        # flat loss of the first full-scale run). A label of 20 makes the target one-hot to
        # within 1e-8: the cross-entropy of the gold under a softmax over its group.
        labels.append([GOLD_LABEL if order[j] == 0 else 0.0 for j in range(len(group))])
    if config.epochs <= 0:                      # nothing to train: the starting point, saved as such
        return model.eval(), None
    data = Dataset.from_dict({"query": queries, "docs": docs, "labels": labels})
    args = CrossEncoderTrainingArguments(**_training_args(config, output, progress, config.batch_size))
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=ListNetLoss(model),
                                  callbacks=[curve.callback(model, config.batch_size)])
    result = trainer.train()
    _cleanup(output)
    return model.eval(), float(result.training_loss)


def _train_biencoder(config, lists, text, rng, output: Path, progress: bool, curve: DevCurve):
    from datasets import Dataset
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.losses import MultipleNegativesRankingLoss
    from sentence_transformers.training_args import BatchSamplers

    model = SentenceTransformer(_base_path(config.base), device="cpu")
    if not config.full:
        model.add_adapter(_lora_config(config, "FEATURE_EXTRACTION"))
    anchors, positives, negatives = [], [], []
    for m, negs in lists:
        if not negs:
            continue
        anchors.append(query_text(m))
        positives.append(text(m.gold))
        negatives.append(text(negs[0]))
    if config.epochs <= 0:
        return model.eval(), None
    data = Dataset.from_dict({"anchor": anchors, "positive": positives, "negative": negatives})
    args = SentenceTransformerTrainingArguments(**_training_args(config, output, progress, config.batch_size),
                                                batch_sampler=BatchSamplers.NO_DUPLICATES)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data,
                                         loss=MultipleNegativesRankingLoss(model),
                                         callbacks=[curve.callback(model, config.batch_size)])
    result = trainer.train()
    _cleanup(output)
    return model.eval(), float(result.training_loss)


def _cleanup(output: Path) -> None:
    import shutil

    shutil.rmtree(output / "trainer", ignore_errors=True)
    os.environ.pop("ACCELERATE_USE_CPU", None)
