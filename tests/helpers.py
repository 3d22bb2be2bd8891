"""Comparison helpers shared by the tests."""
from __future__ import annotations

from pathlib import Path

import torch

# Copies of ../shared/spec (golden fixtures and the state-dict table) so the repo tests stand alone.
GOLDEN_DIR = Path(__file__).resolve().parent / "golden"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64. NaN in `out` never passes; non-finite reference entries
    (e.g. an infinite loss) must be matched exactly."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert out.shape == ref.shape, f"shape {tuple(out.shape)} != reference {tuple(ref.shape)}"
    if torch.isnan(out).any():
        return float("inf")
    finite = torch.isfinite(ref)
    if not torch.equal(out[~finite], ref[~finite]):
        return float("inf")
    denom = ref[finite].norm().item()
    diff = (out[finite] - ref[finite]).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: float, what: str = "") -> None:
    err = rel_err(out, ref)
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


def assert_close_to_rounding(out: torch.Tensor, ref: torch.Tensor, tol: float, term_size: torch.Tensor, what: str = "") -> None:
    """assert_close, or, where `out` is a near-cancellation of larger float32 terms (so float32 rounds
    the terms, not the small result), element by element within tol of `ref` plus 16 float32 epsilons
    of `term_size` (the summed magnitude of the terms behind each element). NaN never passes."""
    if rel_err(out, ref) <= tol:
        return
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    assert not torch.isnan(out).any(), f"{what}: NaN"
    bound = tol * ref.abs() + 16 * torch.finfo(torch.float32).eps * term_size.detach().double().cpu()
    excess = (out - ref).abs() - bound
    assert (excess <= 0).all(), f"{what}: error beyond float32 rounding of its terms (by up to {excess.max():.3e})"


def strided_view(t: torch.Tensor, extra: int = 3) -> torch.Tensor:
    """`t`'s values as a channel slice of a wider buffer whose other columns hold NaN, so reading
    outside the slice poisons the result. The buffer requires grad; differentiate w.r.t. the view."""
    wide = torch.full(t.shape[:-1] + (t.shape[-1] + extra,), float("nan"), dtype=t.dtype, device=t.device)
    with torch.no_grad():
        wide[..., 1 : 1 + t.shape[-1]] = t
    wide.requires_grad_(True)
    return wide[..., 1 : 1 + t.shape[-1]]


def poison_allocator(device, nbytes: int = 1 << 24) -> None:
    """Fill memory the allocator will hand out next with NaN, so outputs a kernel leaves unwritten show."""
    junk = torch.full((nbytes // 4,), float("nan"), dtype=torch.float32, device=device)
    del junk


def kernel_device(backend: str) -> str:
    """Where a backend's tensors live in these tests (Triton runs interpreted on CPU without a GPU)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def interpreted(backend: str) -> bool:
    """Whether `backend`'s kernels run in Triton's interpreter here (each launch costs seconds in Python)."""
    return backend == "triton" and kernel_device(backend) == "cpu"


# Every way a parameter changes between two inference calls, each of which a weight prepared for
# inference (dvfl_kernels._prepared) must see: on any module with a `weight` (and a `bias` for the one
# that needs it).
def update_in_place(layer):
    with torch.no_grad():
        layer.weight.mul_(-2)


def update_one_element(layer):
    with torch.no_grad():
        layer.weight[0, 1] += 1  # through the parameter: its version counter moves


def update_bias_in_place(layer):
    with torch.no_grad():
        layer.bias.add_(3)


def update_through_data(layer):
    layer.weight.data.mul_(0.5)  # bypasses the version counter


def update_one_element_through_data(layer):
    layer.weight.data.view(-1)[1] += 5  # one value, no version counter: only a read of every byte sees it


def update_through_numpy(layer):
    """One byte of one value flipped through numpy (a uint8 view: numpy has no bfloat16)."""
    flat = layer.weight.detach().view(-1).view(torch.uint8).numpy()
    flat[2 * layer.weight.element_size() - 1] ^= 0x01


def ema_through_data(layer):
    """An EMA update as EMA helpers write it: decay, then add, through .data."""
    layer.weight.data.mul_(0.999).add_(torch.ones_like(layer.weight), alpha=0.001)


def prune_through_data(layer):
    """A pruning mask applied in place: every third value zeroed."""
    mask = (torch.arange(layer.weight.numel()) % 3 != 0).view(layer.weight.shape).to(layer.weight.dtype)
    layer.weight.data.mul_(mask)


def swap_two_values_through_data(layer):
    """Two values exchanged: the same multiset of bytes in another order."""
    flat = layer.weight.data.view(-1)
    flat[0], flat[1] = flat[1].clone() + 1, flat[0].clone()


def load_random_state_dict(layer):
    layer.load_state_dict({name: torch.randn_like(value) for name, value in layer.state_dict().items()})


def replace_weight(layer):
    layer.weight = torch.nn.Parameter(torch.randn_like(layer.weight))


def optimizer_step(layer):
    sum((p * torch.randn_like(p)).sum() for p in layer.parameters()).backward()
    torch.optim.SGD(layer.parameters(), lr=0.5).step()


WEIGHT_UPDATES = [update_in_place, update_one_element, update_bias_in_place, update_through_data,
                  update_one_element_through_data, update_through_numpy, ema_through_data, prune_through_data,
                  swap_two_values_through_data, load_random_state_dict, replace_weight, optimizer_step]


TINY_MODEL = {"embed_dim": 8, "depths": [1, 1, 1, 1]}


def tiny_run_config(videos, output, classes: int, *, data: dict | None = None, model: dict | None = None,
                    train: dict | None = None, eval: dict | None = None, **top) -> dict:
    """A run config for a tiny model on generated `videos` (dvflnet.data.synthetic): DEFAULTS with the
    data at `videos`, 32-pixel frames, on CPU, no loader workers, no progress bar, no stochastic
    depth; then each section's own values and the top-level ones (seed, resume, ...)."""
    import copy

    from dvflnet.engine import DEFAULTS

    cfg = copy.deepcopy(DEFAULTS)
    cfg.update({"output": str(output), "resume": None, "device": "cpu", **top})
    cfg["data"].update({"root": videos.root, "train_csv": videos.train_csv, "val_csv": videos.val_csv,
                        "num_classes": classes, "frame_interval": 1, "size": 32, "short_side": 32,
                        "test_short_side": 32, "num_workers": 0, **(data or {})})
    cfg["model"].update({"kwargs": dict(TINY_MODEL), "drop_path_rate": 0.0, **(model or {})})
    cfg["train"].update({"progress": False, **(train or {})})
    cfg["eval"].update(eval or {})
    return cfg
