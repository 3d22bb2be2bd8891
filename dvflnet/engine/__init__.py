"""The training engine, a few plain modules read in one sitting each: `schema` (every setting, once:
its type, default, range and doc; the frozen `RunConfig`), `config` (loading YAML and --opts into it),
`builders` (model, teacher, datasets, loaders, the training stream), `training` (the loop),
`evaluation`, `run_state` (checkpoints, resume, lock, log), `teacher_cache`, and the plumbing
(`distributed`, `optim`, `schedule`)."""
from .builders import build_model
from .config import DEFAULTS, ConfigError, check_config, load_config
from .distributed import DistInfo, ShardSampler, TrainSampler, init_distributed
from .evaluation import classification_report, evaluate, run_evaluation
from .optim import build_optimizer, scaled_lr
from .run_state import CheckpointManager, TrainingCheckpoint, capture_rng_state, restore_rng_state
from .schedule import WarmupCosine
from .schema import RunConfig
from .training import EpochRecord, TrainingSummary, run_training

__all__ = [
    "RunConfig",
    "DEFAULTS",
    "CheckpointManager",
    "ConfigError",
    "DistInfo",
    "EpochRecord",
    "ShardSampler",
    "TrainSampler",
    "TrainingCheckpoint",
    "TrainingSummary",
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
    "scaled_lr",
]
