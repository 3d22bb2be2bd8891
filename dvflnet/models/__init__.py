"""DVFL-Net / Video-FocalNet models, variants and checkpoint loading."""
from .weights import CheckpointError, LoadReport, load_checkpoint, read_checkpoint
from .int8 import Int8Model, calibrate, quantize_int8
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
    "Int8Model",
    "LoadReport",
    "MODEL_CONFIGS",
    "PatchEmbed",
    "SpatioTemporalFocalModulation",
    "VideoFocalNet",
    "VideoFocalNetBlock",
    "calibrate",
    "capture_modulators",
    "create_model",
    "list_models",
    "load_checkpoint",
    "quantize_int8",
    "read_checkpoint",
]
