"""DVFL-Net / Video-FocalNet models, variants and checkpoint loading."""
from .weights import CheckpointError, LoadReport, load_checkpoint, read_checkpoint
from .registry import ALIASES, MODEL_CONFIGS, create_model, list_models
from .video_focalnet import (
    BasicLayer,
    PatchEmbed,
    SpatioTemporalFocalModulation,
    VideoFocalNet,
    VideoFocalNetBlock,
    capture_modulators,
)

__all__ = [
    "ALIASES",
    "BasicLayer",
    "CheckpointError",
    "LoadReport",
    "MODEL_CONFIGS",
    "PatchEmbed",
    "SpatioTemporalFocalModulation",
    "VideoFocalNet",
    "VideoFocalNetBlock",
    "capture_modulators",
    "create_model",
    "list_models",
    "load_checkpoint",
    "read_checkpoint",
]
