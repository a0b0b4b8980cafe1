import json

import pytest

from gen_linker.errors import KnowledgeBaseError
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity, LinkResult, Candidate, Mention

from conftest import ENTITIES, write_jsonl


def test_repeated_names_map_to_every_entity(kb):
    assert sorted(kb.ids_for_name("Paris")) == ["Q5", "Q6"]
    assert kb.ids_for_name("Nobody") == []
    assert kb.names().count("Paris") == 1
    assert len(kb.names()) == len(ENTITIES) - 1


def test_lookup_ignores_case_and_uses_aliases(kb):
    assert kb.lookup("the big o") == ["Q3"]
    assert sorted(kb.lookup("PARIS")) == ["Q5", "Q6"]


def test_unknown_id_is_a_clear_error(kb):
    with pytest.raises(KnowledgeBaseError, match="unknown entity id 'Q999'"):
        kb.get("Q999")


def test_empty_kb_is_refused(tmp_path):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    with pytest.raises(KnowledgeBaseError, match="no entities"):
        KnowledgeBase.from_jsonl(empty)


def test_bad_lines_are_skipped_and_reported(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [ENTITIES[0], "{not json", {"id": "Q2"}, ENTITIES[1]])
    with pytest.warns(UserWarning, match="2 unreadable"):
        kb = KnowledgeBase.from_jsonl(path)
    assert len(kb) == 2
    assert [e.line for e in kb.load_errors] == [2, 3]
    assert "e.jsonl:3" in str(kb.load_errors[1])


def test_duplicate_ids_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "e.jsonl", [ENTITIES[0], ENTITIES[0]])
    with pytest.raises(KnowledgeBaseError, match="appears twice"):
        KnowledgeBase.from_jsonl(path)


def test_folder_round_trip(kb, tmp_path):
    folder = kb.save(tmp_path / "kbdir")
    again = KnowledgeBase.open(folder)
    assert [e.to_dict() for e in again] == [e.to_dict() for e in kb]
    assert again.fingerprint == kb.fingerprint
    assert json.loads((folder / "kb.json").read_text())["entities"] == len(kb)
    assert again.cache_dir() == folder / "cache"


def test_schema_round_trips():
    e = Entity("Q1", "A", aliases=("B",), description="d")
    assert Entity.from_dict(json.loads(json.dumps(e.to_dict()))) == e
    m = Mention("m", "x A y", "A", 2, 3, gold="Q1")
    assert Mention.from_dict(m.to_dict()) == m
    r = LinkResult("m", "Q1", "A", -0.5, [Candidate("Q1", "A", -0.5)])
    assert LinkResult.from_dict(r.to_dict()) == r


def test_a_large_kb_is_kept_out_of_gc_scans(tmp_path, monkeypatch):
    """From FREEZE_FROM entities a loaded KB's objects go to the GC's permanent generation
    (full collections would otherwise walk a million entities); a small one is left alone."""
    import gc

    from gen_linker import kb as kb_module

    path = write_jsonl(tmp_path / "e.jsonl", ENTITIES)
    gc.unfreeze()
    try:
        KnowledgeBase.open(path)
        assert gc.get_freeze_count() == 0
        monkeypatch.setattr(kb_module, "FREEZE_FROM", len(ENTITIES))
        loaded = KnowledgeBase.open(path)
        assert gc.get_freeze_count() > 0 and len(loaded) == len(ENTITIES)
    finally:
        gc.unfreeze()
