"""Training DIM: N-pair loss against in-batch and retrieved hard negatives.

The frozen encoders' features are computed once (mentions, KB entities); each step scores a
batch of mentions against the batch's gold entities (each one a negative for the others) and
against each mention's own hard negatives (the top candidates of BM25 + dense retrieval that
are not its gold). AdamW; a dev-set Top-1 over the retrieved candidates after each epoch, the
best model kept; a checkpoint after each epoch so a killed run resumes.
"""
from __future__ import annotations

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
from .linkers.dim import DIMConfig, DIMFeaturizer, DIMModel, MentionFeatures, npair_loss
from .schema import Mention


@dataclass
class DIMTrainConfig:
    epochs: int = 5
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    hard_negatives: int = 8          # per mention, from the candidate retriever
    dev_candidates: int = 100        # the dev check ranks this many retrieved candidates
    dim: int = 256
    heads: int = 4
    seed: int = 0


def hard_negative_ids(retrieved: Sequence[Sequence], golds: Sequence[str], index: Mapping[str, int],
                      n: int) -> torch.Tensor:
    """`[B, n]` KB row indices of each mention's top retrieved non-gold entities (-1: padding)."""
    out = torch.full((len(golds), n), -1, dtype=torch.long)
    for row, (cands, gold) in enumerate(zip(retrieved, golds)):
        ids = [index[c.entity_id] for c in cands if c.entity_id != gold][:n]
        out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def batch_loss(model: DIMModel, feats: MentionFeatures, entity_feats: torch.Tensor, gold: torch.Tensor,
               hard: torch.Tensor) -> torch.Tensor:
    """N-pair loss of one batch: gold `[B]` and hard `[B, H]` are KB row indices (-1 = none)."""
    mentions = model.mentions(**feats.as_kwargs())
    in_batch = torch.unique(gold)
    entities = model.entities(entity_feats[torch.cat([in_batch, hard.clamp(min=0).flatten()])])
    scores = model.scores(mentions, entities)                              # [B, U + B*H]
    pos_col = torch.searchsorted(in_batch, gold)
    pos = scores[torch.arange(len(gold)), pos_col]
    batch_neg = scores[:, : len(in_batch)]
    batch_mask = in_batch[None, :] != gold[:, None]
    hard_scores = scores[:, len(in_batch):].view(len(gold), len(gold), -1)[torch.arange(len(gold)), torch.arange(len(gold))]
    hard_mask = (hard >= 0) & (hard != gold[:, None])
    return npair_loss(pos, torch.cat([batch_neg, hard_scores], 1), torch.cat([batch_mask, hard_mask], 1))


def train_dim(kb: KnowledgeBase, train: Sequence[Mention], dev: Sequence[Mention], featurizer: DIMFeaturizer,
              config: DIMTrainConfig | None = None, output: str | Path | None = None,
              descriptions: Mapping[str, str] | None = None, retriever: CandidateRetriever | None = None,
              progress: bool = True) -> tuple[DIMModel, TrainReport]:
    """Train a DIM on `train` (mentions with gold ids in the KB). With `output`, the best model
    goes to `output/best` and a checkpoint to `output/checkpoint` after each epoch; calling again
    with the same output resumes after the last finished epoch."""
    config = config or DIMTrainConfig()
    examples = [m for m in train if m.gold is not None and m.gold in kb]
    if not examples:
        raise GenLinkerError("no training mention has a gold entity in the KB")
    torch.manual_seed(config.seed)
    model = DIMModel(DIMConfig(text_dim=featurizer.text_dim, image_dim=featurizer.image_dim, dim=config.dim,
                               heads=config.heads))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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
    feats = featurizer.mentions(examples, show_progress=progress)
    gold = torch.tensor([index[m.gold] for m in examples])
    hard = hard_negative_ids(retriever.retrieve(examples, config.hard_negatives + 1),
                             [m.gold for m in examples], index, config.hard_negatives)
    dev = [m for m in dev if m.gold is not None]
    dev_cands = [[c.entity_id for c in cs] for cs in retriever.retrieve(dev, config.dev_candidates)] if dev else []
    dev_feats = featurizer.mentions(dev) if dev else None      # frozen: encoded once, not per epoch

    rng = random.Random(config.seed)
    for epoch in range(start, config.epochs):
        order = list(range(len(examples)))
        rng.shuffle(order)
        model.train()
        total, steps = 0.0, 0
        batches = [order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)]
        bar = tqdm(batches, desc=f"DIM epoch {epoch + 1}/{config.epochs}", disable=not progress, unit="batch")
        for rows in bar:
            rows_t = torch.tensor(rows)
            loss = batch_loss(model, feats.rows(rows_t), entity_feats, gold[rows_t], hard[rows_t])
            optimizer.zero_grad()
            loss.backward()
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


def _finished(model: DIMModel, out: Path | None, report: TrainReport) -> tuple[DIMModel, TrainReport]:
    """The best epoch's model when there was a dev check and an output folder, else the last."""
    if out is not None and report.best_epoch is not None:
        model, _ = DIMModel.load(out / "best")
    return model.eval(), report


@torch.no_grad()
def candidate_top1(model: DIMModel, feats: MentionFeatures, entity_feats: torch.Tensor, index: Mapping[str, int],
                   mentions: Sequence[Mention], candidates: Sequence[Sequence[str]]) -> float:
    """Share of mentions whose gold is DIM's best among their retrieved candidates."""
    vectors = model.mentions(**feats.as_kwargs())
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


def _save_checkpoint(folder: Path, model: DIMModel, optimizer, epochs_done: int, report: TrainReport) -> None:
    model.save(folder)
    write_state(folder, optimizer, epochs_done, report)


def _load_checkpoint(folder: Path, model: DIMModel, optimizer) -> tuple[int, TrainReport]:
    loaded, _ = DIMModel.load(folder)
    model.load_state_dict(loaded.state_dict())
    return read_state(folder, optimizer)
