"""`gen-linker describe` against a real local vLLM OpenAI server (the tiny model) on loopback,
through a loopback proxy that can fail requests or slow them: retries, cache, kill + resume."""
import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ENTITIES, write_jsonl
from gen_linker.describe import DescribeConfig, LocalServer, describe
from gen_linker.kb import KnowledgeBase
from gen_linker.schema import Entity

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")


class Proxy:
    """Forwards POSTs to the server; the first `fail` requests get HTTP 500; each forwarded
    request waits `delay` seconds. Records the entity name of every request it forwarded."""

    def __init__(self, upstream: str, fail: int = 0, delay: float = 0.0) -> None:
        proxy = self
        self.upstream, self.fail, self.delay = upstream, fail, delay
        self.failed, self.forwarded = 0, []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with proxy.lock:
                    fail = proxy.failed < proxy.fail
                    proxy.failed += fail
                if fail:
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "injected"}')
                    return
                time.sleep(proxy.delay)
                user = json.loads(body)["messages"][-1]["content"]
                with proxy.lock:
                    proxy.forwarded.append(user)
                req = urllib.request.Request(proxy.upstream + self.path.removeprefix("/v1"), body,
                                             {"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=120) as r:
                    data = r.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def requests_for(self, entity: Entity) -> int:
        from gen_linker.describe import DescribePrompt

        return self.forwarded.count(DescribePrompt().messages(entity)[-1]["content"])


@pytest.fixture(scope="module")
def server(tiny_llm, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("server")
    (tmp / "chat.jinja").write_text(CHAT_TEMPLATE)
    with LocalServer(str(tiny_llm), name="tiny", extra_args=["--chat-template", str(tmp / "chat.jinja")],
                     log=tmp / "server.log") as live:
        yield live


def test_describe_retries_a_server_error_and_reruns_from_the_cache(server, tmp_path):
    proxy = Proxy(server.base_url, fail=1)
    entities = [Entity.from_dict(e) for e in ENTITIES]
    config = DescribeConfig(base_url=proxy.url, model="tiny", concurrency=3, backoff=0.1)
    out = tmp_path / "descriptions.jsonl"
    first = describe(entities, config, tmp_path / "cache.jsonl", out, progress=False)
    assert first.failed == {} and first.retries == 1 and proxy.failed == 1
    assert first.written == len(entities) and len(proxy.forwarded) == len(entities)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in entities] and all(r["description"].strip() for r in rows)
    again = describe(entities, config, tmp_path / "cache.jsonl", out, progress=False)
    assert again.cached == len(entities) and again.requested == 0 and len(proxy.forwarded) == len(entities)
    assert out.read_text().splitlines() == [json.dumps(r, ensure_ascii=False) for r in rows]
    # another prompt or model is another cache key: asked again
    other = describe(entities[:2], DescribeConfig(base_url=proxy.url, model="tiny", temperature=0.5,
                                                  prompt="dim_describe"), tmp_path / "cache.jsonl",
                     tmp_path / "same.jsonl", progress=False)
    assert other.cached == 2    # temperature is not part of the key: same model, same prompt


def test_describe_gives_up_with_a_message_naming_the_endpoint(tmp_path):
    entities = [Entity.from_dict(ENTITIES[0])]
    config = DescribeConfig(base_url="http://127.0.0.1:9/v1", model="x", retries=1, backoff=0.01)
    summary = describe(entities, config, tmp_path / "c.jsonl", tmp_path / "o.jsonl", progress=False)
    assert "127.0.0.1:9" in summary.failed["Q1"] and summary.retries == 1 and summary.written == 0


def test_killed_describe_resumes_without_duplicates_or_gaps(server, tmp_path):
    proxy = Proxy(server.base_url, delay=0.4)
    kb_file = write_jsonl(tmp_path / "kb.jsonl", ENTITIES)
    cache, out = tmp_path / "cache.jsonl", tmp_path / "descriptions.jsonl"
    cmd = [sys.executable, "-m", "gen_linker.cli", "describe", "--kb", str(kb_file), "--output", str(out),
           "--base-url", proxy.url, "--model", "tiny", "--concurrency", "1", "--cache", str(cache), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not cache.exists() or len(cache.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = [json.loads(x)["id"] for x in cache.read_text().splitlines()]
    assert 3 <= len(done_before) < len(ENTITIES) and not out.exists()
    from gen_linker.cli import main

    assert main(cmd[3:] + ["--kb-output", str(tmp_path / "kb-llm.jsonl")]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in ENTITIES]       # all, once, in KB order
    entities = {e["id"]: Entity.from_dict(e) for e in ENTITIES}
    for eid in done_before:                                             # cached answers were not asked again
        assert proxy.requests_for(entities[eid]) == 1
    assert len(proxy.forwarded) <= len(ENTITIES) + 1                    # at most the one in flight twice
    kb_llm = KnowledgeBase.from_jsonl(tmp_path / "kb-llm.jsonl")       # the KB with the written descriptions
    assert [e.description for e in kb_llm] == [r["description"] for r in rows]


def test_describe_in_process_batches_caches_and_matches_the_entities(vllm_backend, tmp_path, monkeypatch):
    from gen_linker.describe import describe_in_process

    monkeypatch.setattr(vllm_backend.tokenizer, "chat_template", CHAT_TEMPLATE, raising=False)
    entities = [Entity.from_dict(e) for e in ENTITIES]
    out = tmp_path / "d.jsonl"
    first = describe_in_process(entities, tmp_path / "c.jsonl", out, batch_size=4, progress=False,
                                backend=vllm_backend)
    assert first.requested == len(entities) and first.written + len(first.failed) == len(entities)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e.id for e in entities if e.id not in first.failed]
    again = describe_in_process(entities, tmp_path / "c.jsonl", out, progress=False, backend=vllm_backend)
    assert again.requested == len(first.failed) and again.cached == first.written
