"""Adapters: a trained mapper plus the card that says what it was trained for.

A recipe (`adapters/NAME.yaml`, small YAML) says what to train; `gen-linker train --recipe`
writes the adapter folder `adapters/NAME/` (git-ignored): `mapper/` (safetensors + shape),
`lora/` when the recipe asks for LoRA on the LLM (a standard PEFT folder), and `adapter.yaml`,
the card naming the base LLM, the vision encoder, `n_prefix`, the prompt
template, the KB and training data, and the dev scores. `gen-linker link --adapter FOLDER`
rebuilds the image prefixer from it, and the LoRA, for either backend.
"""
from __future__ import annotations

import time
from pathlib import Path

import yaml

from .errors import GenLinkerError
from .lora import LoraSpec
from .mapper import LinearMapper
from .soft_prompts import ImagePrefixer
from .vision import load_vision_encoder

RECIPE_DEFAULTS = {"llm": None, "vision": "random:0", "n_prefix": 4, "prompt": "gemel", "dev": None,
                   "image_root": None, "num_demos": 4, "retriever": "bm25", "epochs": 3, "lr": 1e-3,
                   "weight_decay": 0.0, "batch_size": 8, "seed": 0, "dtype": "auto", "lora": False}
RECIPE_PATHS = ("kb", "train", "dev", "image_root", "output")


def load_recipe(path: str | Path) -> dict:
    """A recipe with defaults filled in and its paths made relative to the recipe's folder."""
    path = Path(path)
    if not path.exists():
        raise GenLinkerError(f"recipe {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    missing = [k for k in ("kb", "train") if not data.get(k)]
    if missing:
        raise GenLinkerError(f"recipe {path} lacks {', '.join(missing)}")
    unknown = set(data) - set(RECIPE_DEFAULTS) - set(RECIPE_PATHS) - {"name", "task"}
    if unknown:
        raise GenLinkerError(f"recipe {path} has unknown keys: {', '.join(sorted(unknown))}")
    try:
        LoraSpec.from_recipe(data.get("lora"))
    except GenLinkerError as e:
        raise GenLinkerError(f"recipe {path}: {e}") from None
    recipe = {**RECIPE_DEFAULTS, "name": path.stem, "output": f"{path.stem}", **data}
    for key in RECIPE_PATHS:
        if recipe.get(key) is not None and not Path(recipe[key]).is_absolute():
            recipe[key] = str(path.parent / recipe[key])
    return recipe


def save_adapter(folder: str | Path, mapper: LinearMapper, card: dict) -> Path:
    folder = Path(folder)
    mapper.save(folder / "mapper")
    card = {**card, "n_prefix": mapper.n_prefix, "created": time.strftime("%Y-%m-%d %H:%M")}
    (folder / "adapter.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    return folder


def lora_folder(folder: str | Path, card: dict) -> str | None:
    """The adapter's LoRA folder (for the backend's `lora=`), or None when it has none."""
    return str(Path(folder) / "lora") if card.get("lora") else None


def load_adapter(folder: str | Path, image_root: str | Path | None = None,
                 cache_dir: str | Path | None = None) -> tuple[ImagePrefixer, dict]:
    """The image prefixer an adapter describes, and its card (`lora_folder(folder, card)`
    says which LoRA the backend must load)."""
    folder = Path(folder)
    if not (folder / "adapter.yaml").exists():
        raise GenLinkerError(f"{folder} is not an adapter folder (no adapter.yaml); train one with "
                             "gen-linker train --recipe adapters/NAME.yaml")
    card = yaml.safe_load((folder / "adapter.yaml").read_text())
    if card.get("lora") and not (folder / "lora" / "adapter_config.json").exists():
        raise GenLinkerError(f"adapter {folder}: the card names a LoRA but {folder / 'lora'} is missing")
    if card.get("lora") and not (folder / "lora" / "adapter_model.safetensors").exists():
        raise GenLinkerError(f"adapter {folder}: {folder / 'lora' / 'adapter_model.safetensors'} is missing")
    if card.get("task") == "choose":          # text only: a LoRA that chooses among listed candidates
        return None, card
    mapper = LinearMapper.load(folder / "mapper")
    encoder = load_vision_encoder(card["vision"])
    if encoder.feature_dim != mapper.feature_dim:
        raise GenLinkerError(f"adapter {folder}: the vision encoder gives {encoder.feature_dim}-d features, "
                             f"the mapper expects {mapper.feature_dim}")
    root = image_root if image_root is not None else card.get("image_root")
    return ImagePrefixer(encoder, mapper.eval(), Path(root) if root else None,
                         Path(cache_dir) if cache_dir else None), card


def train_adapter(recipe: dict, progress: bool = True):
    """Train a mapper as `recipe` says (hf backend) and write the adapter folder; returns
    (folder, TrainReport). Checkpoints go to `output/training`, so a killed run resumes."""
    import torch

    from . import datasets
    from .backends import load_backend
    from .kb import KnowledgeBase
    from .linkers.generative import GenerativeConfig, GenerativeLinker
    from .models import DEFAULT_LLM
    from .demonstrations import demonstration_pool, make_retriever
    from .lora import add_lora, lora_parameters, save_lora
    from .training import TrainConfig, load_weights, train_mapper

    kb = KnowledgeBase.open(recipe["kb"])
    train = datasets.load(Path(recipe["train"])).valid
    dev = datasets.load(Path(recipe["dev"])).valid if recipe["dev"] else []
    backend = load_backend("hf", recipe["llm"], dtype=recipe["dtype"])
    encoder = load_vision_encoder(recipe["vision"])
    torch.manual_seed(recipe["seed"])
    lora = LoraSpec.from_recipe(recipe["lora"])
    if lora is not None:
        add_lora(backend.model, lora)
    mapper = LinearMapper(encoder.feature_dim, int(backend.embed([0]).shape[-1]), recipe["n_prefix"])
    root = Path(recipe["image_root"]) if recipe["image_root"] else None
    images = ImagePrefixer(encoder, mapper, root, kb.cache_dir())
    config = GenerativeConfig(num_demos=recipe["num_demos"], retriever=recipe["retriever"],
                              prompt=recipe["prompt"], seed=recipe["seed"])
    retriever = make_retriever(recipe["retriever"], demonstration_pool(train, kb), seed=recipe["seed"])
    linker = GenerativeLinker(kb, backend, retriever, config, images=images)
    out = Path(recipe["output"])
    train_cfg = TrainConfig(epochs=recipe["epochs"], lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                            batch_size=recipe["batch_size"], seed=recipe["seed"])
    report = train_mapper(linker, train, dev, train_cfg, out / "training", progress=progress)
    if (out / "training" / "best" / "mapper.yaml").exists():
        load_weights(out / "training" / "best", mapper, lora_parameters(backend.model))
    if lora is not None:
        save_lora(backend.model, lora, out / "lora", base=recipe["llm"] or DEFAULT_LLM)
    card = {"name": recipe["name"], "base_llm": recipe["llm"] or DEFAULT_LLM, "vision": recipe["vision"],
            "prompt": recipe["prompt"], "kb": recipe["kb"], "train": recipe["train"], "dev": recipe["dev"],
            "image_root": recipe["image_root"], "num_demos": recipe["num_demos"], "retriever": recipe["retriever"],
            "training": vars(train_cfg), "epoch_loss": report.epoch_loss, "dev_top1": report.dev_top1,
            "best_epoch": report.best_epoch, "lora": vars(lora) if lora else None}
    return save_adapter(out, mapper, card), report
