"""Frozen-encoder features of mentions and entities for the discriminative linkers (DIM, DWE).

Both models train only small heads on top of frozen encoders, so every feature is computed
once (cached on disk for training sets) and a training epoch costs seconds. The featurizer
computes the *views* a model asks for (`DiscriminativeModel.views`):

- `text`: the mention in its sentence (`"mention: sentence"`, as dense retrieval reads it); DIM
- `image`: the whole image (`VisionEncoder`), with a mask of the rows that have one; DIM, DWE
- `expert`: a captioner's caption and answer about the image (captions side file); DIM
- `mention`: the mention string alone; DWE
- `context`: `CONTEXT_SLOTS` texts (the mention in its sentence, the sentence, the words left
  and right of the mention; empty ones masked); DWE's textual enhancer
- `crops`: crops of the image (regions side file, else a grid), `[B, K, d]` with a mask; DWE's
  visual enhancer

A missing or corrupt image is recorded per reference in `image_errors` (the linker reports it
on the mention's result) and the mention goes on without an image.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from ..candidates import entity_text, mention_text
from ..encoders import SentenceEncoder, TextEncoder, text_encoder
from ..kb import KnowledgeBase
from ..schema import Mention
from ..vision import MAX_CROPS, Box

DIM_VIEWS = ("text", "image", "expert")
VIEWS = ("text", "image", "expert", "mention", "context", "crops")
CONTEXT_SLOTS = ("mention in sentence", "sentence", "left of the mention", "right of the mention")
CACHE_FROM = 1000   # text lists this long (training sets) are encoded once and kept on disk


@dataclass
class MentionFeatures:
    """The frozen encoders' features of some mentions; a view not asked for is None."""

    text: torch.Tensor | None = None
    image: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None
    expert: torch.Tensor | None = None
    expert_mask: torch.Tensor | None = None
    mention: torch.Tensor | None = None
    context: torch.Tensor | None = None          # [B, C, text_dim]
    context_mask: torch.Tensor | None = None     # [B, C] True = a real text
    crops: torch.Tensor | None = None            # [B, K, image_dim]
    crop_mask: torch.Tensor | None = None        # [B, K] True = a real crop

    def rows(self, index) -> "MentionFeatures":
        return MentionFeatures(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                                  for f in dataclasses.fields(self)})

    def as_kwargs(self) -> dict:
        """DIM's inputs (`DIMModel.mentions`)."""
        return dict(text=self.text, image=self.image, image_mask=self.image_mask, expert=self.expert,
                    expert_mask=self.expert_mask)


def expert_text(record: Mapping | None) -> str | None:
    """The expert text of one captions record: its caption and its identity answer."""
    if not record:
        return None
    parts = [str(record.get(k, "")).strip() for k in ("caption", "answer")]
    text = ". ".join(p for p in parts if p)
    return text or None


def context_texts(m: Mention) -> list[str]:
    """The `CONTEXT_SLOTS` texts of a mention ("" where there is nothing: masked)."""
    start, end = m.start, m.end
    if start is None or end is None:
        start = m.text.find(m.mention)
        start, end = (start, start + len(m.mention)) if start >= 0 else (len(m.text), len(m.text))
    return [mention_text(m), m.text, m.text[:start].strip(), m.text[end:].strip()]


class DiscriminativeFeaturizer:
    """Frozen encoders -> features: text (sentence-transformers, e.g. a bi-encoder trained with
    `gen-linker train-reranker --kind biencoder`, or `clip:FOLDER` for a CLIP text tower),
    images and their crops (`VisionEncoder`, optional), expert text (captions keyed by mention
    id or image reference, optional)."""

    def __init__(self, encoder: str | TextEncoder | None = None, vision=None, image_root: str | Path | None = None,
                 captions: Mapping[str, Mapping] | None = None, cache_dir: str | Path | None = None,
                 regions: Mapping[str, Sequence[Box]] | None = None, grid: int = 2,
                 max_crops: int = MAX_CROPS) -> None:
        self.encoder = encoder if isinstance(encoder, TextEncoder) else text_encoder(encoder)
        self.vision, self.image_root, self.captions, self.cache_dir = vision, image_root, captions or {}, cache_dir
        self.regions, self.grid, self.max_crops = regions or {}, grid, max_crops
        self.image_errors: dict[str, str] = {}

    @property
    def retrieval_encoder(self) -> SentenceEncoder | None:
        """The encoder candidate retrieval shares (a CLIP text tower is not used for retrieval:
        its 77-token context cuts descriptions)."""
        return self.encoder if isinstance(self.encoder, SentenceEncoder) else None

    @property
    def text_dim(self) -> int:
        return self.encoder.dim

    @property
    def image_dim(self) -> int:
        return self.vision.feature_dim if self.vision is not None else 64

    def entities(self, kb: KnowledgeBase, descriptions: Mapping[str, str] | None = None,
                 show_progress: bool = False) -> torch.Tensor:
        """`[N, text_dim]` features of every entity's name + description (cached with the KB)."""
        descriptions = descriptions or {}
        texts = [entity_text(e.name, descriptions.get(e.id, e.description)) for e in kb]
        return torch.from_numpy(self.encoder.encode_cached(texts, kb.cache_dir(), show_progress=show_progress))

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> torch.Tensor:
        """`[n, text_dim]`; long lists (training sets) through the on-disk cache. Always float32
        (`encode_reference`), whatever dtype the shared encoder links mentions in: the heads were
        trained on float32 features, and a mention's features must not depend on whether its
        batch was long enough to be cached."""
        if self.cache_dir is not None and len(texts) >= CACHE_FROM:
            return torch.from_numpy(self.encoder.encode_cached(texts, self.cache_dir, show_progress=show_progress))
        return torch.from_numpy(self.encoder.encode_reference(texts, show_progress=show_progress))

    def mentions(self, mentions: Sequence[Mention], views: Sequence[str] = DIM_VIEWS,
                 show_progress: bool = False) -> MentionFeatures:
        """The `views` of `mentions` (see the module docstring)."""
        unknown = set(views) - set(VIEWS)
        if unknown:
            raise ValueError(f"unknown feature view(s) {sorted(unknown)}; views are {VIEWS}")
        feats = MentionFeatures()
        if "text" in views:
            feats.text = self.encode([mention_text(m) for m in mentions], show_progress)
        if "mention" in views:
            feats.mention = self.encode([m.mention for m in mentions], show_progress)
        if "context" in views:
            feats.context, feats.context_mask = self._context(mentions, show_progress)
        wants_images = self.vision is not None and any(m.image for m in mentions)
        if "image" in views and wants_images:
            feats.image, feats.image_mask = self._images(mentions)
        if "crops" in views and wants_images:
            feats.crops, feats.crop_mask = self._crops(mentions)
        if "expert" in views:
            feats.expert, feats.expert_mask = self._experts(mentions)
        return feats

    # ------------------------------------------------------------------ views
    def _context(self, mentions: Sequence[Mention], show_progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [context_texts(m) for m in mentions]
        out = torch.zeros(len(mentions), len(CONTEXT_SLOTS), self.text_dim)
        mask = torch.zeros(len(mentions), len(CONTEXT_SLOTS), dtype=torch.bool)
        for slot in range(len(CONTEXT_SLOTS)):
            have = [i for i, t in enumerate(texts) if t[slot]]
            if have:
                out[have, slot] = self.encode([texts[i][slot] for i in have], show_progress)
                mask[have, slot] = True
        return out, mask

    def _images(self, mentions: Sequence[Mention]) -> tuple[torch.Tensor, torch.Tensor]:
        refs = [m.image for m in mentions]
        wanted = [i for i, r in enumerate(refs) if r]
        got, errors = self.vision.encode_refs([refs[i] for i in wanted], self.image_root, self.cache_dir)
        image = torch.zeros(len(mentions), self.vision.feature_dim)
        mask = torch.zeros(len(mentions), dtype=torch.bool)
        for i, f, err in zip(wanted, got, errors):
            if err is not None:
                self.image_errors[str(refs[i])] = str(err)
            elif f is not None:
                image[i], mask[i] = torch.from_numpy(np.asarray(f, dtype=np.float32)), True
        return image, mask

    def _crops(self, mentions: Sequence[Mention]) -> tuple[torch.Tensor, torch.Tensor]:
        refs = [m.image for m in mentions]
        wanted = [i for i, r in enumerate(refs) if r]
        got, errors = self.vision.encode_crops([refs[i] for i in wanted], self.image_root, self.cache_dir,
                                               self.regions, self.grid, self.max_crops)
        k = max([len(f) for f in got if f is not None] + [1])
        crops = torch.zeros(len(mentions), k, self.vision.feature_dim)
        mask = torch.zeros(len(mentions), k, dtype=torch.bool)
        for i, f, err in zip(wanted, got, errors):
            if err is not None:
                self.image_errors[str(refs[i])] = str(err)
            elif f is not None and len(f):
                crops[i, : len(f)] = torch.from_numpy(np.asarray(f, dtype=np.float32))
                mask[i, : len(f)] = True
        return crops, mask

    def _experts(self, mentions: Sequence[Mention]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        experts = [expert_text(self.captions.get(m.id) or (self.captions.get(m.image) if m.image else None))
                   for m in mentions]
        if not any(experts):
            return None, None
        have = [i for i, x in enumerate(experts) if x]
        expert = torch.zeros(len(mentions), self.text_dim)
        expert[have] = self.encode([experts[i] for i in have])
        mask = torch.zeros(len(mentions), dtype=torch.bool)
        mask[have] = True
        return expert, mask
