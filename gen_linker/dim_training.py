"""DIM training's former home: the loop now trains DIM and DWE alike and lives in
`gen_linker.discriminative_training`; these names stay importable from here."""
from __future__ import annotations

from .discriminative_training import (DIMTrainConfig, DiscriminativeTrainConfig, batch_loss, candidate_top1,
                                      hard_negative_ids, train_dim, train_discriminative)

__all__ = ["DIMTrainConfig", "DiscriminativeTrainConfig", "batch_loss", "candidate_top1", "hard_negative_ids",
           "train_dim", "train_discriminative"]
