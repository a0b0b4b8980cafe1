"""The `serve` subcommand: `gen-linker serve --kb KB [linker flags] --host 127.0.0.1 --port 8000`.

The KB is read and the spec checked before the server starts (a bad flag fails at once, with
the message naming it); the linker is then loaded on a thread while the server already
answers `/health/live` (the vLLM backend, which starts engine processes of its own, is loaded
before the server starts instead). Linking starts once `/health/ready` says 200.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import GenLinkerError
from ..linker_flags import add_linker_flags, spec_from_args
from .batching import MAX_WAIT_MS


def add_commands(subparsers) -> None:
    s = subparsers.add_parser("serve", help="an HTTP linking service (FastAPI + uvicorn): POST /v1/link, POST /rel "
                                            "(REL's format), a page to try it at /",
                              description="Serve one linker over HTTP, linking concurrent requests together "
                                          "(micro-batching). Paths of images in requests must lie under "
                                          "--image-root.")
    s.add_argument("--kb", type=Path, required=True, help="entities JSONL file or KB folder")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port)")
    s.add_argument("--max-batch", type=int, default=64, help="most mentions linked in one call (default 64)")
    s.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS,
                   help=f"longest a mention waits for others to join its batch (default {MAX_WAIT_MS:g})")
    s.add_argument("--max-queue", type=int, default=1024,
                   help="mentions that may wait; beyond, requests get 503 with Retry-After (default 1024)")
    s.add_argument("--rel-entity", choices=("id", "name"), default="id",
                   help="the entity in POST /rel answers: the KB id, or the name as a Wikipedia title "
                        "(spaces as underscores, as REL answers) (default id)")
    s.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_linker_flags(s)
    s.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from .app import create_app
    except ImportError as exc:
        raise GenLinkerError(f"gen-linker serve needs the server extra ({exc.name} is missing): "
                             "pip install 'gen-linker[server]'") from None
    from ..kb import KnowledgeBase
    from ..loader import check_spec, load_linker

    if args.max_batch < 1 or args.max_queue < 1 or args.max_wait_ms < 0:
        raise GenLinkerError("--max-batch and --max-queue must be at least 1 and --max-wait-ms at least 0")
    spec = spec_from_args(args)
    check_spec(spec, "flags")
    kb = KnowledgeBase.open(args.kb)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    holder: dict = {}

    def load():
        try:
            return load_linker(kb, spec, progress=False)
        except BaseException:
            server = holder.get("server")
            if server is not None:
                server.should_exit = True
            raise

    linker = load() if spec.backend.name == "vllm" and spec.linker in ("generative", "pipeline") else load
    app = create_app(linker, kb, image_root=spec.image_root, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                     max_queue=args.max_queue, rel_entity=args.rel_entity)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False,
                            lifespan="on")
    server = holder["server"] = uvicorn.Server(config)
    print(f"gen-linker serve: KB {kb.source} ({len(kb)} entities), linker {spec.linker}, "
          f"http://{args.host}:{args.port}/ (ready at /health/ready)", file=sys.stderr, flush=True)
    server.run()
    error = app.state.service.load_error
    if error:
        raise GenLinkerError(f"the linker failed to load: {error}")
    return 0
