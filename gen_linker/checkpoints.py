"""Per-epoch training checkpoints, shared by mapper and DIM training: the weights (written by
the caller), the optimizer state and a `state.json` naming the finished epochs. The state is
written last and atomically, so it names a complete checkpoint or none: a run killed at any
moment resumes after its last finished epoch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch


@dataclass
class TrainReport:
    """Per-epoch training loss and dev Top-1, and the best epoch (mapper and DIM training)."""

    epoch_loss: list[float] = field(default_factory=list)
    dev_top1: list[float] = field(default_factory=list)
    best_epoch: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def write_state(folder: Path, optimizer: torch.optim.Optimizer, epochs_done: int, report: TrainReport) -> None:
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({"epochs_done": epochs_done, "report": report.to_dict()}))
    tmp.replace(folder / "state.json")


def read_state(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[int, TrainReport]:
    """(finished epochs, their report), with the optimizer state loaded."""
    state = json.loads((folder / "state.json").read_text())
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return int(state["epochs_done"]), TrainReport(**state["report"])


def has_state(folder: Path) -> bool:
    return (folder / "state.json").exists()
