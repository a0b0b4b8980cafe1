"""Where gen-linker keeps what it builds once and reuses: converted models, tries, embeddings."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$GEN_LINKER_CACHE`, else `$XDG_CACHE_HOME/gen_linker`, else `~/.cache/gen_linker`."""
    env = os.environ.get("GEN_LINKER_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "gen_linker"
