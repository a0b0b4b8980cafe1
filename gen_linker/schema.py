"""The data types every part of gen-linker shares: plain, JSON-serialisable dataclasses."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


def _from_dict(cls, data: dict[str, Any]):
    """Build a dataclass from a dict, ignoring keys it does not know (forward compatible)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class Entity:
    """A knowledge-base entity. `id` is a string (a Wikidata QID where the KB has them)."""

    id: str
    name: str
    aliases: tuple[str, ...] = ()
    description: str | None = None
    image: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"id": self.id, "name": self.name}
        if self.aliases:
            d["aliases"] = list(self.aliases)
        if self.description is not None:
            d["description"] = self.description
        if self.image is not None:
            d["image"] = self.image
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entity":
        data = dict(data)
        data["aliases"] = tuple(data.get("aliases") or ())
        return _from_dict(cls, data)


@dataclass
class Mention:
    """A mention `mention` of `text` at character offsets `start:end`; `gold` is an entity id."""

    id: str
    text: str
    mention: str
    start: int | None = None
    end: int | None = None
    image: str | None = None
    gold: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Mention":
        return _from_dict(cls, data)


@dataclass
class Candidate:
    """One ranked alternative: an entity and the linker's score for it."""

    entity_id: str
    name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"entity_id": self.entity_id, "name": self.name, "score": self.score}


@dataclass
class LinkResult:
    """The linker's answer for one mention; `entity_id=None` means NIL.

    `score` is the linker's own score of the answer (for the generative linker, the summed
    token log-probability of the generated name); `candidates` are the ranked top-k.
    """

    mention_id: str
    entity_id: str | None
    name: str | None
    score: float | None
    candidates: list[Candidate] = field(default_factory=list)
    linker: str = "generative"
    fallback: str | None = None
    image_error: str | None = None   # why the mention's image could not be used (linked without it)
    confidence: float | None = None  # probability in [0, 1] that the answer is right (calibrated by
                                     # the fused linker; a softmax over the candidates' scores elsewhere)

    def to_dict(self) -> dict[str, Any]:
        """The output record of `gen-linker link` (the mention id is written as `id`)."""
        d: dict[str, Any] = {
            "id": self.mention_id,
            "entity_id": self.entity_id,
            "name": self.name,
            "score": self.score,
            "candidates": [c.to_dict() for c in self.candidates],
            "linker": self.linker,
        }
        if self.confidence is not None:
            d["confidence"] = self.confidence
        if self.fallback is not None:
            d["fallback"] = self.fallback
        if self.image_error is not None:
            d["image_error"] = self.image_error
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LinkResult":
        return cls(
            mention_id=str(data["id"]),
            entity_id=data.get("entity_id"),
            name=data.get("name"),
            score=data.get("score"),
            candidates=[Candidate(**c) for c in data.get("candidates", [])],
            linker=data.get("linker", "generative"),
            fallback=data.get("fallback"),
            image_error=data.get("image_error"),
            confidence=data.get("confidence"),
        )
