"""Exporting a trained model for deployment: ONNX (checked with ONNX Runtime) and torch.export.

    from dvflnet.tools.export import export_onnx, export_pt2
    report = export_onnx(model, "nano.onnx", frames=8, size=224)    # {"max_rel_err": ..., ...}
    paths = export_pt2(model, "nano.pt2", frames=8, size=224)       # custom-op and decomposed programs

ONNX has no dvfl ops: the model is exported with the reference decomposition of the focal ops (plain
convolutions, GELU and products), with a dynamic batch. torch.export keeps the dvfl custom ops in one
program (loadable where dvfl_kernels is installed: ``import dvfl_kernels`` before
``torch.export.load``) and writes a decomposed one that needs nothing but torch.
"""
from __future__ import annotations

import copy
import importlib.util
import io
import os

import torch

from ..atomic import check_writable, write_bytes, write_through_path

ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
ONNX_MAX_REL_ERR = 1e-4  # fp32 logits, ONNX Runtime against PyTorch


class MissingExtraError(ImportError):
    """An optional dependency (the `export` extra) is not installed; the message says what to install."""


def require(packages: tuple[str, ...], purpose: str) -> None:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise MissingExtraError(f"{purpose} needs {', '.join(missing)}: pip install 'dvfl[export]' "
                                f"(or pip install {' '.join(missing)}; none of them pulls a torch)")


def _example(model: torch.nn.Module, frames: int, size: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, frames, model.in_chans, size, size, generator=torch.Generator().manual_seed(0))


def _decomposed(model: torch.nn.Module) -> torch.nn.Module:
    """A float32 eval copy running the reference decomposition of the dvfl ops."""
    copy_ = copy.deepcopy(model).float().eval().cpu()
    copy_.set_backend("reference")
    return copy_


def _max_rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30))


def _batch_dim():
    return {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}


def export_onnx(model: torch.nn.Module, out: str, frames: int = 8, size: int = 224) -> dict:
    """Write `out` (ONNX, opset of the dynamo exporter, dynamic batch) and check it: ONNX Runtime on a
    2-clip batch against PyTorch, fp32 max relative error of the logits <= ONNX_MAX_REL_ERR."""
    require(ONNX_PACKAGES, "ONNX export")
    import onnxruntime

    check_writable(out)
    net = _decomposed(model)
    clip = _example(net, frames, size)
    program = torch.onnx.export(net, (clip,), dynamo=True, dynamic_shapes=_batch_dim(), verbose=False)
    write_through_path(out, program.save)
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = net(clip)
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: clip.numpy()})[0])
    err = _max_rel_err(got, want)
    if not err <= ONNX_MAX_REL_ERR:
        raise RuntimeError(f"{out}: ONNX Runtime's logits differ from PyTorch's by {err:.2e} (relative), "
                           f"more than {ONNX_MAX_REL_ERR:g}")
    return {"path": out, "format": "onnx", "max_rel_err": err, "checked_batch": clip.shape[0]}


def export_pt2(model: torch.nn.Module, out: str, frames: int = 8, size: int = 224) -> dict:
    """Write `out` (torch.export with the dvfl custom ops) and `<out stem>.decomposed.pt2` (reference
    decomposition, plain torch), both with a dynamic batch; each is loaded back and checked."""
    net = copy.deepcopy(model).float().eval().cpu()
    clip = _example(net, frames, size)
    base, ext = os.path.splitext(out)
    decomposed_path = f"{base}.decomposed{ext or '.pt2'}"
    check_writable(out)
    check_writable(decomposed_path)
    with torch.no_grad():
        want = _decomposed(net)(clip)
    errors = {}
    for path, module in ((out, net), (decomposed_path, _decomposed(net))):
        program = torch.export.export(module, (clip,), dynamic_shapes=_batch_dim())
        buffer = io.BytesIO()  # serialised in memory: torch's C++ file writer aborts the process on a full disk
        torch.export.save(program, buffer)
        write_bytes(buffer.getvalue(), path)
        with torch.no_grad():
            got = torch.export.load(path).module()(clip)
        errors[path] = _max_rel_err(got, want)
        if not errors[path] <= ONNX_MAX_REL_ERR:
            raise RuntimeError(f"{path}: the loaded program's logits differ by {errors[path]:.2e} (relative)")
    return {"path": out, "decomposed_path": decomposed_path, "format": "pt2", "max_rel_err": max(errors.values()),
            "checked_batch": clip.shape[0]}
