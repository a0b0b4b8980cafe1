"""What stands between a request and the linker: body size, content type, image paths, the
request log, and the 422 shape for checks pydantic cannot make alone.

Body size is checked in a pure ASGI middleware: uvicorn has no body limit, and an exception
raised inside `receive()` is turned into a 400 by FastAPI's body parser, so the middleware
reads the body itself (stopping past the limit), answers 413, or replays it to the app.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.exceptions import HTTPException, RequestValidationError
from starlette.responses import JSONResponse

log = logging.getLogger("gen_linker.server")

# Mirrors gen_linker.vision.image_bytes (not imported: it pulls in torch): which references it
# reads as inline base64 and which as a file.
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_BASE64 = re.compile(r"^[A-Za-z0-9+/\s]+={0,2}\s*$")


def field_error(loc: tuple, msg: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, `loc` naming the field (e.g. ("body", "spans", 2))."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": msg,
                                    "input": value if isinstance(value, (int, str, list)) else None}])


async def require_json(request: Request) -> None:
    """415 unless the body is sent as JSON (`application/json` or `application/*+json`)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
        raise HTTPException(415, f"send the body as JSON with Content-Type: application/json, not {ctype or 'none'!r}")


def safe_image(ref: str, root: str | Path | None, loc: tuple) -> str:
    """The image reference the linker may use: inline base64 (as a data URL) or the resolved
    path of a file inside `root`. Anything else is a 422 naming the field, decided from the
    name alone and `os.path.realpath`: the file is never opened here, and never handed on.

    A path must be relative, without `..`, and lie inside `root` once symlinks are resolved;
    without an image root no path is accepted."""
    if "\x00" in ref:
        raise field_error(loc, "image reference holds a NUL character")
    rootp = Path(root) if root else None
    as_path = Path(ref) if rootp is None or os.path.isabs(ref) else rootp / ref
    inline = _DATA_URL.match(ref) or (len(ref) >= 32 and _BASE64.match(ref))
    if inline and not _is_file(as_path):
        data = _DATA_URL.sub("", ref)
        try:
            base64.b64decode("".join(data.split()), validate=True)
        except (binascii.Error, ValueError):
            raise field_error(loc, "image is neither valid base64 data nor a path under the image root") from None
        return ref if _DATA_URL.match(ref) else "data:image/unknown;base64," + "".join(data.split())
    if rootp is None:
        raise field_error(loc, "image paths are not accepted: the server has no --image-root; send the image "
                               "inline as base64")
    if os.path.isabs(ref) or "\\" in ref:
        raise field_error(loc, "image path must be relative to the image root, not absolute")
    if ".." in Path(ref).parts:
        raise field_error(loc, "image path must not contain '..'")
    real_root = os.path.realpath(rootp)
    real = os.path.realpath(rootp / ref)
    if os.path.commonpath([real_root, real]) != real_root:
        raise field_error(loc, "image path leads outside the image root (a symbolic link out)")
    return real


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):   # a name too long to be a path, or holding NUL: inline data
        return False


class BodyLimit:
    """Pure ASGI: 413 when Content-Length (or the bytes actually sent, chunked) pass
    `max_bytes`; otherwise the body is buffered and replayed to the app."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        too_big = JSONResponse({"detail": f"request body larger than {self.max_bytes} bytes"}, status_code=413)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await too_big(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                return await too_big(scope, receive, send)
            chunks.append(body)
            more = message.get("more_body", False)
        buffered = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return buffered
            return await receive()      # later: the client's disconnect (routes listen for it)

        await self.app(scope, replay, send)


class RequestLog:
    """Pure ASGI: one log line per request (id, method, path, status, mentions, ms). The id is
    the client's `X-Request-ID` when it sends one (echoed back), else a new one."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        status = [0]
        t0 = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"x-request-id", rid.encode("latin-1"))]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            ms = (time.perf_counter() - t0) * 1000
            code = state.get("status_override") or status[0] or 500
            log.info("request id=%s %s %s status=%d mentions=%d ms=%.1f", rid, scope.get("method"),
                     scope.get("path"), code, state.get("mentions", 0), ms)
