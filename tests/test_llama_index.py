"""The llama-index integration, driven through llama-index itself (its MockEmbedding / MockLLM:
no model hub), over the example's small KB and paragraphs, with the packaged default linker."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import Document, PropertyGraphIndex, Settings, VectorStoreIndex  # noqa: E402
from llama_index.core.embeddings import MockEmbedding  # noqa: E402
from llama_index.core.ingestion import IngestionPipeline  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode  # noqa: E402

from gen_linker.integrations.llama_index import (EntityLinking, EntityNodePostprocessor,  # noqa: E402
                                                 GenLinkerExtractor, GenLinkerGraphExtractor, KBEntityRetriever)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "llama_index"
# unambiguous mentions of each paragraph (exact KB names or aliases) and the entity they name
EXPECTED = [{"Q7186", "Q270", "Q36", "Q209842"}, {"Q37463", "Q1094", "Q1128", "Q38104"}, {"Q1247"}, {"Q47899"}]


@pytest.fixture(scope="module")
def linking() -> EntityLinking:
    Settings.embed_model, Settings.llm = MockEmbedding(embed_dim=8), MockLLM()
    return EntityLinking.load(EXAMPLE / "kb.jsonl")


@pytest.fixture(scope="module")
def documents() -> list[Document]:
    paragraphs = (EXAMPLE / "documents.txt").read_text().split("\n\n")
    return [Document(text=p.strip(), metadata={"paragraph": i}) for i, p in enumerate(paragraphs)]


def test_extractor_in_a_vector_index(linking, documents):
    extractor = GenLinkerExtractor(linking)
    index = VectorStoreIndex.from_documents(
        documents, transformations=[SentenceSplitter(chunk_size=256, chunk_overlap=0), extractor])
    nodes = sorted(index.docstore.docs.values(), key=lambda n: n.metadata["paragraph"])
    assert len(nodes) == 4
    for node, expected in zip(nodes, EXPECTED):
        ids = node.metadata["entity_ids"]
        assert expected <= set(ids) and len(ids) == len(set(ids))
        text = node.get_content()
        for e in node.metadata["entities"]:
            assert text[e["start"] : e["end"]] == e["mention"]          # offsets into the node's text
            assert e["id"] in linking.kb and 0 <= e["confidence"] <= 1
        # the entity list is kept out of what is embedded; the id list is not
        embedded = node.get_content(metadata_mode="embed")
        assert "entity_ids" in embedded and "'mention'" not in embedded
    marie = next(e for e in nodes[0].metadata["entities"] if e["mention"] == "Marie Curie")
    assert marie["id"] == "Q7186" and marie["name"] == "Marie Curie"
    assert extractor.class_name() == "GenLinkerExtractor" and extractor.to_dict()["linking_id"] == linking.identity


def test_flat_metadata_and_component_identity(linking, documents):
    """flat=True: metadata a flat-only vector store accepts; the postprocessor reads it back.
    Two linkings (another threshold) give components that an ingestion cache tells apart."""
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    nodes = SentenceSplitter(chunk_size=256, chunk_overlap=0).get_nodes_from_documents(documents)
    out = GenLinkerExtractor(linking, flat=True)(nodes)
    assert isinstance(out[0].metadata["entity_ids"], str) and "Q7186" in out[0].metadata["entity_ids"].split(",")
    assert {e["id"] for e in json.loads(out[0].metadata["entities"])} == set(out[0].metadata["entity_ids"].split(","))
    node_to_metadata_dict(out[0], flat_metadata=True)          # raises on nested metadata
    hits = [NodeWithScore(node=n, score=0.0) for n in out]
    kept = EntityNodePostprocessor(linking, mode="filter").postprocess_nodes(hits, QueryBundle("Pierre Curie"))
    assert [n.node.metadata["paragraph"] for n in kept] == [1]
    other = EntityLinking(linking.kb, linking.linker, min_confidence=0.9)
    assert GenLinkerExtractor(other).to_dict() != GenLinkerExtractor(linking).to_dict()
    sure = other.link_texts(["Paris and Paris Hilton met Marie Curie in Warsaw."])[0]
    assert all(e.confidence >= 0.9 for e in sure) and len(sure) < len(linking.link_texts(
        ["Paris and Paris Hilton met Marie Curie in Warsaw."])[0])
    # the caller's exclusions are kept, `entities` added to them
    node = TextNode(text="Marie Curie in Warsaw.", metadata={"source": "x"})
    asyncio.run(GenLinkerExtractor(linking).aprocess_nodes([node], excluded_embed_metadata_keys=["source"]))
    assert {"source", "entities"} <= set(node.excluded_embed_metadata_keys)


def test_aextract_batches_across_nodes(linking, documents):
    nodes = SentenceSplitter(chunk_size=256, chunk_overlap=0).get_nodes_from_documents(documents)
    nodes.append(TextNode(text="Nothing from the knowledge base is named in this sentence."))
    calls = []
    real = linking.linker.link

    def counted(mentions):
        calls.append(len(mentions))
        return real(mentions)

    linking.linker.link = counted
    try:
        found = asyncio.run(GenLinkerExtractor(linking).aextract(nodes))
    finally:
        del linking.linker.link
    assert len(calls) == 1 and calls[0] == sum(len(f["entities"]) for f in found)   # one batch, all nodes
    assert found[-1] == {"entities": [], "entity_ids": []}
    assert found == GenLinkerExtractor(linking).extract(nodes)
    pipeline = IngestionPipeline(transformations=[GenLinkerExtractor(linking)])
    out = asyncio.run(pipeline.arun(nodes=[TextNode(text="Pierre Curie and radium.")]))
    assert out[0].metadata["entity_ids"] == ["Q37463", "Q1128"]


def test_property_graph_entities_and_mentions(linking, documents):
    graph = PropertyGraphIndex.from_documents(documents, kg_extractors=[GenLinkerGraphExtractor(linking)],
                                              embed_kg_nodes=False, use_async=False)
    store = graph.property_graph_store
    triplets = store.get_triplets(relation_names=["MENTIONS"])
    names = {t[2].name for t in triplets}
    assert {"Marie Curie (Q7186)", "Paris (Q1247)", "Paris Hilton (Q47899)", "radium (Q1128)"} <= names
    troy = store.get(ids=["Paris (Q1247)"])[0]
    assert troy.properties["kb_id"] == "Q1247" and "Troy" in troy.properties["description"]
    chunk_ids = {n.node_id for n in store.get_llama_nodes([t[0].id for t in triplets])}
    assert chunk_ids and {t[0].id for t in triplets} <= chunk_ids       # the relations start at text chunks
    curie = [t for t in triplets if t[2].name == "Marie Curie (Q7186)"]
    assert curie and curie[0][1].properties["mention"] == "Marie Curie"
    # the async path PropertyGraphIndex takes by default gives the same graph
    agraph = PropertyGraphIndex.from_documents(documents, kg_extractors=[GenLinkerGraphExtractor(linking)],
                                               embed_kg_nodes=False, use_async=True)
    assert {t[2].name for t in agraph.property_graph_store.get_triplets(relation_names=["MENTIONS"])} == names


def test_kb_entity_retriever(linking):
    hits = KBEntityRetriever(linking).retrieve("What did Marie Curie discover in Warsaw?")
    assert [h.node.metadata["entity_id"] for h in hits] == ["Q7186", "Q270"]
    assert hits[0].node.get_content().startswith("Marie Curie: Polish") and 0 < hits[0].score <= 1
    more = KBEntityRetriever(linking, candidates=3).retrieve("Paris of Troy")
    assert more[0].node.metadata["entity_id"] == "Q1247" and len(more) == 3
    assert asyncio.run(KBEntityRetriever(linking).aretrieve("radium")) and not KBEntityRetriever(linking).retrieve(
        "nothing known here")


def test_postprocessor_boosts_and_filters(linking):
    nodes = [NodeWithScore(node=TextNode(text="Paris Hilton opened a shop.", metadata={"entity_ids": ["Q47899"]}),
                           score=0.9),
             NodeWithScore(node=TextNode(text="Pierre Curie measured radium."), score=0.5),   # linked here
             NodeWithScore(node=TextNode(text="A text about nothing.", metadata={"entity_ids": []}), score=0.7)]
    query = QueryBundle("When did Pierre Curie die?")
    boosted = EntityNodePostprocessor(linking).postprocess_nodes(nodes, query)
    assert boosted[0].node.text.startswith("Pierre Curie") and boosted[0].score == pytest.approx(1.5)
    kept = EntityNodePostprocessor(linking, mode="filter").postprocess_nodes(nodes, query)
    assert [n.node.text for n in kept] == ["Pierre Curie measured radium."]
    assert EntityNodePostprocessor(linking, mode="filter").postprocess_nodes(nodes, QueryBundle("no entity")) == nodes
    with pytest.raises(ValueError, match="boost"):
        EntityNodePostprocessor(linking, mode="sort")


def test_example_runs_offline(tmp_path):
    """The README's example, with no network at all where the machine allows it (llama-index
    reads its NLTK and tiktoken data from the package, not the internet)."""
    cmd = [sys.executable, str(EXAMPLE / "link_documents.py")]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        cmd = ["unshare", "-rn", *cmd]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Marie Curie -> Marie Curie (Q7186" in res.stdout and "MENTIONS relations" in res.stdout
    assert "KB entry for 'Where did Marie Curie study?': Marie Curie:" in res.stdout
