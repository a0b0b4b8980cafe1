"""`gen-linker serve`: an HTTP linking service over one linker, with micro-batching.

- `app.create_app(linker, kb, ...)`: the FastAPI application (routes, limits, the page);
- `batching.MicroBatcher`: concurrent requests linked together in one `linker.link` call;
- `rel`: REL's request/answer format at `POST /rel`;
- `guards`: body size, content type, image paths under `--image-root`, the request log;
- `schemas`: request and response bodies (the OpenAPI schema);
- `cli`: the `serve` subcommand (added to `gen-linker` through `gen_linker.cli.EXTENSIONS`).

FastAPI and uvicorn are the `server` extra: `pip install 'gen-linker[server]'`.
"""
from __future__ import annotations


def create_app(*args, **kwargs):
    """`gen_linker.server.app.create_app` (imported on first use: it needs FastAPI)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)


__all__ = ["create_app"]
