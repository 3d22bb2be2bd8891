"""dvfl_kernels: the spatio-temporal focal modulation and distillation-loss ops of DVFL-Net.

Every op takes ``backend="auto" | "reference" | "cpu" | "cuda" | "triton"``; see ``ops``.
"""
from ._checks import MAX_KD_TEMPERATURE
from .cpu_memory import keep_freed_memory
from .ops import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    kd_ce_loss,
    modulate,
    spatial_context,
    temporal_context,
)

__all__ = [
    "BACKENDS",
    "MAX_KD_TEMPERATURE",
    "BackendUnavailableError",
    "available_backends",
    "kd_ce_loss",
    "keep_freed_memory",
    "modulate",
    "spatial_context",
    "temporal_context",
]
__version__ = "0.1.0"
