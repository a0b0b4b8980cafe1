"""Per-epoch training checkpoints, shared by mapper and DIM training: the weights (written by
the caller), the optimizer state and a `state.json` naming the finished epochs. The state is
written last and atomically, so it names a complete checkpoint or none: a run killed at any
moment resumes after its last finished epoch."""
from __future__ import annotations

import json
from pathlib import Path

import torch


def write_state(folder: Path, optimizer: torch.optim.Optimizer, epochs_done: int, report: dict) -> None:
    torch.save(optimizer.state_dict(), folder / "optimizer.pt")
    tmp = folder / "state.json.tmp"
    tmp.write_text(json.dumps({"epochs_done": epochs_done, "report": report}))
    tmp.replace(folder / "state.json")


def read_state(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[int, dict]:
    """(finished epochs, report dict), with the optimizer state loaded."""
    state = json.loads((folder / "state.json").read_text())
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    return int(state["epochs_done"]), state["report"]


def has_state(folder: Path) -> bool:
    return (folder / "state.json").exists()
