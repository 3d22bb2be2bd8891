"""Training engine pieces: optimiser, learning-rate schedule, checkpoints."""
from .checkpoint import CheckpointManager, capture_rng_state, restore_rng_state, save_atomic
from .optim import build_optimizer, scaled_lr
from .schedule import WarmupCosine

__all__ = ["CheckpointManager", "WarmupCosine", "build_optimizer", "capture_rng_state", "restore_rng_state", "save_atomic", "scaled_lr"]
