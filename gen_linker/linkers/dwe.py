"""DWE (arXiv 2312.11816, AAAI-24; official code: season1blue/DWE): a discriminative linker whose
mention vector is the mention's feature enhanced by two attention blocks, one over the image
and its crops (visual enhancer) and one over the sentence context (textual enhancer), scored by
a dot product against frozen entity text features.

As in the official code (`nel_model/nel.py::NELModel`):
- every input is a frozen feature; each goes through Linear + ReLU + LayerNorm + Dropout
  (`text_trans` for texts, `img_trans` for images), hidden 512, 8 heads, dropout 0.4,
  xavier-uniform initialisation;
- query = mention; visual enhancer: keys/values = the image crops; textual enhancer:
  keys/values = the context; the mention vector = Dropout + Linear of mention + visual +
  textual, in the entity features' space;
- entities have no tower: their frozen text features are compared as they are;
- loss = 10 x N-pair + 0.02 x mean squared norm of the mention vectors, + a CLIP-style InfoNCE
  (one learned temperature, initially 0.07) between the whole image and the mention in its
  sentence ("coarse") and between the visual and textual enhancers' outputs ("fine"); AdamW
  without decay on biases and LayerNorm weights, linear warm-up and decay, gradients clipped
  at 1 (`gen_linker.discriminative_training`).

Where this differs, and why:
- Features: the official code reads CLIP ViT-B/32 for everything; here the text side is our
  text encoder (the packaged MiniLM, a trained bi-encoder folder, or `clip:FOLDER`) and the
  entity side its features of name + description (`linkers.discriminative_features`). The
  official entity text is the description alone, cut to 77 CLIP tokens.
- Context: the official textual enhancer attends over one vector ("mention [SEP] sentence"),
  so its softmax has a single key; here it attends over `CONTEXT_SLOTS` vectors (the mention in
  its sentence, the sentence, the words left and right of the mention; empty ones masked), so
  that it has something to choose from. Token-level features would be the paper's "context
  tokens" but cost ~1.7 GB of cache for WikiMEL's train split.
- Visual keys: the official keys are person crops from a segmentation model (zero rows where
  none was found, unmasked); here the whole image plus its crops (a regions side file, else a
  grid), with a padding mask. An image whose regions entry has no box still informs the query
  through the whole image; a mention without a usable image gets a learned "no image" vector
  (text-only WikiMEL runs entirely on it) and no InfoNCE terms.
- Two enhancer modules: the official code calls one attention module for both (its
  `text_att` is defined and unused); the paper describes two.
- Negatives: the official N-pair scores each mention against the batch's sampled negatives
  (one per mention, an entity sharing a TF-IDF word with the gold); here the shared training
  loop's in-batch golds plus the retriever's top non-gold candidates (hard negatives).
- Schedule: the official WikiMEL run trains 300 epochs at lr 5e-5; on 2 CPU cores here the
  default is a few epochs at a higher lr (`discriminative_training.ARCH_DEFAULTS`).
- Candidates: the official evaluation ranks 100 fuzzy name matches from the gold entities of
  all splits; here the retriever's top candidates over the whole KB.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .discriminative import DiscriminativeLinker, DiscriminativeModel
from .discriminative_features import MentionFeatures

DWE_VIEWS = ("mention", "context", "image", "crops")


@dataclass
class DWEConfig:
    text_dim: int = 384            # the text encoder's size; also the entity space (no entity tower)
    image_dim: int = 64
    hidden: int = 512
    heads: int = 8
    dropout: float = 0.4
    npair_weight: float = 10.0     # lambda_t
    l2_weight: float = 0.02
    coarse_weight: float = 1.0     # lambda_c: whole image vs the mention in its sentence
    fine_weight: float = 1.0       # visual vs textual enhancer
    clip_temperature: float = 0.07  # initial; learned


def _block(n_in: int, n_out: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), nn.ReLU(), nn.LayerNorm(n_out), nn.Dropout(dropout))


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows (CLIP's): row i of `a` against every row of `b`."""
    a, b = nn.functional.normalize(a, dim=-1), nn.functional.normalize(b, dim=-1)
    logits = logit_scale.exp().clamp(max=100.0) * a @ b.T
    target = torch.arange(len(a))
    return (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2


class DWEModel(DiscriminativeModel):
    """Mention + visual enhancer + textual enhancer -> a vector in the entity features' space."""

    arch: ClassVar[str] = "dwe"
    views: ClassVar[tuple[str, ...]] = DWE_VIEWS
    config_class: ClassVar[type] = DWEConfig

    def __init__(self, config: DWEConfig) -> None:
        super().__init__()
        c = self.config = config
        self.text_trans = _block(c.text_dim, c.hidden, c.dropout)
        self.img_trans = _block(c.image_dim, c.hidden, c.dropout)
        self.visual = nn.MultiheadAttention(c.hidden, c.heads, batch_first=True)
        self.textual = nn.MultiheadAttention(c.hidden, c.heads, batch_first=True)
        self.out = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.hidden, c.text_dim))
        self.clip_scale = nn.Parameter(torch.tensor(math.log(1.0 / c.clip_temperature)))
        for p in self.parameters():          # the official train.py: xavier on every matrix
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.no_image = nn.Parameter(torch.zeros(c.hidden))   # the visual enhancer's output without an image

    @property
    def npair_weight(self) -> float:
        return self.config.npair_weight

    def enhance(self, feats: MentionFeatures) -> dict[str, torch.Tensor]:
        """The transformed mention, both enhancers' outputs, the query, and what the InfoNCE
        terms read (the whole image, the mention in its sentence, which rows have an image)."""
        if feats.mention is None:
            raise ValueError("DWE needs the `mention` view of the featurizer")
        m = self.text_trans(feats.mention)                                          # [B, H]
        out: dict[str, torch.Tensor] = {"mention": m}
        if feats.context is not None:
            ctx = self.text_trans(feats.context)                                    # [B, C, H]
            mask = feats.context_mask if feats.context_mask is not None else torch.ones(ctx.shape[:2], dtype=torch.bool)
            out["textual"] = _attend(self.textual, m, ctx, mask, torch.zeros_like(m))[0]
            out["sentence"] = ctx[:, 0]
        else:
            out["textual"] = torch.zeros_like(m)
        keys, masks = [], []
        if feats.image is not None:
            out["image"] = self.img_trans(feats.image)
            keys.append(out["image"][:, None])
            masks.append(_mask(feats.image_mask, feats.image.shape[:1])[:, None])
        if feats.crops is not None:
            keys.append(self.img_trans(feats.crops))
            masks.append(_mask(feats.crop_mask, feats.crops.shape[:2]))
        if keys:
            out["visual"], out["has_image"] = _attend(self.visual, m, torch.cat(keys, 1), torch.cat(masks, 1),
                                                      self.no_image.expand_as(m))
        else:
            out["visual"], out["has_image"] = self.no_image.expand_as(m), torch.zeros(len(m), dtype=torch.bool)
        out["query"] = self.out(m + out["visual"] + out["textual"])
        return out

    def forward_train(self, feats: MentionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        x = self.enhance(feats)
        q = x["query"]
        aux = c.l2_weight * (q ** 2).sum(-1).mean()
        if feats.image is not None:
            rows = x["has_image"] & _mask(feats.image_mask, feats.image.shape[:1])
            if int(rows.sum()) >= 2 and "sentence" in x:
                aux = aux + c.coarse_weight * clip_loss(x["image"][rows], x["sentence"][rows], self.clip_scale)
                aux = aux + c.fine_weight * clip_loss(x["visual"][rows], x["textual"][rows], self.clip_scale)
        return q, aux

    def entities(self, text: torch.Tensor) -> torch.Tensor:
        """No entity tower: the frozen entity text features themselves."""
        return text

    def scores(self, mentions: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """Dot products `[B, N]` (the official training score; with unit-norm entity features a
        mention ranks its candidates as cosine would, and the query's norm is a learned
        inverse temperature)."""
        return mentions @ entities.T


def _mask(mask: torch.Tensor | None, shape) -> torch.Tensor:
    return mask if mask is not None else torch.ones(shape, dtype=torch.bool)


def _attend(attn: nn.MultiheadAttention, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor,
            missing: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of each query row over its unmasked keys; rows without any key get `missing`.
    Returns the outputs `[B, H]` and which rows had a key."""
    has = mask.any(1)
    safe = mask.clone()
    safe[~has, 0] = True              # a row of only masked keys would give NaN
    att, _ = attn(query[:, None], keys, keys, key_padding_mask=~safe, need_weights=False)
    return torch.where(has[:, None], att[:, 0], missing), has


class DWELinker(DiscriminativeLinker):
    """Retrieve candidates (BM25 + dense), rank them with a trained DWE."""

    name = "dwe"
