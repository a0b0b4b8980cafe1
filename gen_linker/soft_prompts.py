"""Image soft prefixes in a text prompt (GEMEL): each image's feature goes through the mapper
into `n_prefix` vectors of the LLM's input space, spliced in before its block's `[Text]`,
for the query and for every demonstration that has an image.

A prompt with at least one image becomes a `[seq, hidden]` embeddings tensor (both backends
take it: hf as `inputs_embeds`, vLLM as `prompt_embeds`); without images it stays token ids,
so text-only linking is unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import ImageError
from .mapper import LinearMapper, splice_prefix
from .vision import VisionEncoder


@dataclass
class ImagePrefixer:
    """Vision encoder + mapper + where images live; remembers the image errors it met."""

    encoder: VisionEncoder
    mapper: LinearMapper
    image_root: Path | None = None
    cache_dir: Path | None = None
    errors: dict[str, ImageError] = field(default_factory=dict)   # image reference -> error

    def features(self, refs: Sequence[str | None]) -> list[np.ndarray | None]:
        """The vision feature per reference (None: no image, or a bad one, recorded in `errors`)."""
        wanted = [i for i, r in enumerate(refs) if r]
        feats, errors = self.encoder.encode_refs([refs[i] for i in wanted], self.image_root, self.cache_dir)
        out: list[np.ndarray | None] = [None] * len(refs)
        for i, feat, err in zip(wanted, feats, errors):
            out[i] = feat
            if err is not None:
                self.errors[str(refs[i])] = err
        return out

    @torch.no_grad()
    def prefixes(self, refs: Sequence[str | None]) -> list[torch.Tensor | None]:
        """`[n_prefix, hidden]` per reference (None where `features` has none)."""
        feats = self.features(refs)
        ok = [i for i, f in enumerate(feats) if f is not None]
        out: list[torch.Tensor | None] = [None] * len(refs)
        if ok:
            mapped = self.mapper(torch.from_numpy(np.stack([feats[i] for i in ok])).float())
            for i, m in zip(ok, mapped):
                out[i] = m
        return out


def block_token_starts(tokenizer, blocks: Sequence[str]) -> tuple[list[int], list[int]]:
    """Token ids of the joined blocks and the token index where each block starts (the first
    token that begins at or after the block's first character)."""
    text = "".join(blocks)
    enc = tokenizer(text, return_offsets_mapping=True)
    starts_char = np.cumsum([0] + [len(b) for b in blocks[:-1]])
    offsets = np.array([o[0] for o in enc["offset_mapping"]]) if enc["offset_mapping"] else np.zeros(0, dtype=int)
    return list(enc["input_ids"]), [int(np.searchsorted(offsets, c)) for c in starts_char]


def splice_images(embeds: torch.Tensor, starts: Sequence[int], prefixes: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """Insert each block's prefix at its start, last block first so earlier indices hold."""
    for at, prefix in sorted(zip(starts, prefixes), key=lambda x: -x[0]):
        if prefix is not None:
            embeds = splice_prefix(embeds, prefix, at)
    return embeds
