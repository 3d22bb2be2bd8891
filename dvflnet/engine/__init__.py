"""The training engine: config, optimiser, schedule, checkpoints, distributed plumbing, and the
train / distil / evaluate loops."""
from .checkpoint import CheckpointManager, capture_rng_state, restore_rng_state, save_atomic
from .config import DEFAULTS, ConfigError, check_config, load_config
from .distributed import DistInfo, ShardSampler, TrainSampler, init_distributed
from .loop import build_model, classification_report, evaluate, run_evaluation, run_training
from .optim import build_optimizer, scaled_lr
from .schedule import WarmupCosine

__all__ = [
    "DEFAULTS",
    "CheckpointManager",
    "ConfigError",
    "DistInfo",
    "ShardSampler",
    "TrainSampler",
    "WarmupCosine",
    "build_model",
    "build_optimizer",
    "capture_rng_state",
    "check_config",
    "classification_report",
    "evaluate",
    "init_distributed",
    "load_config",
    "restore_rng_state",
    "run_evaluation",
    "run_training",
    "save_atomic",
    "scaled_lr",
]
