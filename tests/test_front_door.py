"""The front door: `LinkerSpec`, `load_linker`, saved linker folders, and `gen-linker compare`."""
import json
import time

import pytest
import yaml

from conftest import ENTITIES, TEST, TRAIN, write_jsonl
from gen_linker import LinkerSpec, load_linker, save_linker
from gen_linker.loader import read_spec
from gen_linker.cli import main
from gen_linker.linkers import LINKERS
from gen_linker.spec import SpecError


def read(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def answers(records):
    """What a linker answered, per mention: entity, and the ranked candidate ids with scores."""
    return [(r["id"], r.get("entity_id"), [(c["entity_id"], round(c["score"], 4)) for c in r.get("candidates", [])])
            for r in records]


def same_answers(a, b) -> bool:
    """Equal answers and rankings, scores within float noise (batches composed differently)."""
    def key(r):
        return (r["id"], r.get("entity_id"), [c["entity_id"] for c in r.get("candidates", [])])
    return [key(r) for r in a] == [key(r) for r in b] and all(
        abs(c["score"] - d["score"]) <= 1e-3 * abs(d["score"]) + 1e-4
        for r, q in zip(a, b) for c, d in zip(r.get("candidates", []), q.get("candidates", [])))


@pytest.fixture(scope="module")
def dim_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dim")
    kb_file = write_jsonl(tmp / "kb.jsonl", ENTITIES)
    train_file = write_jsonl(tmp / "train.jsonl", TRAIN + TEST)
    assert main(["train-dim", "--kb", str(kb_file), "--train", str(train_file), "--output", str(tmp / "dim"),
                 "--epochs", "3", "--batch-size", "4", "--no-progress"]) == 0
    return tmp / "dim"


def test_spec_yaml_round_trip_with_relative_paths(tmp_path):
    spec = LinkerSpec.from_dict({"linker": "pipeline", "top_k": 3,
                                 "generative": {"num_demos": 4, "demos": str(tmp_path / "data" / "train.jsonl"),
                                                "search": "greedy"},
                                 "dim": {"folder": str(tmp_path / "dim"), "fuse_retrieval": True},
                                 "backend": {"name": "vllm", "kv_cache_gb": 0.5}, "pipeline": {"margin": 1.5}})
    folder = tmp_path / "saved"
    folder.mkdir()
    text = spec.to_yaml(folder / "linker.yaml", relative_to=folder)
    data = yaml.safe_load(text)
    assert data["generative"]["demos"] == "../data/train.jsonl" and data["dim"]["folder"] == "../dim"
    again = LinkerSpec.from_yaml(folder / "linker.yaml")
    assert again == spec                                   # paths resolved against the YAML's folder
    assert LinkerSpec.from_dict(spec.to_dict()) == spec
    assert LinkerSpec.from_dict({"generative.beams": 7}).generative.beams == 7       # dotted keys too


@pytest.mark.parametrize("bad, message", [
    ({"linker": "genrative"}, "unknown linker 'genrative': use one of generative, "),
    ({"generative": {"num_demo": 3}}, "unknown key 'generative.num_demo'; keys of generative are prompt, demos"),
    ({"num_demos": 3}, "did you mean generative.num_demos"),
    ({"generative": {"search": "bem"}}, "generative.search: 'bem' is not one of beam, greedy"),
    ({"generative": {"beams": "five"}}, "generative.beams must be int"),
    ({"linker": "dim"}, "linker 'dim' needs dim.folder"),
    ({"linker": "pipeline", "dim": {"folder": "/nonexistent/dim"}}, "dim.folder: /nonexistent/dim does not exist"),
    ({"generative": {"trie_scope": "candidates"}}, "trie_scope 'candidates' needs generative.candidates_in_prompt"),
    ({"generative": {"demos": "/nonexistent/train.jsonl"}}, "generative.demos: /nonexistent/train.jsonl does not exist"),
])
def test_a_bad_spec_fails_before_any_model_loads(bad, message, entities_file, monkeypatch):
    import gen_linker.backends as backends
    import gen_linker.encoders as encoders

    def no_model(*a, **k):
        raise AssertionError("a model was loaded for a bad spec")

    monkeypatch.setattr(backends, "load_backend", no_model)
    monkeypatch.setattr(encoders, "_load", no_model)
    t0 = time.perf_counter()
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_linker(entities_file, bad)
    assert time.perf_counter() - t0 < 5


@pytest.fixture(scope="module")
def trained_parts(tmp_path_factory, tiny_bert, dim_folder):
    """Tiny artefacts for the linkers that need a trained part: DWE, a cross-encoder, a fusion."""
    from gen_linker.candidates import CandidateRetriever
    from gen_linker.kb import KnowledgeBase
    from gen_linker.linkers.fused import train_fusion
    from gen_linker.rerankers import RerankerConfig, train_reranker
    from gen_linker.schema import Mention

    tmp = tmp_path_factory.mktemp("parts")
    kb_file = write_jsonl(tmp / "kb.jsonl", ENTITIES)
    train_file = write_jsonl(tmp / "train.jsonl", TRAIN + TEST)
    assert main(["train-dim", "--arch", "dwe", "--kb", str(kb_file), "--train", str(train_file), "--output",
                 str(tmp / "dwe"), "--epochs", "2", "--batch-size", "4", "--no-progress"]) == 0
    kb = KnowledgeBase.from_jsonl(kb_file)
    labelled = [Mention.from_dict(r) for r in TRAIN + TEST]
    train_reranker(kb, labelled, tmp / "ce", CandidateRetriever(kb, str(tiny_bert)),
                   RerankerConfig(kind="crossencoder", base=str(tiny_bert), epochs=0, max_length=32), progress=False)
    dev = [Mention(f"{m.id}-{i}", m.text, m.mention, gold=m.gold) for i, m in enumerate(labelled * 2)]
    spec = LinkerSpec.from_dict({"linker": "fused", "candidates": {"encoder": str(tiny_bert)},
                                 "rerank": {"candidates": 6, "crossencoder": str(tmp / "ce")}})
    train_fusion(spec, kb, dev, tmp / "fusion", progress=False)
    return {"dwe": tmp / "dwe", "ce": tmp / "ce", "fusion": tmp / "fusion", "encoder": tiny_bert, "dim": dim_folder}


def test_every_registered_linker_loads_and_links_the_tiny_kb(tiny_llm, entities_file, train_file, trained_parts):
    from conftest import TEST as rows
    from gen_linker.schema import Mention

    mentions = [Mention.from_dict(r) for r in rows]
    p = {k: str(v) for k, v in trained_parts.items()}
    base = {"backend": {"llm": str(tiny_llm), "dtype": "float32"},
            "generative": {"demos": str(train_file), "num_demos": 2, "beams": 3},
            "dim": {"folder": p["dim"]}}
    extra = {"dwe": {"dim": {"folder": p["dwe"]}},
             "crossencoder": {"candidates": {"encoder": p["encoder"]}, "rerank": {"crossencoder": p["ce"]}},
             "fused": {"candidates": {"encoder": p["encoder"]},
                       "rerank": {"crossencoder": p["ce"], "fusion": p["fusion"], "candidates": 6}},
             "dense": {"candidates": {"encoder": p["encoder"]}},
             "llm-choice": {"candidates": {"encoder": p["encoder"]}, "rerank": {"judge": str(tiny_llm)}}}
    built = {}
    for name in LINKERS:
        spec = LinkerSpec.from_dict({**base, "linker": name}).merged(extra.get(name, {}))
        linker = load_linker(entities_file, spec)
        results = linker.link(mentions)
        assert [r.mention_id for r in results] == [m.id for m in mentions], name
        assert linker.process_text(rows[1]["text"], rows[1]["mention"]).mention_id == "0"
        assert all(r.confidence is None or 0.0 <= r.confidence <= 1.0 for r in results), name
        built[name] = results
    assert {"generative", "dim", "pipeline", "retrieval", "bm25", "exact", "fused", "crossencoder",
            "llm-choice"} <= set(built)
    assert built["exact"][1].entity_id == "Q4"                # "Francis Condon" is a KB name
    assert all(r.entity_id for r in built["retrieval"])


# The README's flag sets, each beside the spec it means.
README_FLAG_SETS = [
    (["--demos", "{train}", "--num-demos", "2"], {"generative": {"demos": "{train}", "num_demos": 2}}),
    (["--linker", "dim", "--dim", "{dim}"], {"linker": "dim", "dim": {"folder": "{dim}"}}),
    (["--linker", "pipeline", "--dim", "{dim}", "--margin", "0.5", "--demos", "{train}", "--num-demos", "2"],
     {"linker": "pipeline", "dim": {"folder": "{dim}"}, "pipeline": {"margin": 0.5},
      "generative": {"demos": "{train}", "num_demos": 2}}),
    (["--demos", "{train}", "--num-demos", "2", "--candidates-in-prompt", "3", "--descriptions", "{desc}",
      "--trie-scope", "candidates"],
     {"generative": {"demos": "{train}", "num_demos": 2, "candidates_in_prompt": 3, "trie_scope": "candidates"},
      "candidates": {"descriptions": "{desc}"}}),
    (["--linker", "bm25"], {"linker": "bm25"}),
]


@pytest.mark.parametrize("flags, spec", README_FLAG_SETS)
def test_flags_spec_and_saved_folder_give_identical_outputs(flags, spec, tiny_llm, entities_file, train_file,
                                                              test_file, dim_folder, tmp_path):
    desc = write_jsonl(tmp_path / "desc.jsonl", [{"id": e["id"], "description": f"about {e['name']}"}
                                                 for e in ENTITIES])
    paths = {"{train}": str(train_file), "{dim}": str(dim_folder), "{desc}": str(desc)}
    flags = [paths.get(f, f) for f in flags]
    spec = json.loads(json.dumps(spec), object_hook=lambda d: {k: paths.get(v, v) if isinstance(v, str) else v
                                                               for k, v in d.items()})
    common = ["--linker", "generative", "--kb", str(entities_file), "--input", str(test_file), "--llm", str(tiny_llm), "--dtype", "float32",
              "--beams", "3", "--no-progress"]
    by_flags, saved = tmp_path / "flags.jsonl", tmp_path / "saved-linker"
    assert main(["link", *common, *flags, "--output", str(by_flags), "--save-linker", str(saved)]) == 0
    spec = LinkerSpec.from_dict(spec).merged({"backend.llm": str(tiny_llm), "backend.dtype": "float32",
                                              "generative.beams": 3})
    from gen_linker.datasets.jsonl import read_mentions

    mentions = list(read_mentions(test_file))
    from_spec = [r.to_dict() for r in load_linker(entities_file, spec).link(mentions)]
    from_folder = [r.to_dict() for r in load_linker(entities_file, saved).link(mentions)]
    assert answers(read(by_flags)) == answers(from_spec) == answers(from_folder)
    by_config = tmp_path / "config.jsonl"
    assert main(["link", "--kb", str(entities_file), "--input", str(test_file), "--linker-config", str(saved),
                 "--output", str(by_config), "--no-progress"]) == 0
    assert answers(read(by_config)) == answers(read(by_flags))


def test_saved_folder_carries_its_artefacts_and_moves(entities_file, dim_folder, tmp_path, test_file):
    import shutil

    spec = LinkerSpec.from_dict({"linker": "dim", "dim": {"folder": str(dim_folder)}})
    saved = save_linker(spec, tmp_path / "a" / "my-linker")
    assert (saved / "dim" / "dim.safetensors").exists() and not (saved / "dim" / "training").exists()
    assert yaml.safe_load((saved / "linker.yaml").read_text())["dim"]["folder"] == "dim"
    moved = tmp_path / "elsewhere" / "my-linker"
    shutil.move(str(saved), moved)                             # relative paths: the folder is portable
    from gen_linker.datasets.jsonl import read_mentions

    mentions = list(read_mentions(test_file))
    assert answers([r.to_dict() for r in load_linker(entities_file, moved).link(mentions)]) == \
        answers([r.to_dict() for r in load_linker(entities_file, spec).link(mentions)])
    with pytest.raises(SpecError, match="not a saved linker folder"):
        load_linker(entities_file, tmp_path)


def test_saved_folder_with_its_own_encoder_loads_from_any_directory(entities_file, tiny_bert, tmp_path, test_file,
                                                                   monkeypatch):
    """A saved linker whose dense encoder is a folder (`gen-linker adapt --tune` keeps one) writes
    it as the bare name `biencoder`; read from another working directory that must still be the
    folder inside the linker, not a model name to look up on the hub."""
    from gen_linker.datasets.jsonl import read_mentions

    spec = LinkerSpec.from_dict({"linker": "retrieval", "candidates": {"encoder": str(tiny_bert)}})
    saved = save_linker(spec, tmp_path / "linkers" / "tuned")
    assert yaml.safe_load((saved / "linker.yaml").read_text())["candidates"]["encoder"] == "biencoder"
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert read_spec(saved).candidates.encoder == str(saved / "biencoder")
    mentions = list(read_mentions(test_file))
    assert answers([r.to_dict() for r in load_linker(entities_file, saved).link(mentions)]) == \
        answers([r.to_dict() for r in load_linker(entities_file, spec).link(mentions)])


def tiny_suite(tmp_path, tiny_llm, entities_file, train_file, test_file) -> "Path":
    suite = {"name": "tiny", "dataset": {"path": str(test_file), "format": "jsonl"}, "kb": str(entities_file),
             "sample": {"size": 4, "seed": 0}, "runs_dir": str(tmp_path / "runs"), "results": str(tmp_path / "results"),
             "base": {"backend": {"llm": str(tiny_llm), "dtype": "float32"},
                      "generative": {"demos": str(train_file), "num_demos": 2, "beams": 2}},
             "runs": [{"name": "bm25", "linker": "bm25"}, {"name": "exact", "linker": "exact"},
                      {"name": "gen", "linker": "generative"}],
             "notes": ["a tiny suite"]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


def test_compare_writes_its_table_and_resumes_a_killed_run(tmp_path, tiny_llm, entities_file, train_file,
                                                            test_file, capsys):
    suite = tiny_suite(tmp_path, tiny_llm, entities_file, train_file, test_file)
    assert main(["compare", "--suite", str(suite), "--no-progress"]) == 0
    table = (tmp_path / "results" / "tiny.md").read_text()
    data = json.loads((tmp_path / "results" / "tiny.json").read_text())
    assert [r["run"] for r in data["rows"]] == ["bm25", "exact", "gen"]
    assert all(r["mentions"] == 4 and r["mentions_per_s"] and r["peak_rss_gb"] > 0 for r in data["rows"])
    assert "| bm25 | bm25 |" in table and "## Paired comparison" in table and "a tiny suite" in table
    assert len(data["pairs"]) == 3
    for p in data["pairs"]:
        low, high = p["ci95"]
        assert low <= p["diff"] <= high and p["only_a"] + p["only_b"] <= 4
    full = (tmp_path / "runs" / "gen.jsonl").read_text()

    # A run killed after 2 of 4 mentions: its output has 2 lines and no metadata. The rerun links
    # only the 2 missing mentions, and leaves the finished runs alone.
    lines = full.splitlines(keepends=True)
    (tmp_path / "runs" / "gen.jsonl").write_text("".join(lines[:2]))
    (tmp_path / "runs" / "gen.meta.json").unlink()
    bm25_meta = (tmp_path / "runs" / "bm25.meta.json").read_text()
    assert main(["compare", "--suite", str(suite), "--no-progress"]) == 0
    meta = json.loads((tmp_path / "runs" / "gen.meta.json").read_text())
    assert meta["resumed"] == 2 and meta["linked_now"] == 2
    assert same_answers(read(tmp_path / "runs" / "gen.jsonl"), [json.loads(x) for x in lines])
    assert (tmp_path / "runs" / "bm25.meta.json").read_text() == bm25_meta
    assert json.loads((tmp_path / "results" / "tiny.json").read_text())["rows"][:2] == data["rows"][:2]


def test_compare_links_again_a_run_whose_artefact_files_changed(tmp_path, tiny_llm, entities_file, train_file,
                                                                  test_file, capsys):
    """Retraining an adapter in place keeps the spec's text; the files' stamp tells compare the
    committed output is the old model's. Unchanged files: nothing is linked again."""
    suite = tiny_suite(tmp_path, tiny_llm, entities_file, train_file, test_file)
    demos = tmp_path / "demos.jsonl"
    demos.write_text(train_file.read_text())
    data = yaml.safe_load(suite.read_text())
    data["base"]["generative"]["demos"] = str(demos)
    data["runs"] = [r for r in data["runs"] if r["name"] == "gen"]
    suite.write_text(yaml.safe_dump(data))
    assert main(["compare", "--suite", str(suite), "--no-progress"]) == 0
    meta_path = tmp_path / "runs" / "gen.meta.json"
    first = json.loads(meta_path.read_text())
    assert first["artefacts"]["generative.demos"][:2] == [1, len(demos.read_bytes())]
    assert main(["compare", "--suite", str(suite), "--no-progress"]) == 0
    assert json.loads(meta_path.read_text()) == first                      # nothing changed: kept
    unstamped = {k: v for k, v in first.items() if k != "artefacts"}       # a run written before stamps
    meta_path.write_text(json.dumps(unstamped))
    assert main(["compare", "--suite", str(suite), "--no-progress"]) == 0
    assert json.loads(meta_path.read_text()) == first                      # kept, and stamped as it is now
    lines = demos.read_text().splitlines(keepends=True)
    demos.write_text("".join(lines[:-1]))                                   # "retrained": one demonstration fewer
    capsys.readouterr()
    assert main(["compare", "--suite", str(suite), "--no-progress"]) == 0
    assert "the files of generative.demos changed" in capsys.readouterr().err
    again = json.loads(meta_path.read_text())
    assert again["linked_now"] == 4 and again["resumed"] == 0 and again["artefacts"] != first["artefacts"]


def test_a_suite_with_a_bad_run_fails_before_linking(tmp_path, tiny_llm, entities_file, train_file, test_file):
    suite = tiny_suite(tmp_path, tiny_llm, entities_file, train_file, test_file)
    data = yaml.safe_load(suite.read_text())
    data["runs"].append({"name": "broken", "generative": {"serch": "beam"}})
    suite.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError, match="run 'broken'.*unknown key 'generative.serch'"):
        from gen_linker.compare import compare

        compare(suite, progress=False)
    assert not (tmp_path / "runs").exists()
