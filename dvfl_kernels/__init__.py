"""dvfl_kernels: the spatio-temporal focal modulation and distillation-loss ops of DVFL-Net.

Every op takes ``backend="auto" | "reference" | "cpu" | "cuda" | "triton"``; see ``ops``. ``linear`` /
``linears`` run the model's GEMMs on CPU on the implementation this machine runs fastest; see
``cpu_linear``. The process's CPU settings (threads, freed memory kept) are made at its first CPU
compute; see ``cpu_threads``. Everything the package keeps between calls (measured choices, prepared
weights, warnings, the process settings) is one object, ``RUNTIME``; see ``runtime``.
"""
from ._checks import MAX_KD_TEMPERATURE
from ._prepared import clear_prepared_weights
from .cpu_linear import linear, linears, mlp
from .cpu_memory import keep_freed_memory
from .cpu_threads import apply_process_settings, choose_training_threads, on_cpu_compute, usable_cores
from .ops import (
    BACKENDS,
    BackendUnavailableError,
    available_backends,
    kd_ce_loss,
    modulate,
    spatial_context,
    temporal_context,
)
from .runtime import RUNTIME

__all__ = [
    "BACKENDS",
    "MAX_KD_TEMPERATURE",
    "RUNTIME",
    "BackendUnavailableError",
    "apply_process_settings",
    "available_backends",
    "choose_training_threads",
    "clear_prepared_weights",
    "kd_ce_loss",
    "keep_freed_memory",
    "linear",
    "linears",
    "mlp",
    "modulate",
    "on_cpu_compute",
    "spatial_context",
    "temporal_context",
    "usable_cores",
]
__version__ = "0.1.0"
