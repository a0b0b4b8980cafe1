"""llama-index integration: entities of your KB linked inside RAG and knowledge-graph pipelines.

    pip install "gen-linker[llama-index]"

    from gen_linker.integrations.llama_index import (EntityLinking, GenLinkerExtractor,
        GenLinkerGraphExtractor, KBEntityRetriever, EntityNodePostprocessor)
    linking = EntityLinking.load("my_kb/")          # KB folder or entities JSONL; default linker
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(), GenLinkerExtractor(linking)])

- `GenLinkerExtractor` (a `BaseExtractor`): per node, the mentions of KB names and aliases
  (the gazetteer detector of `gen-linker link --detect`), linked in batches across nodes;
  node metadata gets `entities` (id, name, mention, start, end, score, confidence) and a flat
  `entity_ids` list.
- `GenLinkerGraphExtractor` (a `TransformComponent` for `PropertyGraphIndex(kg_extractors=...)`):
  an `EntityNode` per linked entity, named "Name (QID)" (names alone collide), with the KB's
  description as a property, and a `MENTIONS` relation from the text chunk to it.
- `KBEntityRetriever` (a `BaseRetriever`): a query's linked entities as `NodeWithScore`s of
  their KB entries (the description as text), for entity-centric retrieval.
- `EntityNodePostprocessor`: boosts (or keeps only) retrieved nodes that mention the query's
  linked entities.

One `EntityLinking` (KB, linker, detector) is loaded once and shared by every component.
Linking is CPU-bound and synchronous; the async entry points run it in a worker thread so
that an event loop is not blocked.
"""
from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

try:
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.extractors import BaseExtractor
    from llama_index.core.graph_stores.types import KG_NODES_KEY, KG_RELATIONS_KEY, EntityNode, Relation
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import (BaseNode, MetadataMode, NodeWithScore, QueryBundle, TextNode,
                                         TransformComponent)
except ImportError as exc:   # pragma: no cover - depends on the extra
    raise ImportError("gen_linker.integrations.llama_index needs llama-index-core: "
                      'pip install "gen-linker[llama-index]"') from exc

from ..detect import gazetteer_for
from ..encoders import text_digest
from ..kb import KnowledgeBase
from ..schema import Mention

RELATION = "MENTIONS"


@dataclass
class LinkedEntity:
    """One linked mention of a text: what the components write and return."""

    id: str
    name: str
    mention: str
    start: int
    end: int
    score: float | None
    confidence: float | None

    def to_dict(self) -> dict:
        return asdict(self)


class EntityLinking:
    """A KB, a linker over it and the mention detector: texts in, linked entities out."""

    def __init__(self, kb: KnowledgeBase, linker, batch_size: int = 64, min_confidence: float | None = None,
                 case: str = "smart") -> None:
        """`min_confidence`: answers less sure than this are left out (None: every answer)."""
        self.kb, self.linker, self.batch_size = kb, linker, batch_size
        self.min_confidence, self.case = min_confidence, case
        self.gazetteer = gazetteer_for(kb)
        self._lock = threading.Lock()     # one linker, possibly several event-loop threads
        # what llama-index's ingestion cache should key on: the KB, the linker, the threshold
        self.identity = f"kb={kb.fingerprint};linker={getattr(linker, 'name', type(linker).__name__)}" \
                        f";min_confidence={min_confidence}"

    @classmethod
    def load(cls, kb: str | Path | KnowledgeBase, linker: Any = None, **kwargs) -> "EntityLinking":
        """`kb`: a KB folder, an entities JSONL file or a `KnowledgeBase`; `linker`: a saved
        linker folder (e.g. from `gen-linker adapt`), a spec YAML or dict, None for the packaged
        default."""
        from ..loader import load_linker, read_spec

        kb = kb if isinstance(kb, KnowledgeBase) else KnowledgeBase.open(kb)
        spec = read_spec(linker)
        made = cls(kb, load_linker(kb, spec), **kwargs)
        made.identity += f";spec={text_digest([spec.to_yaml()])}"
        return made

    def link_texts(self, texts: Sequence[str]) -> list[list[LinkedEntity]]:
        """Per text, its detected mentions linked (in text order), NIL answers left out. The
        mentions of all texts are linked together, `batch_size` at a time."""
        mentions: list[Mention] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            for n, (start, end, surface) in enumerate(self.gazetteer.find(text, self.case)):
                mentions.append(Mention(id=f"{i}:{n}", text=text, mention=surface, start=start, end=end))
                owner.append(i)
        out: list[list[LinkedEntity]] = [[] for _ in texts]
        with self._lock:
            for at in range(0, len(mentions), self.batch_size):
                batch = mentions[at : at + self.batch_size]
                for m, i, r in zip(batch, owner[at : at + self.batch_size], self.linker.link(batch)):
                    if r.entity_id is None:
                        continue
                    if self.min_confidence is not None and (r.confidence or 0.0) < self.min_confidence:
                        continue
                    out[i].append(LinkedEntity(r.entity_id, r.name or self.kb.get(r.entity_id).name, m.mention,
                                               m.start, m.end, r.score, r.confidence))
        return out

    async def alink_texts(self, texts: Sequence[str]) -> list[list[LinkedEntity]]:
        return await asyncio.to_thread(self.link_texts, list(texts))

    def ranked(self, text: str, entity: LinkedEntity) -> list[str]:
        """The linker's ranked candidate ids for one linked mention of `text`."""
        with self._lock:
            r = self.linker.process_text(text, entity.mention, entity.start, entity.end)
        return [c.entity_id for c in r.candidates]

    def node_name(self, entity_id: str) -> str:
        """The graph node name of an entity: "Name (QID)"."""
        return f"{self.kb.get(entity_id).name} ({entity_id})"


def _texts(nodes: Sequence[BaseNode]) -> list[str]:
    return [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes]


class _LinkingComponent(TransformComponent):
    """A llama-index transformation that holds an `EntityLinking` (not a pydantic field: it is
    not serialisable, and one is shared by many components). `linking_id` names the KB, linker
    and threshold, so that an ingestion cache keyed on the component's fields tells two apart.
    Not for `IngestionPipeline(num_workers>1)`: the linker stays in this process (it batches)."""

    linking_id: str = Field(default="", description="the KB, linker and threshold it links with")
    _linking: EntityLinking = PrivateAttr()

    def __init__(self, linking: EntityLinking, **kwargs: Any) -> None:
        super().__init__(linking_id=linking.identity, **kwargs)
        self._linking = linking

    @classmethod
    def class_name(cls) -> str:
        return cls.__name__


class GenLinkerExtractor(BaseExtractor, _LinkingComponent):
    """Node metadata `entities` (the linked mentions) and `entity_ids` (distinct ids, in order).
    `flat=True`: both as strings (`entities` JSON, `entity_ids` comma-separated), for vector
    stores that take flat metadata only (e.g. Chroma)."""

    flat: bool = Field(default=False, description="entities as a JSON string, entity_ids comma-separated")

    @classmethod
    def class_name(cls) -> str:
        return "GenLinkerExtractor"

    async def aextract(self, nodes: Sequence[BaseNode]) -> List[Dict]:
        found = await self._linking.alink_texts(_texts(nodes))
        out = []
        for ents in found:
            entities, ids = [e.to_dict() for e in ents], list(dict.fromkeys(e.id for e in ents))
            out.append({"entities": json.dumps(entities), "entity_ids": ",".join(ids)} if self.flat
                       else {"entities": entities, "entity_ids": ids})
        return out

    async def aprocess_nodes(self, nodes: Sequence[BaseNode], excluded_embed_metadata_keys=None,
                             excluded_llm_metadata_keys=None, **kwargs: Any) -> List[BaseNode]:
        """As the base class, but the long `entities` list is also kept out of what is embedded
        and what the LLM reads (the short `entity_ids` stay)."""
        return await super().aprocess_nodes(nodes, [*(excluded_embed_metadata_keys or []), "entities"],
                                            [*(excluded_llm_metadata_keys or []), "entities"], **kwargs)


class GenLinkerGraphExtractor(_LinkingComponent):
    """`PropertyGraphIndex` kg extractor: KB entities as `EntityNode`s, `MENTIONS` relations
    from each text chunk to the entities it mentions."""

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return self._add(nodes, self._linking.link_texts(_texts(nodes)))

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        return self._add(nodes, await self._linking.alink_texts(_texts(nodes)))

    def _add(self, nodes: Sequence[BaseNode], found: list[list[LinkedEntity]]) -> Sequence[BaseNode]:
        kb = self._linking.kb
        for node, ents in zip(nodes, found):
            kg_nodes = node.metadata.pop(KG_NODES_KEY, [])
            kg_rels = node.metadata.pop(KG_RELATIONS_KEY, [])
            seen: dict[str, EntityNode] = {}
            for e in ents:
                if e.id not in seen:
                    ent = kb.get(e.id)
                    props = {"kb_id": e.id, "kb_name": ent.name}
                    if ent.description:
                        props["description"] = ent.description
                    seen[e.id] = EntityNode(name=self._linking.node_name(e.id), label="ENTITY", properties=props)
                kg_rels.append(Relation(label=RELATION, source_id=node.node_id, target_id=seen[e.id].id,
                                        properties={"mention": e.mention, "start": e.start, "end": e.end,
                                                    "confidence": e.confidence}))
            kg_nodes.extend(seen.values())
            node.metadata[KG_NODES_KEY] = kg_nodes
            node.metadata[KG_RELATIONS_KEY] = kg_rels
        return nodes


class KBEntityRetriever(BaseRetriever):
    """The KB entries of the entities a query mentions, best first (score: the linker's
    confidence where it gives one)."""

    def __init__(self, linking: EntityLinking, candidates: int = 1, **kwargs: Any) -> None:
        """`candidates`: KB entries per mention (1: the linked entity; more: its runners-up too)."""
        super().__init__(**kwargs)
        self._linking, self._candidates = linking, candidates

    def _retrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        ents = self._linking.link_texts([query_bundle.query_str])[0]
        return self._entries(query_bundle.query_str, ents)

    async def _aretrieve(self, query_bundle: QueryBundle) -> List[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def _entries(self, query: str, ents: list[LinkedEntity]) -> List[NodeWithScore]:
        kb, out, seen = self._linking.kb, [], set()
        for e in ents:
            ids = [e.id]
            if self._candidates > 1:
                ids += [c for c in self._linking.ranked(query, e) if c != e.id][: self._candidates - 1]
            for rank, eid in enumerate(ids):
                if eid in seen:
                    continue
                seen.add(eid)
                ent = kb.get(eid)
                text = f"{ent.name}: {ent.description}" if ent.description else ent.name
                node = TextNode(id_=f"kb:{eid}", text=text,
                                metadata={"entity_id": eid, "name": ent.name, "mention": e.mention})
                score = e.confidence if e.confidence is not None else e.score
                out.append(NodeWithScore(node=node, score=(score if rank == 0 else None)))
        return out


def _ids(value) -> set[str]:
    """`entity_ids` metadata as a set: a list, or the comma-separated string of `flat=True`."""
    return {v for v in value.split(",") if v} if isinstance(value, str) else set(value)


class EntityNodePostprocessor(BaseNodePostprocessor):
    """Retrieved nodes reordered by the query's linked entities: each entity a node shares
    with the query adds `boost` to its score (`mode="boost"`), or nodes sharing none are
    dropped (`mode="filter"`). A node's entities: its `entity_ids` metadata (from
    `GenLinkerExtractor`), else its text is linked here. A query without linked entities leaves
    the nodes as they are."""

    mode: str = "boost"
    boost: float = 1.0
    _linking: EntityLinking = PrivateAttr()

    def __init__(self, linking: EntityLinking, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.mode not in ("boost", "filter"):
            raise ValueError(f"EntityNodePostprocessor mode must be 'boost' or 'filter', not {self.mode!r}")
        self._linking = linking

    @classmethod
    def class_name(cls) -> str:
        return "EntityNodePostprocessor"

    def _postprocess_nodes(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle] = None
                           ) -> List[NodeWithScore]:
        if query_bundle is None or not nodes:
            return nodes
        wanted = {e.id for e in self._linking.link_texts([query_bundle.query_str])[0]}
        if not wanted:
            return nodes
        unlabelled = [n for n in nodes if "entity_ids" not in n.node.metadata]
        linked = dict(zip((id(n) for n in unlabelled), self._linking.link_texts(_texts([n.node for n in unlabelled]))))
        out = []
        for n in nodes:
            ids = _ids(n.node.metadata["entity_ids"]) if id(n) not in linked else {e.id for e in linked[id(n)]}
            shared = len(ids & wanted)
            if self.mode == "filter":
                if shared:
                    out.append(n)
            else:
                out.append(NodeWithScore(node=n.node, score=(n.score or 0.0) + self.boost * shared))
        if self.mode == "boost":
            out.sort(key=lambda n: -(n.score or 0.0))
        return out


__all__ = ["EntityLinking", "EntityNodePostprocessor", "GenLinkerExtractor", "GenLinkerGraphExtractor",
           "KBEntityRetriever", "LinkedEntity", "RELATION"]
