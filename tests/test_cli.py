"""`gen-linker` end to end on a tiny model: link, error records, eval, resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time


from gen_linker.cli import main
from gen_linker.kb import KnowledgeBase

from conftest import TEST, write_jsonl


def read(path):
    return [json.loads(l) for l in path.read_text().splitlines()]


def same_records(a, b):
    """Equal records, scores within float noise (batches are composed differently after a resume)."""
    def key(r):
        return (r["id"], r["entity_id"], [(c["entity_id"], c["name"]) for c in r["candidates"]])
    return [key(r) for r in a] == [key(r) for r in b] and all(
        abs(c["score"] - d["score"]) <= 1e-3 * abs(d["score"]) + 1e-4 for r, q in zip(a, b) for c, d in zip(r["candidates"], q["candidates"]))


def link_args(tiny_llm, entities_file, inp, out, *extra):
    return ["link", "--linker", "generative", "--kb", str(entities_file), "--input", str(inp), "--output", str(out),
            "--llm", str(tiny_llm), "--dtype", "float32", "--beams", "3", "--no-progress", *extra]


def test_link_with_demos_and_bad_records(tiny_llm, entities_file, train_file, tmp_path, capsys):
    inp = write_jsonl(tmp_path / "in.jsonl", TEST[:2] + ["{oops", {"id": "x", "text": "abc", "mention": "zzz"}] + TEST[2:])
    out = tmp_path / "out.jsonl"
    assert main(link_args(tiny_llm, entities_file, inp, out, "--demos", str(train_file),
                          "--demo-retriever", "bm25", "--num-demos", "2")) == 0
    recs = read(out)
    assert [r["id"] for r in recs] == ["m1", "m2", "3", "x", "m3", "m4", "m5"]
    kb = KnowledgeBase.from_jsonl(entities_file)
    for r in recs:
        if "error" in r:
            continue
        assert r["linker"] == "generative" and r["entity_id"] in kb
        assert r["name"] == kb.get(r["entity_id"]).name
        assert r["candidates"][0]["entity_id"] == r["entity_id"] and len(r["candidates"]) >= 1
        assert all(c["score"] <= 0 for c in r["candidates"])
    assert "malformed JSON" in recs[2]["error"] and recs[2]["line"] == 3
    assert "not found" in recs[3]["error"]
    err = capsys.readouterr().err
    assert "5 linked, 0 NIL, 2 error(s)" in err

    # the same run again refuses to clobber the output, then eval scores it
    assert main(link_args(tiny_llm, entities_file, inp, out)) == 1
    assert "--resume" in capsys.readouterr().err
    assert main(["eval", "--predictions", str(out), "--gold", str(inp), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["mentions"] == 5 and scores["errors"] == 0 and 0 <= scores["top1"] <= scores["top5"] <= 1


def test_repeated_names_give_all_entities_as_candidates(tiny_llm, entities_file, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [TEST[4]])
    out = tmp_path / "out.jsonl"
    assert main(link_args(tiny_llm, entities_file, inp, out, "--beams", "9")) == 0
    cands = read(out)[0]["candidates"]
    paris = [c for c in cands if c["name"] == "Paris"]
    assert sorted(c["entity_id"] for c in paris) == ["Q5", "Q6"]
    assert paris[0]["score"] == paris[1]["score"]


def test_baseline_linkers_and_eval_text(entities_file, test_file, tmp_path, capsys):
    out = tmp_path / "exact.jsonl"
    assert main(["link", "--kb", str(entities_file), "--input", str(test_file), "--output", str(out),
                 "--linker", "exact", "--no-progress"]) == 0
    recs = read(out)
    assert [r["entity_id"] for r in recs] == [None, "Q4", None, None, "Q5"]
    assert main(["eval", "--predictions", str(out), "--gold", str(test_file)]) == 0
    assert "Top-1 0.4000" in capsys.readouterr().out     # 2 of 5: Francis Condon, Paris


def test_empty_kb_and_missing_input_are_clear_errors(tmp_path, test_file, capsys):
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    assert main(["link", "--kb", str(empty), "--input", str(test_file), "--output", str(tmp_path / "o"),
                 "--linker", "exact"]) == 1
    assert "has no entities" in capsys.readouterr().err
    kb = write_jsonl(tmp_path / "kb.jsonl", [{"id": "Q1", "name": "A"}])
    assert main(["link", "--kb", str(kb), "--input", str(tmp_path / "none.jsonl"),
                 "--output", str(tmp_path / "o"), "--linker", "exact"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_resume_after_truncation_equals_uninterrupted_run(tiny_llm, entities_file, tmp_path):
    rows = [dict(r, id=f"{r['id']}-{k}") for k in range(6) for r in TEST]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    full, part = tmp_path / "full.jsonl", tmp_path / "part.jsonl"
    assert main(link_args(tiny_llm, entities_file, inp, full, "--batch-size", "2")) == 0
    lines = full.read_text().splitlines(keepends=True)
    part.write_text("".join(lines[:11]) + lines[11][:17])           # killed mid-line
    assert main(link_args(tiny_llm, entities_file, inp, part, "--batch-size", "2", "--resume")) == 0
    assert same_records(read(part), read(full))
    # resuming against another input is refused
    other = write_jsonl(tmp_path / "other.jsonl", list(reversed(rows)))
    assert main(link_args(tiny_llm, entities_file, other, part, "--resume")) == 1


def test_resume_after_a_real_kill(tiny_llm, entities_file, tmp_path):
    rows = [dict(r, id=f"{r['id']}-{k}") for k in range(100) for r in TEST]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    cmd = [sys.executable, "-m", "gen_linker.cli"] + link_args(tiny_llm, entities_file, inp, out, "--batch-size", "1")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 40:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = out.read_text().count("\n")
    assert 0 < killed_at < len(rows)
    assert main(link_args(tiny_llm, entities_file, inp, out, "--resume", "--batch-size", "8")) == 0
    ids = [r["id"] for r in read(out)]
    assert ids == [r["id"] for r in rows]                     # no duplicates, no gaps, in order


def test_vllm_compile_flag():
    from gen_linker.cli import COMPILE_FROM, vllm_compile

    assert vllm_compile("auto", 10) is None              # the backend's default: eager on a CPU
    assert vllm_compile("auto", None) is None
    assert vllm_compile("auto", COMPILE_FROM) is True    # long runs pay a minute of compilation back
    assert vllm_compile("on", 1) is True and vllm_compile("off", 10**6) is False
