"""What the discriminative linkers (DIM: `linkers.dim`, DWE: `linkers.dwe`) share: the model
base with its saved folder and card, the N-pair loss, and the linker that retrieves candidates
and ranks them with a trained model.

A trained model is a folder: `dim.safetensors` + `dim.yaml` (the card: `arch`, the model's
sizes, encoders, KB, data, dev scores), whatever the architecture, so a spec's `dim.folder`,
the saved-linker copy (`loader.ARTEFACTS`) and the pipeline / fused linkers take either. The
card's `arch` (`dim` | `dwe`; absent in folders written before DWE: `dim`) decides which model
class loads it and which linker ranks with it.
"""
from __future__ import annotations

import importlib
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import torch
import yaml
from torch import nn

from ..candidates import CandidateRetriever, reciprocal_rank_fusion
from ..errors import GenLinkerError
from ..kb import KnowledgeBase
from ..schema import Candidate, LinkResult, Mention
from ..vision import MAX_CROPS, load_vision_encoder, read_regions
from .base import LinkerBase
from .discriminative_features import DIM_VIEWS, DiscriminativeFeaturizer, MentionFeatures
from .fused import softmax_confidence

CARD, WEIGHTS = "dim.yaml", "dim.safetensors"
# arch -> (module, model class, linker class)
ARCHS: dict[str, tuple[str, str, str]] = {"dim": ("gen_linker.linkers.dim", "DIMModel", "DIMLinker"),
                                          "dwe": ("gen_linker.linkers.dwe", "DWEModel", "DWELinker")}


def npair_loss(pos: torch.Tensor, neg: torch.Tensor, neg_mask: torch.Tensor | None = None) -> torch.Tensor:
    """N-pair loss (Sohn 2016), mean over the batch: log(1 + sum_j exp(neg_j - pos)).

    `pos` `[B]` is each mention's score for its gold entity, `neg` `[B, N]` its scores for the
    negatives; `neg_mask` `[B, N]` (True = use) drops entries that are not real negatives
    (padding, or an in-batch entity equal to the gold)."""
    if neg_mask is not None:
        neg = neg.masked_fill(~neg_mask, float("-inf"))
    logits = torch.cat([pos[:, None], neg], 1)
    return (torch.logsumexp(logits, 1) - pos).mean()


class DiscriminativeModel(nn.Module):
    """A mention tower over frozen features, an entity tower, and a score; saved as a folder."""

    arch: ClassVar[str] = ""
    views: ClassVar[tuple[str, ...]] = DIM_VIEWS     # the featurizer views `query` reads
    config_class: ClassVar[type]
    config: object

    def query(self, feats: MentionFeatures) -> torch.Tensor:
        """`[B, d]` mention vectors."""
        return self.forward_train(feats)[0]

    def forward_train(self, feats: MentionFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Mention vectors and the model's own loss terms beside the N-pair loss (0 if none)."""
        raise NotImplementedError

    @property
    def npair_weight(self) -> float:
        return 1.0

    def entities(self, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, mentions: torch.Tensor, entities: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------------- save / load
    def save(self, folder: str | Path, card: Mapping | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, str(folder / WEIGHTS))
        card = {k: v for k, v in (card or {}).items() if k not in ("arch", "model")}
        (folder / CARD).write_text(yaml.safe_dump({"arch": self.arch, "model": asdict(self.config), **card},
                                                  sort_keys=False))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple["DiscriminativeModel", dict]:
        """(model in eval mode, card without its `model` sizes). Called on the base class it
        loads whichever architecture the card names; on DIMModel / DWEModel, only that one."""
        from safetensors.torch import load_file

        folder = Path(folder)
        card = read_card(folder)
        arch = card["arch"]
        model_cls = model_class(arch)
        if cls is not DiscriminativeModel and model_cls is not cls:
            raise GenLinkerError(f"{folder} holds a trained {arch.upper()} (card arch: {arch}), not a "
                                 f"{cls.arch.upper()}")
        model = model_cls(model_cls.config_class(**card.pop("model")))
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
        return model.eval(), card


def read_card(folder: str | Path) -> dict:
    """The card of a trained discriminative model folder, with `arch` filled in (old DIM
    folders have none)."""
    folder = Path(folder)
    if not (folder / CARD).exists() or not (folder / WEIGHTS).exists():
        raise GenLinkerError(f"{folder} is not a trained DIM/DWE (needs {CARD} and {WEIGHTS}); train one with "
                             "gen-linker train-dim [--arch dwe]")
    card = yaml.safe_load((folder / CARD).read_text()) or {}
    card["arch"] = card.get("arch") or "dim"
    if card["arch"] not in ARCHS:
        raise GenLinkerError(f"{folder / CARD}: unknown arch {card['arch']!r}; known: {', '.join(ARCHS)}")
    return card


def _import(arch: str, which: int):
    module, *names = ARCHS[arch]
    return getattr(importlib.import_module(module), names[which])


def model_class(arch: str) -> type[DiscriminativeModel]:
    return _import(arch, 0)


def linker_class(arch: str) -> type["DiscriminativeLinker"]:
    return _import(arch, 1)


def fuse_rankings(*rankings: Sequence[Candidate]) -> list[Candidate]:
    """Reciprocal rank fusion of candidate lists (score: sum of 1 / (60 + rank))."""
    names = {c.entity_id: c.name for ranking in rankings for c in ranking}
    fused = reciprocal_rank_fusion([[c.entity_id for c in ranking] for ranking in rankings])
    return [Candidate(e, names[e], score) for e, score in fused]


def featurizer_for(card: Mapping, encoder, image_root=None, captions=None, cache_dir=None,
                   regions_file: str | Path | None = None) -> DiscriminativeFeaturizer:
    """The featurizer a trained model's card asks for: its vision encoder, its crop grid."""
    vision = load_vision_encoder(card["vision"]) if card.get("vision") else None
    crops = card.get("crops") or {}
    regions = read_regions(regions_file) if regions_file and vision is not None else None
    return DiscriminativeFeaturizer(encoder, vision, image_root, captions, cache_dir, regions=regions,
                                    grid=int(crops.get("grid", 2)), max_crops=int(crops.get("max", MAX_CROPS)))


# ------------------------------------------------------------------------------ linker
class DiscriminativeLinker(LinkerBase):
    """Retrieve candidates (BM25 + dense), rank them with a trained model; `rank` also serves
    the pipeline (which hands in the generative beams as extra candidates) and the fused
    linker (the model's scores as a feature)."""

    name = "dim"

    def __init__(self, kb: KnowledgeBase, model: DiscriminativeModel, featurizer: DiscriminativeFeaturizer,
                 retriever: CandidateRetriever | None = None, num_candidates: int = 100, top_k: int = 10,
                 descriptions: Mapping[str, str] | None = None, fuse_retrieval: bool = False) -> None:
        """`fuse_retrieval`: the final order is the reciprocal-rank fusion of the model's order
        and the retriever's (frozen-feature towers miss exact name matches that BM25 sees)."""
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
                        regions: str | Path | None = None, **kwargs) -> "DiscriminativeLinker":
        """A trained folder (`gen-linker train-dim [--arch dwe]`) over `kb`: the linker of the
        card's arch when called on this base class, else `cls` (which must match the card)."""
        model_cls = DiscriminativeModel if cls is DiscriminativeLinker else model_class(cls.name)
        model, card = model_cls.load(folder)
        featurizer = featurizer_for(card, card.get("text_encoder"), image_root, captions, kb.cache_dir(), regions)
        _check_text_dim(folder, model, featurizer)
        return linker_class(model.arch)(kb, model, featurizer, descriptions=descriptions, **kwargs)

    @classmethod
    def check_spec(cls, spec, source: str = "linker spec") -> None:
        """A trained folder is named and complete, and of this linker's arch (before any model
        loads)."""
        check_dim_folder(spec, source)

    @classmethod
    def from_spec(cls, spec, parts) -> "DiscriminativeLinker":
        """The linker of the card's arch for a `LinkerSpec`, sharing the load's retriever and
        sentence encoder (the pipeline and the fused linker call it for any arch)."""
        from ..annotations import read_captions

        model, card = DiscriminativeModel.load(spec.dim.folder)
        text = card.get("text_encoder")
        encoder = text if (text or "").startswith("clip:") else parts.sentence_encoder(text)
        captions = read_captions(spec.dim.captions) if spec.dim.captions else None
        featurizer = featurizer_for(card, encoder, spec.image_root, captions, parts.kb.cache_dir(), spec.dim.regions)
        _check_text_dim(spec.dim.folder, model, featurizer)
        return linker_class(model.arch)(parts.kb, model, featurizer, retriever=parts.retriever,
                                        num_candidates=spec.candidates.count, top_k=spec.top_k or 10,
                                        descriptions=parts.descriptions, fuse_retrieval=spec.dim.fuse_retrieval)

    @torch.no_grad()
    def rank(self, mentions: Sequence[Mention], candidates: Sequence[Sequence[str]]) -> list[list[Candidate]]:
        """Each mention's candidate ids ranked by the model (score: its similarity)."""
        vectors = self.model.query(self.featurizer.mentions(mentions, self.model.views))
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
                                      cands, self.name, image_error=self.featurizer.image_errors.get(str(m.image)),
                                      confidence=softmax_confidence([c.score for c in cands])))
        return results


def _check_text_dim(folder, model: DiscriminativeModel, featurizer: DiscriminativeFeaturizer) -> None:
    if featurizer.text_dim != model.config.text_dim:
        raise GenLinkerError(f"{model.arch.upper()} {folder} expects {model.config.text_dim}-d text features, its "
                             f"text encoder gives {featurizer.text_dim}")


def check_dim_folder(spec, source: str = "linker spec") -> None:
    """The spec names a trained DIM/DWE folder with its weights and card; linkers `dim` and
    `dwe` also need the card's arch to be theirs (the pipeline and fused linkers take either)."""
    from ..spec import SpecError

    folder = spec.dim.folder
    if not folder:
        raise SpecError(f"{source}: linker {spec.linker!r} needs dim.folder (--dim FOLDER): a model trained with "
                        "gen-linker train-dim [--arch dwe]")
    missing = [f for f in (CARD, WEIGHTS) if not (Path(folder) / f).exists()]
    if missing:
        raise SpecError(f"{source}: dim.folder {folder} is not a trained DIM/DWE (missing {', '.join(missing)}); "
                        "train one with gen-linker train-dim [--arch dwe]")
    try:
        arch = (yaml.safe_load((Path(folder) / CARD).read_text()) or {}).get("arch") or "dim"
    except yaml.YAMLError as e:
        raise SpecError(f"{source}: {Path(folder) / CARD} is not valid YAML: {e}") from None
    if arch not in ARCHS:
        raise SpecError(f"{source}: {Path(folder) / CARD}: unknown arch {arch!r}; known: {', '.join(ARCHS)}")
    if spec.linker in ARCHS and arch != spec.linker:
        raise SpecError(f"{source}: linker {spec.linker!r} but dim.folder {folder} holds a trained {arch.upper()} "
                        f"(card arch: {arch}): use linker {arch!r}, or a folder trained with --arch {spec.linker}")
