"""Training the discriminative linkers (DIM, DWE): N-pair loss against in-batch and retrieved
hard negatives, one loop for both.

The frozen encoders' features are computed once (mentions, KB entities); each step scores a
batch of mentions against the batch's gold entities (each one a negative for the others) and
against each mention's own hard negatives (the top candidates of BM25 + dense retrieval that
are not its gold), plus the model's own terms (DWE: the query-norm penalty and the InfoNCE
terms between image and text). AdamW; a dev-set Top-1 over the retrieved candidates after each
epoch, the best model kept; a checkpoint after each epoch so a killed run resumes.

Settings left unset take the architecture's defaults (`ARCH_DEFAULTS`): DIM's are the ones it
always had; DWE's follow the official code (weight decay 0.001 without decay on biases and
LayerNorm weights, batch 128, 100 warm-up steps then linear decay, gradient norm clipped at
1, hidden 512, 8 heads, dropout 0.4) except the learning rate and epochs: the official 300
epochs at 5e-5 would take days on 2 cores, so DWE trains a few epochs at 1e-3 here.
"""
from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .candidates import CandidateRetriever
from .checkpoints import TrainReport, has_state, read_state, write_state
from .errors import GenLinkerError
from .kb import KnowledgeBase
from .linkers.discriminative import ARCHS, DiscriminativeModel, npair_loss
from .linkers.discriminative_features import DiscriminativeFeaturizer, MentionFeatures
from .schema import Mention

ARCH_DEFAULTS: dict[str, dict] = {
    "dim": {"lr": 1e-3, "weight_decay": 0.01, "batch_size": 64, "dim": 256, "heads": 4, "dropout": 0.0,
            "warmup_steps": 0, "clip_norm": 0.0, "schedule": "constant"},
    "dwe": {"lr": 1e-3, "weight_decay": 0.001, "batch_size": 128, "dim": 512, "heads": 8, "dropout": 0.4,
            "warmup_steps": 100, "clip_norm": 1.0, "schedule": "linear"},
}


@dataclass
class DiscriminativeTrainConfig:
    """Training settings; None: the architecture's default (`ARCH_DEFAULTS`)."""

    epochs: int = 5
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    hard_negatives: int = 8          # per mention, from the candidate retriever
    dev_candidates: int = 100        # the dev check ranks this many retrieved candidates
    dim: int | None = None           # DIM: the fused size; DWE: the hidden size
    heads: int | None = None
    seed: int = 0
    arch: str = "dim"                # dim | dwe
    dropout: float | None = None     # DWE
    warmup_steps: int | None = None  # optimizer steps of linear warm-up
    clip_norm: float | None = None   # gradient norm clip (0: none)
    schedule: str | None = None      # constant | linear (decay to 0 after the warm-up)

    def resolved(self) -> "DiscriminativeTrainConfig":
        """A copy with every unset setting filled from the arch's defaults."""
        if self.arch not in ARCH_DEFAULTS:
            raise GenLinkerError(f"unknown arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        defaults = ARCH_DEFAULTS[self.arch]
        return dataclasses.replace(self, **{k: v for k, v in defaults.items() if getattr(self, k) is None})


DIMTrainConfig = DiscriminativeTrainConfig      # the name DIM's users know


def build_model(config: DiscriminativeTrainConfig, featurizer: DiscriminativeFeaturizer) -> DiscriminativeModel:
    """A fresh model of `config.arch` sized for the featurizer's encoders."""
    c = config.resolved()
    if c.arch == "dwe":
        from .linkers.dwe import DWEConfig, DWEModel

        return DWEModel(DWEConfig(text_dim=featurizer.text_dim, image_dim=featurizer.image_dim, hidden=c.dim,
                                  heads=c.heads, dropout=c.dropout))
    from .linkers.dim import DIMConfig, DIMModel

    return DIMModel(DIMConfig(text_dim=featurizer.text_dim, image_dim=featurizer.image_dim, dim=c.dim, heads=c.heads))


def param_groups(model: DiscriminativeModel, config: DiscriminativeTrainConfig) -> list[dict]:
    """AdamW groups: DWE (as its official code) leaves biases and LayerNorm weights undecayed;
    DIM decays every parameter, as it always did."""
    if config.arch != "dwe":
        return [{"params": list(model.parameters()), "weight_decay": config.weight_decay}]
    norms = {id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()}
    plain = [p for n, p in model.named_parameters() if n.endswith("bias") or id(p) in norms or p.dim() < 2]
    plain_ids = {id(p) for p in plain}
    return [{"params": [p for p in model.parameters() if id(p) not in plain_ids], "weight_decay": config.weight_decay},
            {"params": plain, "weight_decay": 0.0}]


def lr_factor(step: int, total: int, config: DiscriminativeTrainConfig) -> float:
    """The learning rate's multiplier at optimizer step `step` of `total` (the warm-up is at
    most a tenth of the run, so that a short run still trains at its learning rate)."""
    warm = min(config.warmup_steps or 0, total // 10)
    if step < warm:
        return (step + 1) / warm
    if config.schedule == "linear":
        return max(0.0, (total - step) / max(1, total - warm))
    return 1.0


def hard_negative_ids(retrieved: Sequence[Sequence], golds: Sequence[str], index: Mapping[str, int],
                      n: int) -> torch.Tensor:
    """`[B, n]` KB row indices of each mention's top retrieved non-gold entities (-1: padding)."""
    out = torch.full((len(golds), n), -1, dtype=torch.long)
    for row, (cands, gold) in enumerate(zip(retrieved, golds)):
        ids = [index[c.entity_id] for c in cands if c.entity_id != gold][:n]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def batch_loss(model: DiscriminativeModel, feats: MentionFeatures, entity_feats: torch.Tensor, gold: torch.Tensor,
               hard: torch.Tensor) -> torch.Tensor:
    """The loss of one batch: gold `[B]` and hard `[B, H]` are KB row indices (-1 = none)."""
    mentions, own = model.forward_train(feats)
    in_batch = torch.unique(gold)
    entities = model.entities(entity_feats[torch.cat([in_batch, hard.clamp(min=0).flatten()])])
    scores = model.scores(mentions, entities)                              # [B, U + B*H]
    pos_col = torch.searchsorted(in_batch, gold)
    pos = scores[torch.arange(len(gold)), pos_col]
    batch_neg = scores[:, : len(in_batch)]
    batch_mask = in_batch[None, :] != gold[:, None]
    rows = torch.arange(len(gold))
    hard_scores = scores[:, len(in_batch):].view(len(gold), len(gold), -1)[rows, rows]
    hard_mask = (hard >= 0) & (hard != gold[:, None])
    npair = npair_loss(pos, torch.cat([batch_neg, hard_scores], 1), torch.cat([batch_mask, hard_mask], 1))
    return model.npair_weight * npair + own


def train_discriminative(kb: KnowledgeBase, train: Sequence[Mention], dev: Sequence[Mention],
                         featurizer: DiscriminativeFeaturizer, config: DiscriminativeTrainConfig | None = None,
                         output: str | Path | None = None, descriptions: Mapping[str, str] | None = None,
                         retriever: CandidateRetriever | None = None,
                         progress: bool = True) -> tuple[DiscriminativeModel, TrainReport]:
    """Train a DIM or DWE (`config.arch`) on `train` (mentions with gold ids in the KB). With
    `output`, the best model goes to `output/best` and a checkpoint to `output/checkpoint`
    after each epoch; calling again with the same output resumes after the last finished epoch."""
    config = (config or DiscriminativeTrainConfig()).resolved()
    examples = [m for m in train if m.gold is not None and m.gold in kb]
    if not examples:
        raise GenLinkerError("no training mention has a gold entity in the KB")
    torch.manual_seed(config.seed)
    model = build_model(config, featurizer)
    optimizer = torch.optim.AdamW(param_groups(model, config), lr=config.lr)
    report, start = TrainReport(), 0
    out = Path(output) if output else None
    if out is not None and has_state(out / "checkpoint"):
        start, report = _load_checkpoint(out / "checkpoint", model, optimizer)

    if start >= config.epochs:          # a finished run: nothing to compute again
        return _finished(model, out, report)

    # Frozen features and hard negatives, computed once.
    index = {e.id: i for i, e in enumerate(kb)}
    retriever = retriever or CandidateRetriever(kb, featurizer.retrieval_encoder, descriptions,
                                              show_progress=progress)
    entity_feats = featurizer.entities(kb, descriptions, show_progress=progress)
    feats = featurizer.mentions(examples, model.views, show_progress=progress)
    gold = torch.tensor([index[m.gold] for m in examples])
    hard = hard_negative_ids(retriever.retrieve(examples, config.hard_negatives + 1),
                             [m.gold for m in examples], index, config.hard_negatives)
    dev = [m for m in dev if m.gold is not None]
    dev_cands = [[c.entity_id for c in cs] for cs in retriever.retrieve(dev, config.dev_candidates)] if dev else []
    dev_feats = featurizer.mentions(dev, model.views) if dev else None   # frozen: encoded once, not per epoch

    rng = random.Random(config.seed)
    per_epoch = -(-len(examples) // config.batch_size)
    for epoch in range(start, config.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        model.train()
        total, steps = 0.0, 0
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        bar = tqdm(batches, desc=f"{config.arch.upper()} epoch {epoch + 1}/{config.epochs}", disable=not progress,
                   unit="batch")
        for rows in bar:
            for group in optimizer.param_groups:
                group["lr"] = config.lr * lr_factor(epoch * per_epoch + steps, per_epoch * config.epochs, config)
            rows_t = torch.tensor(rows)
            loss = batch_loss(model, feats.rows(rows_t), entity_feats, gold[rows_t], hard[rows_t])
            optimizer.zero_grad()
            loss.backward()
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            total, steps = total + float(loss.detach()), steps + 1
            bar.set_postfix(loss=f"{total / steps:.3f}")
        model.eval()
        report.epoch_loss.append(total / max(1, steps))
        if dev:
            report.dev_top1.append(candidate_top1(model, dev_feats, entity_feats, index, dev, dev_cands))
            if report.best_epoch is None or report.dev_top1[-1] > report.dev_top1[report.best_epoch]:
                report.best_epoch = epoch
                if out is not None:
                    model.save(out / "best")
        if out is not None:
            _save_checkpoint(out / "checkpoint", model, optimizer, epoch + 1, report)
    return _finished(model, out, report)


train_dim = train_discriminative     # the name DIM's users know


def _finished(model: DiscriminativeModel, out: Path | None,
              report: TrainReport) -> tuple[DiscriminativeModel, TrainReport]:
    """The best epoch's model when there was a dev check and an output folder, else the last."""
    if out is not None and report.best_epoch is not None:
        model, _ = type(model).load(out / "best")
    return model.eval(), report


@torch.no_grad()
def candidate_top1(model: DiscriminativeModel, feats: MentionFeatures, entity_feats: torch.Tensor,
                   index: Mapping[str, int], mentions: Sequence[Mention], candidates: Sequence[Sequence[str]]) -> float:
    """Share of mentions whose gold is the model's best among their retrieved candidates."""
    vectors = model.query(feats)
    hits = []
    for vec, m, ids in zip(vectors, mentions, candidates):
        ids = [i for i in ids if i in index]
        rows = [index[i] for i in ids]
        if not rows:
            hits.append(False)
            continue
        scores = model.scores(vec[None], model.entities(entity_feats[rows]))[0]
        hits.append(ids[int(torch.argmax(scores))] == m.gold)
    return float(np.mean(hits)) if hits else 0.0


def _save_checkpoint(folder: Path, model: DiscriminativeModel, optimizer, epochs_done: int,
                     report: TrainReport) -> None:
    model.save(folder)
    write_state(folder, optimizer, epochs_done, report)


def _load_checkpoint(folder: Path, model: DiscriminativeModel, optimizer) -> tuple[int, TrainReport]:
    """Resume from a checkpoint of the same architecture (another one is an error, not a silent
    restart)."""
    try:
        loaded, _ = type(model).load(folder)
    except GenLinkerError as e:
        raise GenLinkerError(f"cannot resume from {folder}: {e}; train into another --output") from None
    model.load_state_dict(loaded.state_dict())
    return read_state(folder, optimizer)
