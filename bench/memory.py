"""Peak memory of one call, on CUDA (allocator statistics) or CPU (profiler allocation events)."""
import torch


def peak_bytes(fn, device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from dvflnet.complexity import _cpu_peak_bytes

    return _cpu_peak_bytes(fn)


def synchronized(fn, device: str):
    """fn followed by a device synchronisation, so a benchmark times the work and not the launch."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run
