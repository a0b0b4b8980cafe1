"""gen-linker inside llama-index: link the entities of a few paragraphs to a small KB, build a
vector index and a property graph over them, and retrieve by entity.

    pip install "gen-linker[llama-index]"
    python examples/llama_index/link_documents.py

Offline: llama-index's MockEmbedding / MockLLM stand in for a real embedding model and LLM
(use your own in practice: the gen-linker components do not depend on them).
"""
from pathlib import Path

from llama_index.core import Document, PropertyGraphIndex, Settings, VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter

from gen_linker.integrations.llama_index import (EntityLinking, EntityNodePostprocessor, GenLinkerExtractor,
                                                 GenLinkerGraphExtractor, KBEntityRetriever)

HERE = Path(__file__).resolve().parent


def main() -> None:
    Settings.embed_model, Settings.llm = MockEmbedding(embed_dim=16), MockLLM()
    linking = EntityLinking.load(HERE / "kb.jsonl")          # the packaged default linker
    paragraphs = (HERE / "documents.txt").read_text().split("\n\n")
    documents = [Document(text=p.strip(), metadata={"paragraph": i}) for i, p in enumerate(paragraphs)]

    # 1. entities in node metadata, while indexing
    splitter = SentenceSplitter(chunk_size=128, chunk_overlap=0)
    index = VectorStoreIndex.from_documents(documents, transformations=[splitter, GenLinkerExtractor(linking)])
    for node in index.docstore.docs.values():
        found = ", ".join(f"{e['mention']} -> {e['name']} ({e['id']}, {e['confidence']:.2f})"
                          for e in node.metadata["entities"])
        print(f"paragraph {node.metadata['paragraph']}: {found}")

    # 2. a property graph: "Name (QID)" entity nodes, MENTIONS relations from the chunks
    graph = PropertyGraphIndex.from_documents(documents, kg_extractors=[GenLinkerGraphExtractor(linking)],
                                              embed_kg_nodes=False, use_async=False)
    triplets = graph.property_graph_store.get_triplets(relation_names=["MENTIONS"])
    print(f"property graph: {len(triplets)} MENTIONS relations, entities:",
          sorted({t[2].name for t in triplets}))

    # 3. entity-centric retrieval, and vector retrieval re-ranked by the query's entities
    query = "Where did Marie Curie study?"
    for hit in KBEntityRetriever(linking).retrieve(query):
        print(f"KB entry for {query!r}: {hit.node.get_content()} (score {hit.score:.2f})")
    nodes = index.as_retriever(similarity_top_k=4).retrieve(query)
    kept = EntityNodePostprocessor(linking, mode="filter").postprocess_nodes(nodes, query_str=query)
    print(f"vector hits mentioning the query's entities: {[n.node.metadata['paragraph'] for n in kept]}")


if __name__ == "__main__":
    main()
