"""DIM (arXiv 2407.12019): a discriminative linker that fuses the mention's text, its image and
"expert" text about the image (a captioner's caption and its answer to "who is this?") with
multi-head attention conditioned on the expert features, and scores the fused vector by cosine
against entity embeddings built from name + description.

The encoders stay frozen (the text encoder: sentence-transformers, the packaged MiniLM by
default; the vision encoder of `gen_linker.vision`), so their features are computed once and
cached, and what trains is small: projections, the attention fusion and the entity projection.
That is what makes training on WikiMEL's 18k mentions a few minutes on a CPU. Trained with
N-pair loss against in-batch and retrieved hard negatives (`gen_linker.discriminative_training`).

What DIM shares with DWE (features, the saved folder and card, the N-pair loss, the linker that
retrieves and ranks) is in `linkers.discriminative` and `linkers.discriminative_features`; the
names below that come from there are kept importable from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .discriminative import (DiscriminativeLinker, DiscriminativeModel, check_dim_folder, fuse_rankings,
                             npair_loss)
from .discriminative_features import DIM_VIEWS, DiscriminativeFeaturizer, MentionFeatures, expert_text

DIMFeaturizer = DiscriminativeFeaturizer     # the name DIM's users know

__all__ = ["DIMConfig", "DIMFeaturizer", "DIMLinker", "DIMModel", "MentionFeatures", "check_dim_folder",
           "expert_text", "fuse_rankings", "npair_loss"]


@dataclass
class DIMConfig:
    text_dim: int = 384
    image_dim: int = 64
    dim: int = 256
    heads: int = 4
    temperature: float = 0.05     # initial; the logit scale is learned


class DIMModel(DiscriminativeModel):
    """Mention tower (text + image + expert, attention fusion) and entity tower (projection)."""

    arch: ClassVar[str] = "dim"
    views: ClassVar[tuple[str, ...]] = DIM_VIEWS
    config_class: ClassVar[type] = DIMConfig

    def __init__(self, config: DIMConfig) -> None:
        super().__init__()
        c = self.config = config
        self.text_proj = nn.Linear(c.text_dim, c.dim)
        self.image_proj = nn.Linear(c.image_dim, c.dim)
        self.expert_proj = nn.Linear(c.text_dim, c.dim)
        self.no_image = nn.Parameter(torch.zeros(c.dim))     # stands in for an absent image
        self.no_expert = nn.Parameter(torch.zeros(c.dim))    # ... and for absent expert text
        self.attn = nn.MultiheadAttention(c.dim, c.heads, batch_first=True)
        self.norm = nn.LayerNorm(c.dim)
        self.out = nn.Linear(c.dim, c.dim)
        self.entity_proj = nn.Linear(c.text_dim, c.dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / c.temperature)))

    def mentions(self, text: torch.Tensor, image: torch.Tensor | None = None, image_mask: torch.Tensor | None = None,
                 expert: torch.Tensor | None = None, expert_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, text_dim]` (+ optional `[B, image_dim]`, `[B, text_dim]` with `[B]` bool masks of
        which rows have them) -> L2-normalised `[B, dim]`."""
        t = self.text_proj(text)
        v = _or_missing(self.image_proj, image, image_mask, self.no_image, t)
        e = _or_missing(self.expert_proj, expert, expert_mask, self.no_expert, t)
        # The expert features ask; text, image and expert answer (DIM's expert-conditioned fusion).
        fused, _ = self.attn(e[:, None], torch.stack([t, v, e], 1), torch.stack([t, v, e], 1), need_weights=False)
        x = self.norm(t + fused[:, 0])
        return nn.functional.normalize(self.out(x) + t, dim=-1)

    def forward_train(self, feats: MentionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mentions(**feats.as_kwargs()), torch.zeros(())

    def entities(self, text: torch.Tensor) -> torch.Tensor:
        """`[N, text_dim]` entity text features -> L2-normalised `[N, dim]`."""
        return nn.functional.normalize(self.entity_proj(text), dim=-1)

    def scores(self, mentions: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities `[B, N]`."""
        return self.logit_scale.exp().clamp(max=100.0) * mentions @ entities.T


def _or_missing(proj: nn.Linear, x: torch.Tensor | None, mask: torch.Tensor | None, missing: torch.Tensor,
                like: torch.Tensor) -> torch.Tensor:
    """Projected features where a row has them, the learned "missing" vector elsewhere."""
    if x is None:
        return missing.expand_as(like)
    y = proj(x)
    return y if mask is None else torch.where(mask[:, None], y, missing.expand_as(y))


class DIMLinker(DiscriminativeLinker):
    """Retrieve candidates (BM25 + dense), rank them with a trained DIM. `DIMLinker.from_spec`
    builds the linker of the folder's arch, so the pipeline and fused linkers take a DWE too."""

    name = "dim"
