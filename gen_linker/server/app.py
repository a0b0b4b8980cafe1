"""The FastAPI application of `gen-linker serve`: one linker, many concurrent clients.

`create_app(linker, kb, ...)` takes a loaded linker (what `load_linker` returns) or a function
that loads one: that one runs on a thread once the server is up, so `/health/live` answers at
once and `/health/ready` turns 200 only when the model is loaded (orchestrators route traffic
by it). Every linking route goes through the micro-batcher (`batching.py`); the KB routes and
the mention detector do not need the linker.

Routes: `POST /v1/link`, `POST /rel` (REL's format, `rel.py`), `POST /v1/detect`,
`GET /v1/kb`, `GET /v1/entities/{id}`, `GET /health/live`, `GET /health/ready`, the page to try
it at `GET /` (`static/`), and the OpenAPI schema at `/openapi.json` (`/docs`).
"""
from __future__ import annotations

import asyncio
import json
import logging
import math
from pathlib import Path
from typing import Any, Callable, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.encoders import jsonable_encoder
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from .. import __version__
from ..batch import error_record
from ..datasets.jsonl import parse_mention
from ..detect import detect_mentions, gazetteer_for
from ..errors import RecordError
from ..kb import KnowledgeBase
from ..schema import LinkResult, Mention
from .batching import MAX_WAIT_MS, MicroBatcher, QueueFull
from .guards import BodyLimit, RequestLog, field_error, require_json, safe_image
from .rel import REL_ENTITY, rel_annotations, rel_mentions
from .schemas import (ERROR_RESPONSES, MAX_BODY, DetectRequest, DetectResponse, EntityOut, Health, KBInfo,
                      LinkRequest, LinkResponse, RELRequest, Stats)

log = logging.getLogger("gen_linker.server")
STATIC = Path(__file__).resolve().parent / "static"
CLIENT_CLOSED = 499          # nginx's "client closed request": logged, never seen by a client


class ASCIIJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: a 422 echoes the invalid input, which may hold a
    lone surrogate (\\ud800) that UTF-8 cannot encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class Service:
    """What the routes share: the KB, the linker (once loaded) and the batcher."""

    def __init__(self, kb: KnowledgeBase, linker: Any, *, image_root: str | Path | None,
                 rel_entity: str, batcher: MicroBatcher) -> None:
        if rel_entity not in REL_ENTITY:
            raise ValueError(f"rel_entity must be one of {', '.join(REL_ENTITY)}, not {rel_entity!r}")
        self.kb, self.image_root, self.rel_entity, self.batcher = kb, image_root, rel_entity, batcher
        self.loader: Callable[[], Any] | None = None
        self.linker: Any = None
        self.load_error: str | None = None
        if hasattr(linker, "link"):
            self.linker = linker
        elif callable(linker):
            self.loader = linker
        else:
            raise TypeError("linker must be a linker (with .link) or a function that loads one")

    def link(self, mentions):
        return self.linker.link(mentions)

    async def load(self) -> None:
        """Load the linker (if given as a loader) and the gazetteer on a thread."""
        try:
            await asyncio.to_thread(gazetteer_for, self.kb)
            if self.linker is None and self.loader is not None:
                self.linker = await asyncio.to_thread(self.loader)
                log.info("linker %s loaded: ready", getattr(self.linker, "name", "?"))
        except Exception as exc:                 # reported by /health/ready; the process decides
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.error("loading the linker failed: %s", self.load_error)

    def require_ready(self) -> None:
        if self.linker is None:
            if self.load_error:
                raise HTTPException(503, f"the linker failed to load: {self.load_error}")
            raise HTTPException(503, "the linker is still loading", headers={"Retry-After": "5"})

    async def answer(self, request: Request, mentions: list[Mention]) -> list:
        """Results of `mentions` through the batcher; ClientGone if the client leaves first."""
        try:
            job = self.batcher.submit(mentions)
        except QueueFull as full:
            raise HTTPException(503, "the queue is full: retry later",
                                headers={"Retry-After": str(full.retry_after)}) from None
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({job.future, gone}, return_when=asyncio.FIRST_COMPLETED)
            if job.future in done:
                return job.future.result()
            raise ClientGone()
        finally:
            gone.cancel()
            if not job.future.done():
                self.batcher.cancel(job)


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the body has been read already)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def create_app(linker: Any, kb: KnowledgeBase, *, image_root: str | Path | None = None, max_batch: int = 64,
               max_wait_ms: float = MAX_WAIT_MS, max_queue: int = 1024, rel_entity: Literal["id", "name"] = "id",
               max_body: int = MAX_BODY) -> FastAPI:
    """The service over `kb` with `linker` (loaded, or a function loading it at start-up)."""
    holder: dict[str, Service] = {}
    batcher = MicroBatcher(lambda ms: holder["svc"].link(ms), max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_queue=max_queue)
    svc = holder["svc"] = Service(kb, linker, image_root=image_root, rel_entity=rel_entity, batcher=batcher)

    async def lifespan(app: FastAPI):
        batcher.start()
        loading = asyncio.create_task(svc.load())
        app.state.loading = loading
        yield
        loading.cancel()
        await batcher.stop()

    app = FastAPI(title="gen-linker", version=__version__, lifespan=lifespan,
                  description="Entity linking over one knowledge base, with micro-batching of concurrent "
                              "requests. REL-compatible at POST /rel.")
    app.state.service = svc
    app.add_middleware(BodyLimit, max_bytes=max_body)
    app.add_middleware(RequestLog)      # outermost: logs 413s too

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        bad_json = [e for e in exc.errors() if e.get("type") == "json_invalid"]
        if bad_json:
            reason = (bad_json[0].get("ctx") or {}).get("error", "JSON decode error")
            return JSONResponse({"detail": f"the body is not valid JSON: {reason}"}, status_code=400)
        return ASCIIJSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    json_body = {"dependencies": [Depends(require_json)]}
    errors = {k: v for k, v in ERROR_RESPONSES.items()}
    no_body_errors = {503: ERROR_RESPONSES[503]}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "page.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/health/live", response_model=Health, tags=["health"])
    async def live() -> dict:
        """The process answers (says nothing about the model)."""
        return {"status": "live"}

    @app.get("/health/ready", response_model=Health, responses=no_body_errors, tags=["health"])
    async def ready():
        """200 once the linker is loaded; 503 while it loads or if loading failed."""
        if svc.linker is not None:
            return {"status": "ready"}
        body = {"status": "failed", "error": svc.load_error} if svc.load_error else {"status": "loading"}
        return JSONResponse(body, status_code=503, headers={} if svc.load_error else {"Retry-After": "5"})

    @app.get("/v1/kb", response_model=KBInfo, tags=["kb"])
    async def kb_info() -> dict:
        """The knowledge base: its size, where it was read from, its fingerprint."""
        return {"size": len(kb), "name": kb.source, "fingerprint": kb.fingerprint,
                "linker": getattr(svc.linker, "name", None)}

    @app.get("/v1/stats", response_model=Stats, tags=["health"])
    async def stats() -> dict:
        """The batcher's counters: batches linked, mentions, the largest batch, requests refused
        (queue full) or abandoned by their client, mentions waiting now."""
        st = batcher.stats
        return {"batches": st.batches, "mentions": st.mentions, "largest_batch": st.largest,
                "mean_batch": st.mentions / st.batches if st.batches else 0.0, "rejected": st.rejected,
                "cancelled": st.cancelled, "dropped": st.dropped, "queued": batcher.queued}

    @app.get("/v1/entities/{entity_id:path}", response_model=EntityOut, tags=["kb"],
             responses={404: ERROR_RESPONSES[422] | {"description": "no entity with this id"}})
    async def entity(entity_id: str) -> dict:
        """One entity of the KB (name, aliases, description)."""
        if entity_id not in kb:
            raise HTTPException(404, f"no entity {entity_id!r} in the knowledge base")
        ent = kb.get(entity_id)
        return {"id": ent.id, "name": ent.name, "aliases": list(ent.aliases), "description": ent.description,
                "image": ent.image}

    @app.post("/v1/detect", response_model=DetectResponse, responses=errors, tags=["link"], **json_body)
    async def detect(req: DetectRequest) -> dict:
        """Mentions of the KB's names and aliases in a text (longest match, word boundaries)."""
        return {"mentions": [{"start": s, "end": e, "mention": m} for s, e, m in detect_mentions(req.text, kb, req.case)]}

    @app.post("/v1/link", response_model=LinkResponse, responses=errors, tags=["link"], **json_body)
    async def link(req: LinkRequest, request: Request):
        """Link 1-256 mentions; results in order, a mention that cannot be used as an error
        record `{"id", "error", "line"}` (as `gen-linker link` writes them)."""
        request.state.mentions = len(req.mentions)
        svc.require_ready()
        slots: list[Any] = []
        mentions: list[Mention] = []
        for i, m in enumerate(req.mentions):
            loc = ("body", "mentions", i)
            if (m.start is None) != (m.end is None):
                missing = "end" if m.end is None else "start"
                raise field_error(loc + (missing,), "give both start and end offsets, or neither")
            if m.start is not None and not m.start < m.end <= len(m.text):
                raise field_error(loc + ("end",), f"span {m.start}:{m.end} is not inside the text of "
                                                  f"{len(m.text)} characters", m.end)
            if m.mention is None and m.start is None:
                raise field_error(loc + ("mention",), "give the mention string or its start and end offsets")
            image = safe_image(m.image, svc.image_root, loc + ("image",)) if m.image else None
            record = {"id": m.id if m.id is not None else str(i + 1), "text": m.text,
                      "mention": m.mention if m.mention is not None else m.text[m.start:m.end],
                      "start": m.start, "end": m.end, "image": image}
            try:
                mentions.append(parse_mention(record, source="request", line=i + 1))
                slots.append(len(mentions) - 1)
            except RecordError as err:
                slots.append(error_record(RecordError(err.reason, line=i + 1, record_id=record["id"]), record["id"]))
        try:
            linked = await svc.answer(request, mentions) if mentions else []
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        return JSONResponse({"results": [_record(linked[s]) if isinstance(s, int) else s for s in slots]})

    @app.post("/rel", responses=errors | {200: {"description": "REL's annotations: [[start, length, mention, "
                                                                "entity, ed_confidence, md_confidence, tag], ...]",
                                                 "content": {"application/json": {"schema": {
                                                     "type": "array", "items": {"type": "array", "minItems": 7,
                                                                                "maxItems": 7}}}}}},
              tags=["link"], **json_body)
    async def rel(req: RELRequest, request: Request):
        """REL's API: `{"text", "spans": [[start, length], ...]}`; without spans the mentions are
        found by the gazetteer detector. NIL answers are left out, as REL does."""
        spans = req.spans or []
        for i, (start, length) in enumerate(spans):
            if start < 0 or length < 1 or start + length > len(req.text):
                raise field_error(("body", "spans", i), f"span [{start}, {length}] is not inside the text of "
                                                        f"{len(req.text)} characters", [start, length])
        if spans:
            mentions = rel_mentions(req.text, spans)
        else:
            mentions = [Mention(f"rel-{i}", req.text, m, s, e)
                        for i, (s, e, m) in enumerate(detect_mentions(req.text, kb))]
        request.state.mentions = len(mentions)
        if not mentions:
            return JSONResponse([])
        svc.require_ready()
        try:
            results = await svc.answer(request, mentions)
        except ClientGone:
            return Response(status_code=CLIENT_CLOSED)
        failed = sum(1 for r in results if not isinstance(r, LinkResult))
        return JSONResponse(rel_annotations(mentions, results, svc.rel_entity),
                            headers={"X-Gen-Linker-Errors": str(failed)} if failed else None)

    return app


def _record(result: LinkResult | dict) -> dict:
    """The output record of a result (an error record passes as it is); a score that is not a
    finite number (JSON has none) becomes null."""
    if isinstance(result, dict):
        return result
    rec = result.to_dict()
    rec["score"] = _finite(rec["score"])
    if "confidence" in rec:
        rec["confidence"] = _finite(rec["confidence"])
    for c in rec["candidates"]:
        c["score"] = _finite(c["score"])
    return rec


def _finite(x):
    return float(x) if x is not None and math.isfinite(x) else None
