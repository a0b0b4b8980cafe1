import json

import pytest

from gen_linker import datasets
from gen_linker.datasets.spans import locate
from gen_linker.errors import DataFormatError, RecordError
from gen_linker.schema import Mention

from conftest import SHARED_WIKIMEL, write_jsonl

SAMPLES = {
    "46351": {"id": "46351", "sentence": "Powers with Noel Harrison in The Girl from U.N.C.L.E.",
              "mentions": ["Noel Harrison", "Powers"], "entities": ["Noel Harrison", "Stefanie Powers"],
              "answer": ["Q532915", "Q256474"]},
    "33646": {"id": "33646", "sentence": "Robertson as a member of the Milwaukee Bucks",
              "mentions": ["Robertson"], "entities": ["Oscar Robertson"], "answer": ["Q17717"]},
    "777": {"id": "777", "sentence": "Alexis de Tocqueville in 1850",
            "mentions": ["Alexis Tocqueville"], "entities": ["Alexis de Tocqueville"], "answer": ["Q1"]},
}


@pytest.fixture
def melbench_dir(tmp_path):
    d = tmp_path / "wikimel"
    d.mkdir()
    (d / "Wikidata-MEL.json").write_text(json.dumps(SAMPLES))
    (d / "splits.json").write_text(json.dumps({"train": ["46351"], "dev": [], "test": ["33646", "777"]}))
    (d / "qid2ne.json").write_text(json.dumps({"Q532915": "Noel Harrison", "Q256474": "Stefanie Powers",
                                               "Q17717": "Oscar Robertson"}))
    (d / "qid2abs.json").write_text(json.dumps({"Q17717": "Sex: male. Occupation: basketball player."}))
    return d


def test_melbench_folder_with_splits(melbench_dir):
    ds = datasets.load(melbench_dir, split="test")
    assert ds.format == "melbench"
    assert [m.id for m in ds.mentions] == ["33646-0", "777-0"]
    m = ds.mentions[1]
    assert m.text[m.start:m.end] == "Alexis de Tocqueville"     # dropped word found again
    assert ds.kb.get("Q17717").description.startswith("Sex: male")
    assert ds.kb.get("Q1").name == "Alexis de Tocqueville"       # gold missing from qid2ne is added
    train = datasets.load(melbench_dir, split="train")
    assert [(m.mention, m.gold, m.start) for m in train.mentions] == [("Noel Harrison", "Q532915", 12),
                                                                      ("Powers", "Q256474", 0)]


def test_richpedia_single_strings_and_split_files(tmp_path):
    d = tmp_path / "richpedia"
    d.mkdir()
    test = {"9": {"sentence": "Robertson as a member of the Milwaukee Bucks", "mentions": "Robertson",
                  "entities": "Oscar Robertson", "answer": "Q17717"}}
    (d / "test.json").write_text(json.dumps(test))
    (d / "train.json").write_text(json.dumps({}))
    ds = datasets.load(d, split="test")
    assert [(m.id, m.mention, m.gold, m.start, m.end) for m in ds.mentions] == [("9-0", "Robertson", "Q17717", 0, 9)]
    assert ds.kb.get("Q17717").name == "Oscar Robertson"


def test_wikidiverse_list(tmp_path):
    path = tmp_path / "wikidiverse_test.json"
    path.write_text(json.dumps([
        {"sentence": "Trump meets Macron in Paris", "mention": "Macron", "mention_type": "PER",
         "mention_image": "img/1.jpg", "entity": "https://en.wikipedia.org/wiki/Emmanuel_Macron"},
        {"sentence": "Trump meets Macron in Paris", "mention": "Berlin", "mention_type": "LOC",
         "mention_image": "", "entity": "Berlin"},
    ]))
    ds = datasets.load(path)
    assert ds.format == "wikidiverse"
    m = ds.mentions[0]
    assert (m.gold, m.start, m.end, m.image) == ("Emmanuel Macron", 12, 18, "img/1.jpg")
    assert isinstance(ds.mentions[1], RecordError) and "not found" in str(ds.mentions[1])
    assert sorted(e.id for e in ds.kb) == ["Berlin", "Emmanuel Macron"]


def test_jsonl_bad_records_become_errors(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "text": "Paris in spring", "mention": "Paris"},
        "{broken json",
        {"id": "c", "text": "Paris in spring", "mention": "Rome"},
        {"id": "d", "text": "Paris in spring", "mention": "Paris", "start": 3, "end": 99},
        {"id": "e", "text": "", "mention": "x"},
        "",
    ])
    recs = list(datasets.load(path).mentions)
    assert isinstance(recs[0], Mention) and (recs[0].start, recs[0].end) == (0, 5)
    kinds = [type(r).__name__ for r in recs]
    assert kinds == ["Mention"] + ["RecordError"] * 5
    assert "malformed JSON" in str(recs[1]) and "in.jsonl:2" in str(recs[1])
    assert "'Rome' is not found" in str(recs[2]) and recs[2].record_id == "c"
    assert "offsets" in str(recs[3])
    assert '"text"' in str(recs[4])


def test_unknown_format_is_a_clear_error(tmp_path):
    odd = tmp_path / "data.csv"
    odd.write_text("a,b\n")
    with pytest.raises(DataFormatError, match="cannot tell the format"):
        datasets.load(odd)
    with pytest.raises(DataFormatError, match="unknown dataset format"):
        datasets.load(odd, format="csv")
    with pytest.raises(DataFormatError, match="does not exist"):
        datasets.load(tmp_path / "nope.json")


def test_locate_prefers_exact_then_case_then_gapped():
    assert locate("a Paris b paris", "paris") == (10, 15)
    assert locate("a PARIS b", "paris") == (2, 7)
    assert locate("Victor de Riqueti, marquis de Mirabeau", "Victor Riqueti marquis Mirabeau") == (0, 38)
    assert locate("nothing here", "Rome") is None


@pytest.mark.skipif(not SHARED_WIKIMEL.exists(), reason="../shared/data/wikimel not beside the repo")
def test_real_wikimel_loads_completely():
    ds = datasets.load(SHARED_WIKIMEL, split="test")
    assert len(ds.mentions) == 5131 and not ds.errors
    assert len(ds.kb) == 18880
    assert all(m.gold in ds.kb for m in ds.valid)
    assert all(m.start is not None and m.text[m.start:m.end] for m in ds.valid)


def test_convert_command_writes_jsonl_and_entities(melbench_dir, tmp_path):
    from gen_linker.cli import main
    from gen_linker.kb import KnowledgeBase

    out, ents = tmp_path / "m.jsonl", tmp_path / "e.jsonl"
    assert main(["convert", "--input", str(melbench_dir), "--split", "test",
                 "--mentions-out", str(out), "--entities-out", str(ents)]) == 0
    back = datasets.load(out)
    assert [m.id for m in back.valid] == ["33646-0", "777-0"]
    assert len(KnowledgeBase.from_jsonl(ents)) == 4
