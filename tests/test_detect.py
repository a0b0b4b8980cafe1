"""The mention detector (`gen_linker.detect`) and `gen-linker link --detect` on raw text."""
from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ENTITIES, write_jsonl
from gen_linker.cli import main
from gen_linker.detect import Gazetteer, detect_mentions, surface_forms
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity


@pytest.fixture
def names_kb() -> KnowledgeBase:
    rows = [("Q1", "Paris", ()), ("Q2", "Paris Hilton", ()), ("Q3", "AC/DC", ()),
            ("Q4", "The Girl from U.N.C.L.E.", ()), ("Q5", "Danny Graham (footballer)", ()), ("Q6", "May", ()),
            ("Q7", "Ruud van Nistelrooy", ("van Nistelrooy",)), ("Q8", "I", ()), ("Q9", "Beyoncé", ()),
            ("Q10", "Paris, Texas", ())]
    return KnowledgeBase.from_entities([Entity(i, n, a) for i, n, a in rows])


def spans(text, kb, case="smart"):
    return [m for _, _, m in detect_mentions(text, kb, case)]


def test_longest_match_wins_and_matches_do_not_overlap(names_kb):
    text = "Paris Hilton flew to Paris, Texas, then to Paris."
    found = detect_mentions(text, names_kb)
    assert found == [(0, 12, "Paris Hilton"), (21, 33, "Paris, Texas"), (43, 48, "Paris")]
    assert all(text[s:e] == m for s, e, m in found)


def test_matches_start_and_end_on_word_boundaries(names_kb):
    assert spans("Parisian cafés; Paris's museums; ParisHilton", names_kb) == ["Paris"]
    assert spans("Beyoncé sang", names_kb) == ["Beyoncé"]                 # \w is Unicode
    assert spans("Beyoncéx sang", names_kb) == []


def test_the_characters_between_words_must_be_the_names(names_kb):
    assert spans("AC/DC and AC DC and AC-DC", names_kb) == ["AC/DC"]
    assert spans("Paris Texas", names_kb) == ["Paris"]                     # not "Paris, Texas"
    assert spans("Paris;   Texas", names_kb) == ["Paris"]                 # another separator
    assert spans("Paris,   Texas", names_kb) == ["Paris,   Texas"]        # whitespace runs count as one
    assert spans("Paris,\n Texas", names_kb) == ["Paris,\n Texas"]
    assert spans("Paris,\nTexas", names_kb) == ["Paris,\nTexas"]


def test_surface_forms_drop_a_wikipedia_disambiguator_and_tiny_names():
    assert surface_forms("Danny Graham (footballer)") == {"Danny Graham (footballer)", "Danny Graham"}
    assert surface_forms("I") == set() and surface_forms("Ay") == {"Ay"}


def test_punctuation_a_name_ends_with_is_part_of_the_match(names_kb):
    text = "Powers in The Girl from U.N.C.L.E. today; Danny Graham scored"
    assert spans(text, names_kb) == ["The Girl from U.N.C.L.E.", "Danny Graham"]
    assert spans("I met I", names_kb) == []                                # one-letter names are left out


def test_case_modes(names_kb):
    text = "PARIS HILTON, paris hilton, Van Nistelrooy, van nistelrooy, in may and May"
    assert spans(text, names_kb, "smart") == ["PARIS HILTON", "Van Nistelrooy", "May"]
    assert spans(text, names_kb, "exact") == ["May"]
    assert spans(text, names_kb, "ignore") == ["PARIS HILTON", "paris hilton", "Van Nistelrooy", "van nistelrooy",
                                               "may", "May"]
    with pytest.raises(Exception, match="unknown case mode"):
        detect_mentions(text, names_kb, "loud")


def test_aliases_are_found(kb):
    assert detect_mentions("Robertson, The Big O, with the Milwaukee Bucks", kb) == [
        (11, 20, "The Big O"), (31, 46, "Milwaukee Bucks")]


WORDS = ["the", "in", "and", "with", "met", "Paris", "Hilton", "Bucks", "Noel", "Harrison", "Oscar", "Robertson",
         "Milwaukee", "big", "O", "Big", "Francis", "Condon", "x", "Stefanie", "Powers"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(WORDS), max_size=30), st.lists(st.sampled_from([" ", ", ", "  ", "-", ". "]),
                                                               min_size=30, max_size=30))
def test_every_match_is_a_kb_form_on_word_boundaries_and_no_form_is_missed(words, seps):
    kb = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])
    text = "".join(w + s for w, s in zip(words, seps))
    forms = {f for e in kb for n in (e.name, *e.aliases) for f in surface_forms(n)}
    found = detect_mentions(text, kb, "exact")
    ends = 0
    for s, e, m in found:
        assert text[s:e] == m and re.sub(r"\s+", " ", m) in forms
        assert s >= ends                                                   # in order, no overlap
        assert (s == 0 or not text[s - 1].isalnum()) and (e == len(text) or not text[e].isalnum())
        ends = e
    # nothing is missed: an occurrence of a form is matched, or overlaps a match that won
    # (one starting further left, or a longer one starting at the same word)
    for form in forms:
        for hit in re.finditer(r"(?<!\w)" + re.escape(form) + r"(?!\w)", text):
            assert any(s < hit.end() and hit.start() < e for s, e, _ in found), (form, text, found)


def test_gazetteer_counts_its_forms(names_kb):
    gaz = Gazetteer.from_kb(names_kb)
    assert len(gaz) == 11           # 10 names + "Danny Graham" + the alias, less "I"


# ------------------------------------------------------------------ gen-linker link --detect
def test_link_detect_links_raw_text_and_reports_unusable_lines(tmp_path, entities_file):
    texts = write_jsonl(tmp_path / "texts.jsonl", [
        {"id": "a", "text": "Oscar Robertson with the Milwaukee Bucks"},
        "{not json",
        {"id": "c", "text": "nothing known here"},
        {"id": "d"},
        {"text": "Francis Condon in 1910"},
    ])
    out = tmp_path / "out.jsonl"
    args = ["link", "--kb", str(entities_file), "--input", str(texts), "--output", str(out), "--detect",
            "--linker", "exact", "--no-progress"]
    assert main(args) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a:1", "a:2", "2", "c", "d", "5:1"]
    assert [r.get("entity_id") for r in rows] == ["Q3", "Q8", None, None, None, "Q4"]
    assert rows[2]["line"] == 2 and "malformed JSON" in rows[2]["error"]
    assert rows[3]["line"] == 3 and "no name or alias" in rows[3]["error"]
    assert rows[4]["line"] == 4 and '"text"' in rows[4]["error"]
    # a killed run resumes without duplicates or gaps
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()[:3]) + '{"id": "c", "err')
    assert main(args + ["--resume"]) == 0
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a:1", "a:2", "2", "c", "d", "5:1"]


def test_link_detect_names_a_missing_input(tmp_path, entities_file, capsys):
    code = main(["link", "--kb", str(entities_file), "--input", str(tmp_path / "none.jsonl"), "--output",
                 str(tmp_path / "o.jsonl"), "--detect", "--linker", "exact", "--no-progress"])
    assert code == 1 and "none.jsonl does not exist" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()
