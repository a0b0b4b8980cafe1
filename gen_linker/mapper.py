"""GEMEL's linear mapper: one image feature -> `n_prefix` soft tokens in the LLM's input space.

The only trained part of the generative linker (the vision encoder and the LLM stay frozen).
A saved mapper is a folder with `mapper.safetensors` and `mapper.yaml` (its shape), the way
sentence-transformers saves one config per module.
"""
from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import nn

from .errors import GenLinkerError


class LinearMapper(nn.Module):
    """`[batch, feature_dim]` -> `[batch, n_prefix, hidden_size]`: one linear layer, as GEMEL."""

    def __init__(self, feature_dim: int, hidden_size: int, n_prefix: int = 4) -> None:
        super().__init__()
        if n_prefix < 1:
            raise ValueError("n_prefix must be at least 1")
        self.feature_dim, self.hidden_size, self.n_prefix = feature_dim, hidden_size, n_prefix
        self.proj = nn.Linear(feature_dim, hidden_size * n_prefix)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features).view(features.shape[0], self.n_prefix, self.hidden_size)

    def config(self) -> dict:
        return {"feature_dim": self.feature_dim, "hidden_size": self.hidden_size, "n_prefix": self.n_prefix}

    def save(self, folder: str | Path) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(folder / "mapper.safetensors"))
        (folder / "mapper.yaml").write_text(yaml.safe_dump(self.config(), sort_keys=False))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "LinearMapper":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "mapper.yaml").exists() or not (folder / "mapper.safetensors").exists():
            raise GenLinkerError(f"{folder} is not a saved mapper (needs mapper.yaml and mapper.safetensors)")
        mapper = cls(**yaml.safe_load((folder / "mapper.yaml").read_text()))
        mapper.load_state_dict(load_file(str(folder / "mapper.safetensors")))
        return mapper


def splice_prefix(text_embeds: torch.Tensor, prefix: torch.Tensor, at: int) -> torch.Tensor:
    """Insert `prefix` `[n_prefix, hidden]` into `[seq, hidden]` text embeddings before position `at`
    (where the template places the image: before each `[Text]`)."""
    prefix = prefix.to(text_embeds.dtype)
    return torch.cat([text_embeds[:at], prefix, text_embeds[at:]])
