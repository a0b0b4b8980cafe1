"""`gen-linker serve`: endpoints, limits and bad input, micro-batching, REL's format, OpenAPI.

Fast tests go through httpx's ASGI transport (the app with its lifespan, in this process);
the ones about the network (a client that goes away, chunked bodies, the CLI) talk to a real
uvicorn server on 127.0.0.1, started in a thread or as `gen-linker serve` in a subprocess that
is stopped by its pid. Linkers are real (bm25 / exact on the toy KB, once the generative
linker on the tiny Llama); `Recording` only notes which mentions each `link` call got.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")

from conftest import ENTITIES, TEST, write_jsonl  # noqa: E402
from gen_linker import Mention, load_linker  # noqa: E402
from gen_linker.kb import KnowledgeBase  # noqa: E402
from gen_linker.server.app import create_app  # noqa: E402
from gen_linker.server.schemas import MAX_BODY  # noqa: E402

REL_TEXT = "If you're going to try, go all the way - Charles Bukowski."   # REL's documented example


class Recording:
    """A real linker, with the mentions of each `link` call noted; with a `gate`, a call waits
    until the gate opens (to hold a batch in flight while a test acts)."""

    def __init__(self, linker, gate: threading.Event | None = None) -> None:
        self.linker, self.name, self.gate = linker, linker.name, gate
        self.calls: list[list] = []
        self.entered = threading.Event()

    def link(self, mentions):
        self.calls.append(list(mentions))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30), "the test never opened the gate"
        return self.linker.link(mentions)


@pytest.fixture
def bm25(kb):
    return load_linker(kb, {"linker": "bm25"})


@contextlib.asynccontextmanager
async def serving(app):
    """An AsyncClient on the app through httpx's ASGI transport, with the app's lifespan."""
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test",
                                     timeout=30) as client:
            yield client


def run(coro):
    return asyncio.run(coro)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live(app):
    """The app on a real uvicorn server on 127.0.0.1 (a thread); its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def mention(i: int, **extra) -> dict:
    row = TEST[i % len(TEST)]
    return {"id": row["id"], "text": row["text"], "mention": row["mention"], **extra}


def wait_until(cond, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ------------------------------------------------------------------ endpoints
def test_each_endpoint_answers_over_the_asgi_transport(kb, bm25):
    app = create_app(bm25, kb)

    async def go():
        async with serving(app) as c:
            assert (await c.get("/health/live")).json()["status"] == "live"
            assert (await c.get("/health/ready")).status_code == 200
            info = (await c.get("/v1/kb")).json()
            assert info == {"size": len(kb), "name": kb.source, "fingerprint": kb.fingerprint, "linker": "bm25"}
            ent = (await c.get("/v1/entities/Q5")).json()
            assert ent["name"] == "Paris" and ent["description"] == "capital of France"
            assert (await c.get("/v1/entities/nope")).status_code == 404

            r = await c.post("/v1/link", json={"mentions": [mention(1), mention(4, id=None), mention(3)]})
            assert r.status_code == 200 and r.headers["x-request-id"]
            results = r.json()["results"]
            expected = [x.to_dict() for x in bm25.link([
                Mention(i, m["text"], m["mention"], m["text"].find(m["mention"]),
                        m["text"].find(m["mention"]) + len(m["mention"]))
                for i, m in (("m2", TEST[1]), ("2", TEST[4]), ("m4", TEST[3]))])]
            assert results == expected                 # what the library answers, in order, ids echoed
            assert results[0]["entity_id"] == "Q4" and results[1]["id"] == "2"

            # offsets instead of the string; a mention not in its text is an error record
            text = "A view of Paris from the Eiffel Tower"
            r = await c.post("/v1/link", json={"mentions": [{"id": "o", "text": text, "start": 10, "end": 15},
                                                            {"id": "bad", "text": text, "mention": "Berlin"}]})
            ok, bad = r.json()["results"]
            assert ok["entity_id"] in ("Q5", "Q6") and ok["name"] == "Paris"
            assert bad["id"] == "bad" and bad["line"] == 2 and "'Berlin' is not found" in bad["error"]

            found = (await c.post("/v1/detect", json={"text": "Paris Hilton met The Big O in Paris"})).json()
            assert found["mentions"] == [{"start": 0, "end": 12, "mention": "Paris Hilton"},
                                         {"start": 17, "end": 26, "mention": "The Big O"},
                                         {"start": 30, "end": 35, "mention": "Paris"}]
            assert (await c.get("/")).headers["content-type"].startswith("text/html")
            assert "page.js" in (await c.get("/")).text
            assert (await c.get("/static/page.js")).status_code == 200
            docs = await c.get("/docs")
            assert docs.status_code == 200 and "/openapi.json" in docs.text

    run(go())


def test_openapi_schema_is_valid_and_documents_the_error_statuses(kb, bm25):
    from openapi_spec_validator import validate

    schema = create_app(bm25, kb).openapi()
    validate(schema)
    for path in ("/v1/link", "/rel", "/v1/detect"):
        assert {"200", "400", "413", "415", "422", "503"} <= set(schema["paths"][path]["post"]["responses"]), path
    assert {"/health/live", "/health/ready", "/v1/kb", "/v1/entities/{entity_id}"} <= set(schema["paths"])


# ------------------------------------------------------------------ REL
def test_rel_answers_rels_documented_example_in_rels_format(tmp_path):
    kb = KnowledgeBase.from_jsonl(write_jsonl(tmp_path / "kb.jsonl", [
        {"id": "Q1", "name": "Charles Bukowski", "description": "American poet"},
        {"id": "Q2", "name": "Charles Darwin"}, {"id": "Q3", "name": "Bukowski (band)"}]))
    linker = load_linker(kb, {"linker": "bm25"})
    # REL's documented request, verbatim, and its documented answer's first four values
    request = {"text": REL_TEXT, "spans": [[41, 16]], "tagger": "ner-fast"}
    documented = [[41, 16, "Charles Bukowski", "Charles_Bukowski", 0, 0, "NULL"]]

    async def go():
        async with serving(create_app(linker, kb, rel_entity="name")) as c:
            ed = (await c.post("/rel", json=request)).json()
            el = (await c.post("/rel", json={"text": REL_TEXT, "spans": []})).json()    # REL's README EL call
            no_spans = (await c.post("/rel", json={"text": REL_TEXT})).json()
            empty = (await c.post("/rel", json={"text": ""})).json()
        async with serving(create_app(linker, kb)) as c:
            by_id = (await c.post("/rel", json=request)).json()
        return ed, el, no_spans, empty, by_id

    ed, el, no_spans, empty, by_id = run(go())
    for answer in (ed, el, no_spans):
        assert len(answer) == 1 and len(answer[0]) == 7
        start, length, surface, entity, ed_conf, md_conf, tag = answer[0]
        assert [start, length, surface, entity] == documented[0][:4]
        assert isinstance(ed_conf, float) and 0.0 <= ed_conf <= 1.0
        assert (md_conf, tag) == (0.0, "NULL")
        assert REL_TEXT[start:start + length] == surface       # the second value is a length
    assert ed[0][4] == pytest.approx(linker.process_text(REL_TEXT, "Charles Bukowski").confidence)
    assert empty == [] and by_id[0][3] == "Q1"


def test_rel_leaves_out_nil_answers_as_rel_does(kb):
    linker = load_linker(kb, {"linker": "exact"})

    async def go():
        async with serving(create_app(linker, kb)) as c:
            return (await c.post("/rel", json={"text": "Paris Hilton and Robertson", "spans": [[0, 12], [17, 9]]})).json()

    assert run(go()) == [[0, 12, "Paris Hilton", "Q7", 1.0, 0.0, "NULL"]]   # "Robertson" is NIL for exact


# ------------------------------------------------------------------ bad input
def test_each_bad_input_gets_its_status_and_names_the_field(kb, bm25):
    rec = Recording(bm25)
    app = create_app(rec, kb)
    text = "Robertson as a member of the Milwaukee Bucks"

    async def chunks(total: int):
        for _ in range(total // 65536 + 1):
            yield b" " * 65536

    async def go():
        async with serving(app) as c:
            out = {}
            out["413 length"] = await c.post("/v1/link", content=b"x" * (MAX_BODY + 1),
                                             headers={"content-type": "application/json"})
            out["413 chunked"] = await c.post("/rel", content=chunks(MAX_BODY + 1),
                                              headers={"content-type": "application/json"})
            out["text"] = await c.post("/v1/link", json={"mentions": [{"text": "x" * 10_001, "mention": "x"}]})
            out["rel text"] = await c.post("/rel", json={"text": "x" * 10_001})
            out["count"] = await c.post("/v1/link", json={"mentions": [mention(0)] * 257})
            out["none"] = await c.post("/v1/link", json={"mentions": []})
            out["rel span"] = await c.post("/rel", json={"text": text, "spans": [[0, 9], [29, 16]]})
            out["rel negative"] = await c.post("/rel", json={"text": text, "spans": [[-1, 3]]})
            out["rel bool"] = await c.post("/rel", json={"text": text, "spans": [[0, True]]})
            out["end"] = await c.post("/v1/link", json={"mentions": [{"text": text, "start": 29, "end": 45}]})
            out["half"] = await c.post("/v1/link", json={"mentions": [{"text": text, "start": 0}]})
            out["nothing"] = await c.post("/v1/link", json={"mentions": [{"text": text}]})
            out["415"] = await c.post("/v1/link", content=json.dumps({"mentions": [mention(0)]}),
                                      headers={"content-type": "text/plain"})
            out["415 form"] = await c.post("/rel", data={"text": text})
            out["400"] = await c.post("/v1/link", content=b'{"mentions": [', headers={"content-type": "application/json"})
            return out

    out = run(go())
    assert out["413 length"].status_code == 413 and out["413 chunked"].status_code == 413
    assert "larger than" in out["413 length"].json()["detail"]
    expect_422 = {"text": ["body", "mentions", 0, "text"], "rel text": ["body", "text"],
                  "count": ["body", "mentions"], "none": ["body", "mentions"], "rel span": ["body", "spans", 1],
                  "rel negative": ["body", "spans", 0], "end": ["body", "mentions", 0, "end"],
                  "half": ["body", "mentions", 0, "end"], "nothing": ["body", "mentions", 0, "mention"]}
    for name, loc in expect_422.items():
        assert out[name].status_code == 422, (name, out[name].text)
        assert loc in [d["loc"] for d in out[name].json()["detail"]], (name, out[name].json())
    assert out["rel bool"].status_code == 422            # StrictInt: JSON true is not a length
    assert "not inside the text of 44 characters" in out["rel span"].json()["detail"][0]["msg"]
    assert out["415"].status_code == 415 and "application/json" in out["415"].json()["detail"]
    assert out["415 form"].status_code == 415
    assert out["400"].status_code == 400 and "not valid JSON" in out["400"].json()["detail"]
    assert rec.calls == []                               # nothing bad reached the linker


def test_image_paths_outside_the_image_root_are_refused_and_never_read(tmp_path, kb, bm25):
    from PIL import Image

    root, outside = tmp_path / "images", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
    (root / "ok.png").write_bytes(buf.getvalue())
    secret = outside / "secret.png"
    secret.write_bytes(buf.getvalue())
    (root / "link.png").symlink_to(secret)
    (root / "sub").mkdir()
    (root / "sub" / "up").symlink_to(outside, target_is_directory=True)
    old = time.time() - 3 * 86400                       # any read would move the access time (relatime)
    os.utime(secret, (old, old))
    rec = Recording(bm25)
    b64 = base64.b64encode(buf.getvalue()).decode()

    async def go(app, refs):
        async with serving(app) as c:
            return [await c.post("/v1/link", json={"mentions": [mention(0, image=ref)]}) for ref in refs]

    bad = ["../outside/secret.png", str(secret), "link.png", "sub/up/secret.png", "sub/../../outside/secret.png"]
    good = ["ok.png", "data:image/png;base64," + b64, b64]
    answers = run(go(create_app(rec, kb, image_root=root), bad + good))
    for ref, r in zip(bad, answers):
        assert r.status_code == 422, (ref, r.text)
        detail = r.json()["detail"][0]
        assert detail["loc"] == ["body", "mentions", 0, "image"], ref
        assert "image root" in detail["msg"] or "'..'" in detail["msg"], detail
    assert [r.status_code for r in answers[len(bad):]] == [200, 200, 200]
    assert [m[0].image for m in rec.calls] == [str((root / "ok.png").resolve()), good[1],
                                              "data:image/unknown;base64," + b64]
    assert os.stat(secret).st_atime == pytest.approx(old)   # never opened
    # without --image-root no path at all is accepted
    no_root = run(go(create_app(bm25, kb), ["ok.png"]))[0]
    assert no_root.status_code == 422 and "no --image-root" in no_root.json()["detail"][0]["msg"]


# ------------------------------------------------------------------ micro-batching
def test_concurrent_requests_are_linked_in_one_call(kb, bm25):
    rec = Recording(bm25)
    app = create_app(rec, kb, max_batch=8, max_wait_ms=3000)

    async def go():
        async with serving(app) as c:
            return await asyncio.gather(*[c.post("/v1/link", json={"mentions": [mention(i, id=f"r{i}")]})
                                          for i in range(8)])

    answers = run(go())
    assert [len(call) for call in rec.calls] == [8]       # eight requests, one link call
    alone = bm25.link([m for m in rec.calls[0]])
    by_text = {m.text: r for m, r in zip(rec.calls[0], alone)}
    for i, r in enumerate(answers):
        (res,) = r.json()["results"]
        assert res["id"] == f"r{i}"                      # each request gets its own answer back
        assert res["entity_id"] == by_text[TEST[i % len(TEST)]["text"]].entity_id
    assert app.state.service.batcher.stats.largest == 8


def test_a_large_request_is_split_over_batches_and_answered_in_order(kb, bm25):
    rec = Recording(bm25)
    app = create_app(rec, kb, max_batch=2, max_wait_ms=0)

    async def go():
        async with serving(app) as c:
            return (await c.post("/v1/link", json={"mentions": [mention(i, id=str(i)) for i in range(5)]})).json()

    results = run(go())["results"]
    assert [len(call) for call in rec.calls] == [2, 2, 1]
    assert [r["id"] for r in results] == ["0", "1", "2", "3", "4"]
    assert results[1]["entity_id"] == "Q4"


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing(kb, bm25):
    gate = threading.Event()
    rec = Recording(bm25, gate)
    app = create_app(rec, kb, max_batch=1, max_wait_ms=0, max_queue=2)

    async def go():
        async with serving(app) as c:
            post = lambda i: c.post("/v1/link", json={"mentions": [mention(i, id=f"q{i}")]})  # noqa: E731
            first = asyncio.ensure_future(post(0))
            while not rec.entered.is_set():                     # the first is being linked (held)
                await asyncio.sleep(0.01)
            queued = [asyncio.ensure_future(post(i)) for i in (1, 2)]
            while app.state.service.batcher.queued < 2:
                await asyncio.sleep(0.01)
            refused = await post(3)
            gate.set()
            return refused, [await t for t in [first, *queued]]

    refused, answered = run(go())
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "queue is full" in refused.json()["detail"]
    assert [r.json()["results"][0]["id"] for r in answered] == ["q0", "q1", "q2"]
    assert sum(len(c) for c in rec.calls) == 3 and app.state.service.batcher.stats.rejected == 1


def test_one_mention_the_linker_fails_on_does_not_cost_the_batch(kb, bm25):
    from gen_linker.errors import GenLinkerError

    class Picky:
        name = "picky"

        def link(self, mentions):
            if any(m.mention == "Harrison" for m in mentions):
                raise GenLinkerError("cannot link Harrison")
            return bm25.link(mentions)

    async def go():
        async with serving(create_app(Picky(), kb, max_batch=4, max_wait_ms=2000)) as c:
            return await asyncio.gather(*[c.post("/v1/link", json={"mentions": [mention(i)]}) for i in range(4)])

    results = [r.json()["results"][0] for r in run(go())]
    assert [("error" in r) for r in results] == [False, False, True, False]
    assert results[2] == {"id": "m3", "error": "linking failed: cannot link Harrison", "line": 1}
    assert results[1]["entity_id"] == "Q4"


# ------------------------------------------------------------------ readiness
def test_ready_only_once_the_linker_is_loaded(kb, bm25):
    release = threading.Event()

    def loader():
        assert release.wait(30)
        return bm25

    app = create_app(loader, kb)

    async def go():
        async with serving(app) as c:
            before = [await c.get("/health/live"), await c.get("/health/ready"),
                      await c.post("/v1/link", json={"mentions": [mention(0)]}),
                      await c.post("/v1/detect", json={"text": "Paris Hilton"})]
            release.set()
            while (await c.get("/health/ready")).status_code != 200:
                await asyncio.sleep(0.02)
            after = await c.post("/v1/link", json={"mentions": [mention(0)]})
            return before, after

    (live_, ready, link, detect), after = run(go())
    assert live_.status_code == 200 and ready.status_code == 503 and ready.json()["status"] == "loading"
    assert link.status_code == 503 and link.headers["retry-after"] == "5"
    assert detect.status_code == 200                      # the detector needs only the KB
    assert after.status_code == 200 and after.json()["results"][0]["entity_id"] == "Q9"


def test_a_linker_that_fails_to_load_is_reported_by_ready(kb):
    def loader():
        raise FileNotFoundError("no such model folder: /nowhere")

    async def go():
        async with serving(create_app(loader, kb)) as c:
            while (r := await c.get("/health/ready")).json()["status"] == "loading":
                await asyncio.sleep(0.02)
            return r, await c.post("/v1/link", json={"mentions": [mention(0)]})

    ready, link = run(go())
    assert ready.status_code == 503 and "no such model folder" in ready.json()["error"]
    assert link.status_code == 503 and "failed to load" in link.json()["detail"]


# ------------------------------------------------------------------ a real server
def raw_post(base: str, path: str, body: dict) -> socket.socket:
    """A request sent on a raw socket whose answer the test never reads (a client that leaves)."""
    host, port = base.removeprefix("http://").split(":")
    data = json.dumps(body).encode()
    s = socket.create_connection((host, int(port)))
    s.sendall(b"POST %s HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path.encode(), len(data)) + data)
    return s


def test_a_client_that_goes_away_does_not_poison_the_batch(kb, bm25, caplog):
    caplog.set_level(logging.INFO, logger="gen_linker.server")
    gate = threading.Event()
    rec = Recording(bm25, gate)
    app = create_app(rec, kb, max_batch=2, max_wait_ms=3000)
    batcher = app.state.service.batcher
    with live(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        from concurrent.futures import ThreadPoolExecutor

        def post(path, json):                       # one client per thread
            with httpx.Client(base_url=base, timeout=30) as own:
                return own.post(path, json=json)

        pool = ThreadPoolExecutor(2)
        # 1. a client leaves while its mention is in the running batch
        leaver = raw_post(base, "/v1/link", {"mentions": [mention(2, id="gone")]})
        stayer = pool.submit(post, "/v1/link", json={"mentions": [mention(0, id="stay")]})
        assert rec.entered.wait(10)
        leaver.shutdown(socket.SHUT_RDWR)
        leaver.close()
        wait_until(lambda: batcher.stats.cancelled == 1, what="the server to notice the client left")
        gate.set()
        answer = stayer.result(timeout=30)
        assert answer.status_code == 200 and answer.json()["results"][0]["entity_id"] == "Q9"
        assert [len(c) for c in rec.calls] == [2]          # both were in the batch; only one answered

        # 2. a client leaves while its request still waits in the queue: never linked
        gate.clear()
        rec.entered.clear()
        app.state.service.batcher.max_batch = 1
        held = pool.submit(post, "/v1/link", json={"mentions": [mention(1, id="held")]})
        assert rec.entered.wait(10)
        queued = raw_post(base, "/v1/link", {"mentions": [{"text": "Paris Hilton on a queued text", "mention": "Paris Hilton"}]})
        wait_until(lambda: batcher.queued == 1, what="the second request to be queued")
        queued.close()
        wait_until(lambda: batcher.stats.cancelled == 2, what="the queued client's departure")
        gate.set()
        assert held.result(timeout=30).json()["results"][0]["id"] == "held"
        after = client.post("/v1/link", json={"mentions": [mention(3, id="after")]}).json()["results"][0]
        assert after["id"] == "after" and after["entity_id"] == "Q8"
        assert "Paris Hilton on a queued text" not in [m.text for call in rec.calls for m in call]
        assert batcher.stats.dropped == 1
        pool.shutdown()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("request id=")]
    assert sum("status=499" in line for line in lines) == 2
    assert sum("POST /v1/link status=200 mentions=1" in line for line in lines) == 3


def test_the_serve_command_runs_a_real_server(tmp_path, entities_file):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gen_linker.cli", "serve", "--kb", str(entities_file),
                             "--linker", "exact", "--port", str(port), "--max-wait-ms", "1", "--rel-entity", "name"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            deadline = time.time() + 60
            while True:
                assert proc.poll() is None, proc.stderr.read()
                try:
                    if c.get("/health/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.time() < deadline, "gen-linker serve did not become ready"
                time.sleep(0.1)
            r = c.post("/v1/link", json={"mentions": [mention(1)]}, headers={"X-Request-ID": "abc-123"})
            assert r.headers["x-request-id"] == "abc-123" and r.json()["results"][0]["entity_id"] == "Q4"
            assert c.post("/rel", json={"text": "Noel Harrison sang", "spans": []}).json() == \
                [[0, 13, "Noel Harrison", "Noel_Harrison", 1.0, 0.0, "NULL"]]
            assert c.get("/v1/kb").json()["size"] == len(ENTITIES)

            def chunked():
                for _ in range(MAX_BODY // (1 << 20) + 1):
                    yield b" " * (1 << 20)

            assert c.post("/v1/link", content=chunked(), headers={"content-type": "application/json"}).status_code == 413
    finally:
        os.kill(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
    assert "request id=abc-123 POST /v1/link status=200 mentions=1" in err
    assert "status=413" in err


def test_the_generative_linker_serves_through_the_batcher(tiny_llm, kb):
    rec = Recording(load_linker(kb, {"linker": "generative", "backend": {"llm": str(tiny_llm), "dtype": "float32"},
                                     "generative": {"num_demos": 0, "beams": 3}}))
    app = create_app(rec, kb, max_batch=4, max_wait_ms=2000)

    async def go():
        async with serving(app) as c:
            linked = await asyncio.gather(*[c.post("/v1/link", json={"mentions": [mention(i)]}) for i in range(4)])
            rel = await c.post("/rel", json={"text": TEST[4]["text"], "spans": [[10, 5]]})
            return linked, rel

    linked, rel = run(go())
    assert [len(c) for c in rec.calls][:1] == [4]
    for r in linked:
        res = r.json()["results"][0]
        assert res["entity_id"] in kb and res["linker"] == "generative" and 0.0 <= res["confidence"] <= 1.0
    (ann,) = rel.json()
    assert ann[:3] == [10, 5, "Paris"] and ann[3] in kb and 0.0 <= ann[4] <= 1.0


# ------------------------------------------------------------------ schemathesis over the error paths
def _contract_test():
    """Schemathesis over the OpenAPI schema of an app on the toy KB (bm25): every operation,
    valid and invalid bodies, bounded (12 generated cases per operation, no coverage or stateful
    phases): no 500, every status and body as documented, invalid input refused."""
    try:
        import schemathesis
    except ImportError:
        @pytest.mark.skip(reason="schemathesis is not installed (pip install -e '.[test]')")
        def test_openapi_contract():
            pass

        return test_openapi_contract
    from hypothesis import HealthCheck, settings

    from gen_linker.schema import Entity

    kb = KnowledgeBase.from_entities([Entity.from_dict(e) for e in ENTITIES])
    app = create_app(load_linker(kb, {"linker": "bm25"}), kb, max_wait_ms=0)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    schema.config.generation.update(max_examples=12)
    schema.config.phases.update(phases=["examples", "fuzzing"])
    # Error paths: a schema-valid body may still be refused (offsets beyond its text cannot be said
    # in JSON Schema), so positive-data acceptance is not asserted; everything else is.
    schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])
    neg = schema.config.checks.negative_data_rejection
    neg.expected_statuses = [*neg.expected_statuses, "413", "415"]

    @schema.parametrize()
    @settings(deadline=None, suppress_health_check=list(HealthCheck), max_examples=12)
    def test_openapi_contract(case):
        case.call_and_validate()

    return test_openapi_contract


test_openapi_contract = _contract_test()
