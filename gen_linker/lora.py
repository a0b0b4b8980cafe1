"""LoRA on the frozen LLM (optional, through peft), trained beside the image mapper.

The LoRA layers are injected into the hf backend's model in place (`peft.inject_adapter_in_model`),
so the backend keeps its own model class and decoding code. They are saved as a standard PEFT
folder (`adapter_config.json` + `adapter_model.safetensors`, keys `base_model.model.<module>`),
which `peft.PeftModel.from_pretrained` and vLLM's LoRA support both read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import GenLinkerError

PEFT_PREFIX = "base_model.model."


@dataclass
class LoraSpec:
    """What the recipe's `lora:` says: rank, scaling, dropout and the linear layers to adapt."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    @classmethod
    def from_recipe(cls, value) -> "LoraSpec | None":
        """`false`/absent: no LoRA; `true`: defaults; a mapping: those fields over the defaults."""
        if not value:
            return None
        if value is True:
            return cls()
        if not isinstance(value, dict):
            raise GenLinkerError(f"lora must be true, false or a mapping of r/alpha/dropout/targets, not {value!r}")
        unknown = set(value) - set(cls.__dataclass_fields__)
        if unknown:
            raise GenLinkerError(f"lora has unknown keys: {', '.join(sorted(unknown))} (use r, alpha, dropout, targets)")
        return cls(**value)

    def peft_config(self, base: str | None = None):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), base_model_name_or_path=base, task_type="CAUSAL_LM")


def _peft():
    try:
        import peft
    except ImportError as e:  # pragma: no cover - peft is a dependency
        raise GenLinkerError("LoRA needs peft: pip install peft") from e
    return peft


def add_lora(model: torch.nn.Module, spec: LoraSpec) -> dict[str, torch.nn.Parameter]:
    """Inject fresh LoRA layers into `model` (B = 0: the model's outputs are unchanged) and
    return their parameters, the only ones of the LLM that training updates."""
    peft = _peft()
    try:
        peft.inject_adapter_in_model(spec.peft_config(), model)
    except ValueError as e:   # e.g. no module matches the targets
        raise GenLinkerError(f"LoRA could not be added to the LLM: {e}") from e
    params = lora_parameters(model)
    for p in params.values():   # float32 even on a bf16 model: AdamW steps on bf16 weights round away
        p.data = p.data.float()
    return params


def lora_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA parameters of `model` by name (empty when it has none)."""
    return {n: p for n, p in model.named_parameters() if "lora_" in n}


def lora_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA weights in PEFT's saved layout."""
    state = _peft().get_peft_model_state_dict(model)
    return {PEFT_PREFIX + k: v.detach().contiguous().cpu() for k, v in state.items()}


def save_lora(model: torch.nn.Module, spec: LoraSpec, folder: str | Path, base: str | None = None) -> Path:
    """A PEFT adapter folder (readable by peft and by vLLM)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora_state(model), str(folder / "adapter_model.safetensors"))
    config = spec.peft_config(base).to_dict()
    (folder / "adapter_config.json").write_text(json.dumps(_jsonable(config), indent=2))
    return folder


def read_spec(folder: str | Path) -> LoraSpec:
    """The LoraSpec of a saved PEFT folder."""
    path = Path(folder) / "adapter_config.json"
    if not path.exists():
        raise GenLinkerError(f"{folder} is not a LoRA folder (no adapter_config.json)")
    cfg = json.loads(path.read_text())
    return LoraSpec(r=int(cfg["r"]), alpha=int(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout", 0.0)),
                    targets=sorted(cfg["target_modules"]))


def load_lora(model: torch.nn.Module, folder: str | Path, merge: bool = True) -> None:
    """Put a saved LoRA into `model`; merged into the base weights by default (no cost per token)."""
    from safetensors.torch import load_file

    peft = _peft()
    spec = read_spec(folder)
    add_lora(model, spec)
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(Path(folder) / "adapter_model.safetensors")).items()}
    result = peft.set_peft_model_state_dict(model, state)
    missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if missing:
        raise GenLinkerError(f"LoRA {folder} does not fit the LLM: {missing[:3]} ...")
    if merge:
        from peft.tuners.tuners_utils import BaseTunerLayer

        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge()


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (set, tuple, list)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if hasattr(value, "value"):   # enums
        return value.value
    return value


__all__ = ["LoraSpec", "add_lora", "lora_parameters", "save_lora", "load_lora", "read_spec"]
