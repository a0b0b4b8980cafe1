"""DIM (arXiv 2407.12019): a discriminative linker that fuses the mention's text, its image and
"expert" text about the image (a captioner's caption and its answer to "who is this?") with
multi-head attention conditioned on the expert features, and scores the fused vector by cosine
against entity embeddings built from name + description.

The encoders stay frozen (the text encoder: sentence-transformers, the packaged MiniLM by
default; the vision encoder of `gen_linker.vision`), so their features are computed once and
cached, and what trains is small: projections, the attention fusion and the entity projection.
That is what makes training on WikiMEL's 18k mentions a few minutes on a CPU. Trained with
N-pair loss against in-batch and retrieved hard negatives (`gen_linker.dim_training`).

A saved DIM is a folder: `dim.safetensors` + `dim.yaml` (the card: encoders, sizes, KB, data,
dev scores).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
import yaml
from torch import nn

from ..candidates import CandidateRetriever, entity_text, mention_text, reciprocal_rank_fusion
from ..encoders import SentenceEncoder, TextEncoder, text_encoder
from ..errors import GenLinkerError
from ..kb import KnowledgeBase
from ..schema import Candidate, LinkResult, Mention


@dataclass
class DIMConfig:
    text_dim: int = 384
    image_dim: int = 64
    dim: int = 256
    heads: int = 4
    temperature: float = 0.05     # initial; the logit scale is learned


class DIMModel(nn.Module):
    """Mention tower (text + image + expert, attention fusion) and entity tower (projection)."""

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

    def entities(self, text: torch.Tensor) -> torch.Tensor:
        """`[N, text_dim]` entity text features -> L2-normalised `[N, dim]`."""
        return nn.functional.normalize(self.entity_proj(text), dim=-1)

    def scores(self, mentions: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        """Scaled cosine similarities `[B, N]`."""
        return self.logit_scale.exp().clamp(max=100.0) * mentions @ entities.T

    # ---------------------------------------------------------------------- save / load
    def save(self, folder: str | Path, card: Mapping | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / "dim.safetensors"))
        (folder / "dim.yaml").write_text(yaml.safe_dump({"model": asdict(self.config), **(card or {})}, sort_keys=False))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple["DIMModel", dict]:
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "dim.yaml").exists() or not (folder / "dim.safetensors").exists():
            raise GenLinkerError(f"{folder} is not a trained DIM (needs dim.yaml and dim.safetensors); "
                                 "train one with gen-linker train-dim")
        card = yaml.safe_load((folder / "dim.yaml").read_text())
        model = cls(DIMConfig(**card.pop("model")))
        model.load_state_dict(load_file(str(folder / "dim.safetensors")))
        return model.eval(), card


def _or_missing(proj: nn.Linear, x: torch.Tensor | None, mask: torch.Tensor | None, missing: torch.Tensor,
                like: torch.Tensor) -> torch.Tensor:
    """Projected features where a row has them, the learned "missing" vector elsewhere."""
    if x is None:
        return missing.expand_as(like)
    y = proj(x)
    return y if mask is None else torch.where(mask[:, None], y, missing.expand_as(y))


def npair_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """N-pair loss (Sohn 2016), mean over the batch: log(1 + sum_j exp(neg_j - pos)).

    `pos` `[B]` is each mention's score for its gold entity, `neg` `[B, N]` its scores for the
    negatives; `neg_mask` `[B, N]` (True = use) drops entries that are not real negatives
    (padding, or an in-batch entity equal to the gold)."""
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, float("-inf"))
    logits = torch.cat([pos[:, None], neg], 1)
    return (torch.logsumexp(logits, 1) - pos).mean()


# ------------------------------------------------------------------------------ features
@dataclass
class MentionFeatures:
    """The frozen encoders' features of some mentions, ready for `DIMModel.mentions`."""

    text: torch.Tensor
    image: torch.Tensor | None = None
    image_mask: torch.Tensor | None = None
    expert: torch.Tensor | None = None
    expert_mask: torch.Tensor | None = None

    def rows(self, index) -> "MentionFeatures":
        pick = (lambda x: None if x is None else x[index])
        return MentionFeatures(self.text[index], pick(self.image), pick(self.image_mask), pick(self.expert),
                               pick(self.expert_mask))

    def as_kwargs(self) -> dict:
        return dict(text=self.text, image=self.image, image_mask=self.image_mask, expert=self.expert,
                    expert_mask=self.expert_mask)


def expert_text(record: Mapping | None) -> str | None:
    """The expert text of one captions record: its caption and its identity answer."""
    if not record:
        return None
    parts = [str(record.get(k, "")).strip() for k in ("caption", "answer")]
    text = ". ".join(p for p in parts if p)
    return text or None


class DIMFeaturizer:
    """Frozen encoders -> features: text (sentence-transformers, or `clip:FOLDER` for a CLIP
    text tower), images (`VisionEncoder`, optional), expert text (captions keyed by mention id
    or image reference, optional)."""

    @property
    def retrieval_encoder(self) -> SentenceEncoder | None:
        """The encoder candidate retrieval shares (a CLIP text tower is not used for retrieval:
        its 77-token context cuts descriptions)."""
        return self.encoder if isinstance(self.encoder, SentenceEncoder) else None

    def __init__(self, encoder: str | SentenceEncoder | None = None, vision=None, image_root: str | Path | None = None,
                 captions: Mapping[str, Mapping] | None = None, cache_dir: str | Path | None = None) -> None:
        self.encoder = encoder if isinstance(encoder, TextEncoder) else text_encoder(encoder)
        self.vision, self.image_root, self.captions, self.cache_dir = vision, image_root, captions or {}, cache_dir
        self.image_errors: dict[str, str] = {}

    @property
    def text_dim(self) -> int:
        return self.encoder.dim

    @property
    def image_dim(self) -> int:
        return self.vision.feature_dim if self.vision is not None else 64

    def entities(self, kb: KnowledgeBase, descriptions: Mapping[str, str] | None = None,
                 show_progress: bool = False) -> torch.Tensor:
        descriptions = descriptions or {}
        texts = [entity_text(e.name, descriptions.get(e.id, e.description)) for e in kb]
        return torch.from_numpy(self.encoder.encode_cached(texts, kb.cache_dir(), show_progress=show_progress))

    def mentions(self, mentions: Sequence[Mention], show_progress: bool = False) -> MentionFeatures:
        texts = [mention_text(m) for m in mentions]
        if self.cache_dir is not None and len(texts) >= 1000:   # training sets: encoded once
            text = torch.from_numpy(self.encoder.encode_cached(texts, self.cache_dir, show_progress=show_progress))
        else:
            text = torch.from_numpy(self.encoder.encode(texts, show_progress=show_progress))
        feats = MentionFeatures(text)
        if self.vision is not None and any(m.image for m in mentions):
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
            feats.image, feats.image_mask = image, mask
        experts = [expert_text(self.captions.get(m.id) or (self.captions.get(m.image) if m.image else None))
                   for m in mentions]
        if any(experts):
            have = [i for i, x in enumerate(experts) if x]
            expert = torch.zeros(len(mentions), self.text_dim)
            expert[have] = torch.from_numpy(self.encoder.encode([experts[i] for i in have]))
            mask = torch.zeros(len(mentions), dtype=torch.bool)
            mask[have] = True
            feats.expert, feats.expert_mask = expert, mask
        return feats


def fuse_rankings(*rankings: Sequence[Candidate]) -> list[Candidate]:
    """Reciprocal rank fusion of candidate lists (score: sum of 1 / (60 + rank))."""
    names = {c.entity_id: c.name for ranking in rankings for c in ranking}
    fused = reciprocal_rank_fusion([[c.entity_id for c in ranking] for ranking in rankings])
    return [Candidate(e, names[e], score) for e, score in fused]


# ------------------------------------------------------------------------------ linker
class DIMLinker:
    """Retrieve candidates (BM25 + dense), rank them with a trained DIM; `rank` also serves the
    pipeline, which hands in the generative beams as extra candidates."""

    name = "dim"

    def __init__(self, kb: KnowledgeBase, model: DIMModel, featurizer: DIMFeaturizer,
                 retriever: CandidateRetriever | None = None, num_candidates: int = 100, top_k: int = 10,
                 descriptions: Mapping[str, str] | None = None, fuse_retrieval: bool = False) -> None:
        """`fuse_retrieval`: the final order is the reciprocal-rank fusion of DIM's order and the
        retriever's (DIM's frozen-feature towers miss exact name matches that BM25 sees)."""
        self.kb, self.model, self.featurizer = kb, model.eval(), featurizer
        self.fuse_retrieval = fuse_retrieval
        self.retriever = retriever or CandidateRetriever(kb, featurizer.retrieval_encoder, descriptions)
        self.num_candidates, self.top_k = num_candidates, top_k
        self.index = {e.id: i for i, e in enumerate(kb)}
        with torch.no_grad():
            self.entity_vectors = model.entities(featurizer.entities(kb, descriptions))

    @classmethod
    def from_pretrained(cls, folder: str | Path, kb: KnowledgeBase, *, image_root: str | Path | None = None,
                        captions: Mapping[str, Mapping] | None = None, descriptions: Mapping[str, str] | None = None,
                        **kwargs) -> "DIMLinker":
        """A trained DIM folder (`gen-linker train-dim`) over `kb`."""
        from ..adapters import vision_encoder

        model, card = DIMModel.load(folder)
        vision = vision_encoder(card["vision"]) if card.get("vision") else None
        featurizer = DIMFeaturizer(card.get("text_encoder"), vision, image_root, captions, kb.cache_dir())
        if featurizer.text_dim != model.config.text_dim:
            raise GenLinkerError(f"DIM {folder} expects {model.config.text_dim}-d text features, its text encoder "
                                 f"gives {featurizer.text_dim}")
        return cls(kb, model, featurizer, descriptions=descriptions, **kwargs)

    @torch.no_grad()
    def rank(self, mentions: Sequence[Mention], candidates: Sequence[Sequence[str]]) -> list[list[Candidate]]:
        """Each mention's candidate ids ranked by DIM (score: cosine x scale)."""
        vectors = self.model.mentions(**self.featurizer.mentions(mentions).as_kwargs())
        out = []
        for vec, ids in zip(vectors, candidates):
            ids = list(dict.fromkeys(i for i in ids if i in self.index))
            if not ids:
                out.append([])
                continue
            ent = self.entity_vectors[[self.index[i] for i in ids]]
            scores = self.model.scores(vec[None], ent)[0]
            order = torch.argsort(scores, descending=True, stable=True)
            out.append([Candidate(ids[j], self.kb.get(ids[j]).name, float(scores[j])) for j in order.tolist()])
        return out

    def link(self, mentions: Sequence[Mention]) -> list[LinkResult]:
        retrieved = self.retriever.retrieve(mentions, self.num_candidates)
        ranked = self.rank(mentions, [[c.entity_id for c in cands] for cands in retrieved])
        if self.fuse_retrieval:
            ranked = [fuse_rankings(d, r) for d, r in zip(ranked, retrieved)]
        results = []
        for m, cands in zip(mentions, ranked):
            cands = cands[: self.top_k]
            best = cands[0] if cands else None
            results.append(LinkResult(m.id, best and best.entity_id, best and best.name, best and best.score,
                                      cands, self.name, image_error=self.featurizer.image_errors.get(str(m.image))))
        return results
