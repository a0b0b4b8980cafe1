"""The knowledge base: entities, lookup by id and by name, and its folder on disk.

A narrow interface in the spirit of spaCy's KB: linkers ask for an entity by id, for the ids
bearing a name, and for the list of distinct names (which the trie is built over). Names need
not be unique: a generated name maps to every entity that bears it.

On disk a KB is a folder: `entities.jsonl` (one entity per line), `kb.json` (counts and a
fingerprint), and `cache/` where tries and embeddings built for it are kept.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from .errors import KnowledgeBaseError, RecordError
from .schema import Entity
from .paths import cache_root


class KnowledgeBase:
    """Entities with id and name indexes. Build with `from_entities`, `from_jsonl` or `open`."""

    def __init__(self, entities: Iterable[Entity], *, source: str = "<memory>",
                 folder: Path | None = None) -> None:
        self.source = source
        self.folder = folder
        self.load_errors: list[RecordError] = []
        self._entities: list[Entity] = []
        self._by_id: dict[str, int] = {}
        self._by_name: dict[str, list[int]] = {}
        for ent in entities:
            self._add(ent)
        if not self._entities:
            raise KnowledgeBaseError(
                f"knowledge base {source} has no entities: give an entities JSONL file with one "
                '{"id": ..., "name": ...} object per line, or a KB folder built by gen-linker')
        self._names: list[str] | None = None
        self._fingerprint: str | None = None
        self._lower: dict[str, list[str]] | None = None

    def _add(self, ent: Entity) -> None:
        if ent.id in self._by_id:
            raise KnowledgeBaseError(f"{self.source}: entity id {ent.id!r} appears twice")
        self._by_id[ent.id] = len(self._entities)
        self._entities.append(ent)
        self._by_name.setdefault(ent.name, []).append(len(self._entities) - 1)

    # ------------------------------------------------------------------------- loading
    @classmethod
    def from_entities(cls, entities: Iterable[Entity], source: str = "<memory>") -> "KnowledgeBase":
        return cls(entities, source=source)

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "KnowledgeBase":
        """Read an entities JSONL file. Unreadable lines are skipped, kept in `load_errors`
        and warned about once, so one bad line does not cost the whole KB."""
        path = Path(path)
        if not path.exists():
            raise KnowledgeBaseError(f"knowledge base file {path} does not exist")
        errors: list[RecordError] = []
        entities = list(_read_entities(path, errors))
        if not entities and errors:
            raise KnowledgeBaseError(
                f"knowledge base {path} has no readable entity: first problem: {errors[0]}")
        kb = cls(entities, source=str(path))
        kb.load_errors = errors
        if errors:
            warnings.warn(f"{len(errors)} unreadable line(s) in {path} were skipped; "
                          f"first: {errors[0]}", stacklevel=2)
        return kb

    @classmethod
    def open(cls, path: str | Path) -> "KnowledgeBase":
        """A KB folder (saved by `save`) or an entities JSONL file."""
        path = Path(path)
        if path.is_dir():
            if not (path / "entities.jsonl").exists():
                raise KnowledgeBaseError(f"{path} is a folder without entities.jsonl: not a KB folder")
            kb = cls.from_jsonl(path / "entities.jsonl")
            kb.folder = path
            return kb
        return cls.from_jsonl(path)

    def save(self, folder: str | Path) -> Path:
        """Write the KB as a folder; the folder then also holds the caches built for it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "entities.jsonl.tmp"
        write_entities(self._entities, tmp)
        os.replace(tmp, folder / "entities.jsonl")
        meta = {"entities": len(self), "names": len(self.names()), "fingerprint": self.fingerprint}
        (folder / "kb.json").write_text(json.dumps(meta, indent=2) + "\n")
        self.folder = folder
        return folder

    # -------------------------------------------------------------------------- lookups
    def __len__(self) -> int:
        return len(self._entities)

    def __iter__(self) -> Iterator[Entity]:
        return iter(self._entities)

    def __contains__(self, entity_id: str) -> bool:
        return entity_id in self._by_id

    def get(self, entity_id: str) -> Entity:
        try:
            return self._entities[self._by_id[entity_id]]
        except KeyError:
            raise KnowledgeBaseError(f"unknown entity id {entity_id!r} in knowledge base {self.source}") from None

    def ids_for_name(self, name: str) -> list[str]:
        """Every entity id whose name is exactly `name` (empty if none)."""
        return [self._entities[i].id for i in self._by_name.get(name, ())]

    def lookup(self, surface: str) -> list[str]:
        """Ids of entities whose name or an alias equals `surface`, ignoring case."""
        if self._lower is None:
            self._lower = {}
            for ent in self._entities:
                for key in {ent.name.lower(), *(a.lower() for a in ent.aliases)}:
                    self._lower.setdefault(key, []).append(ent.id)
        return list(self._lower.get(surface.lower(), ()))

    def names(self) -> list[str]:
        """The distinct entity names, sorted: the list the trie is built over."""
        if self._names is None:
            self._names = sorted(self._by_name)
        return self._names

    @property
    def fingerprint(self) -> str:
        """A hash of the ids and names: caches built for this KB are keyed by it."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            for ent in self._entities:
                h.update(f"{ent.id}\t{ent.name}\n".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def cache_dir(self) -> Path:
        """Where caches for this KB go: inside its folder when writable, else the user cache."""
        if self.folder is not None and os.access(self.folder, os.W_OK):
            return self.folder / "cache"
        return cache_root() / "kb" / self.fingerprint


def _read_entities(path: Path, errors: list[RecordError]) -> Iterator[Entity]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
                if not isinstance(data, dict):
                    raise ValueError("not a JSON object")
                if not data.get("id") or not isinstance(data.get("name"), str) or not data["name"].strip():
                    raise ValueError('needs a non-empty "id" and "name"')
                data["id"] = str(data["id"])
                yield Entity.from_dict(data)
            except ValueError as exc:  # json.JSONDecodeError is a ValueError
                errors.append(RecordError(f"bad entity: {exc}", source=str(path), line=lineno))


def write_entities(entities: Iterable[Entity], path: str | Path) -> int:
    """Write entities as JSONL; returns how many."""
    n = 0
    with Path(path).open("w", encoding="utf-8") as f:
        for ent in entities:
            f.write(json.dumps(ent.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
