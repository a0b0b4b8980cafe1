"""The knowledge base: entities, lookup by id and by name, and its folder on disk.

A narrow interface in the spirit of spaCy's KB: linkers ask for an entity by id, for the ids
bearing a name, and for the list of distinct names (which the trie is built over). Names need
not be unique: a generated name maps to every entity that bears it.

On disk a KB is a folder: `entities.jsonl` (one entity per line), `kb.json` (counts and a
fingerprint), and `cache/` where the arrays built for it are kept (name tries per tokenizer,
the BM25 matrix, entity embeddings, an ANN index at scale). Those arrays are memory-mapped
when read, so the linker processes of one machine share one copy of them; the entities
themselves are Python objects in each process.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from .errors import KnowledgeBaseError, RecordError
from .schema import Entity
from .paths import cache_root


FREEZE_FROM = 100_000      # entities from which a loaded KB is moved out of the GC's scans


def _keep_out_of_gc_scans() -> None:
    """A loaded KB lives as long as the process; its million entity objects need never be
    scanned for reference cycles. Without this every full collection walks them all (~0.1 s
    at a million entities), stalling linking at random: top-10 BM25 over 1M entities swung
    between 5,700 and 15,000 mentions/s from one pass over the same mentions to the next
    (eval/bench_kb_scale.py). `gc.freeze` moves every object alive now into a permanent
    generation that collections skip (what CPython documents it for)."""
    gc.collect()
    gc.freeze()


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
    def from_jsonl(cls, path: str | Path, progress: bool = False) -> "KnowledgeBase":
        """Read an entities JSONL file, streamed line by line (`progress`: a bar over its
        lines, for files of millions of entities). Unreadable lines are skipped, kept in
        `load_errors` and warned about once, so one bad line does not cost the whole KB."""
        path = Path(path)
        if not path.exists():
            raise KnowledgeBaseError(f"knowledge base file {path} does not exist")
        errors: list[RecordError] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=count_lines(path), desc=f"reading {path.name}", unit="line", dynamic_ncols=True,
                       mininterval=1.0)
        entities = list(_read_entities(path, errors, bar))
        if bar is not None:
            bar.close()
        if not entities and errors:
            raise KnowledgeBaseError(
                f"knowledge base {path} has no readable entity: first problem: {errors[0]}")
        kb = cls(entities, source=str(path))
        kb.load_errors = errors
        if len(kb) >= FREEZE_FROM:
            _keep_out_of_gc_scans()
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

    def save(self, folder: str | Path, progress: bool = False) -> Path:
        """Write the KB as a folder; the folder then also holds the caches built for it."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "entities.jsonl.tmp"
        entities: Iterable[Entity] = self._entities
        if progress:
            from tqdm.auto import tqdm

            entities = tqdm(self._entities, desc="writing entities", unit="entity", dynamic_ncols=True,
                            mininterval=1.0)
        write_entities(entities, tmp)
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
        """Where caches for this KB go: inside its folder when writable, else the user cache.
        A read-only folder whose `cache/` was built beforehand (`gen-linker build-kb
        --prepare`, e.g. on a cluster's shared disk) is read from there: its arrays are
        memory-mapped by every worker of a machine, one copy."""
        if self.folder is not None:
            cache = self.folder / "cache"
            if os.access(self.folder, os.W_OK) or cache.is_dir():
                return cache
        return cache_root() / "kb" / self.fingerprint


def _read_entities(path: Path, errors: list[RecordError], bar=None) -> Iterator[Entity]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if bar is not None:
                bar.update(1)
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


def count_lines(path: str | Path) -> int:
    """Lines of a file, counted in 1 MB blocks (a second for a million entities)."""
    n, last = 0, b"\n"
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            n += block.count(b"\n")
            last = block[-1:]
    return n + (last != b"\n")


def write_entities(entities: Iterable[Entity], path: str | Path) -> int:
    """Write entities as JSONL; returns how many."""
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with Path(path).open("w", encoding="utf-8") as f:
        for ent in entities:
            f.write(json.dumps(ent.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    return n
