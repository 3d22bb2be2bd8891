"""An int8 model (``quantize_int8``) as ONNX with QuantizeLinear / DequantizeLinear pairs.

    from dvflnet.tools.export_int8 import export_onnx_int8
    report = export_onnx_int8(int8_model, "nano-int8.onnx", frames=8, size=224)

The float model is exported as ``export_onnx`` exports it (the reference decomposition), then every
MatMul whose constant weight is one of the int8 plan's GEMMs (found by value: f, f_temporal, h,
h_temporal, fc1, fc2 and the stacked temporal taps) gets the plan's quantization:
- its weight as an int8 initializer with a DequantizeLinear per output channel (axis 1 of the (K, N)
  matrix), the same int8 values and scales as in process;
- its activation through QuantizeLinear -> DequantizeLinear with the calibrated uint8 scale and zero
  point.
ONNX Runtime and OpenVINO fuse those pairs into int8 GEMMs. The file is checked with ONNX Runtime
against the in-process int8 model (``INT8_MAX_REL_ERR``).
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import torch

from dvfl_kernels import cpu_int8

from ..atomic import check_writable, write_bytes
from ..models import Int8Model
from .export import ONNX_PACKAGES, _example, _max_rel_err, export_onnx, require

# ONNX Runtime's int8 logits against the in-process int8 model's: the two requantize and accumulate
# in different orders, and an activation on a rounding tie may land one step apart.
INT8_MAX_REL_ERR = 2e-2


def _quantized_weights(model: Int8Model) -> list[tuple[str, np.ndarray, float, int]]:
    """(name, the (N, K) float weight a MatMul multiplies by, as ONNX holds it transposed (K, N); input
    scale; input zero point) for every GEMM and tap level of the plan."""
    params = dict(model.model.named_parameters())
    out = []
    for name, (low, high) in model.ranges["gemms"].items():
        scale, zero_point = cpu_int8.activation_params(low, high)
        for part in name.split("+"):
            w = params[part + ".weight"].detach()
            out.append((part, w.reshape(w.shape[0], -1).float().numpy(), scale, zero_point))
    for name, levels in model.ranges["temporal_taps"].items():
        for part, (low, high) in zip(name.split("+"), levels):
            scale, zero_point = cpu_int8.activation_params(low, high)
            out.append((part, cpu_int8.stacked_taps(params[part + ".weight"]).numpy(), scale, zero_point))
    return out


def _constant_values(model, names: list[str]) -> dict[str, np.ndarray]:
    """The values of graph values computed from initializers only (a weight's transpose the exporter
    left as a node)."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    values = {n: inits[n] for n in names if n in inits}
    producers = {o: node for node in model.graph.node for o in node.output}
    for name in names:
        if name in values:
            continue
        needed, stack, constant = [], [name], True
        while stack and constant:
            value = stack.pop()
            if value in inits or value == "":
                continue
            node = producers.get(value)
            if node is None:  # a graph input: not a constant
                constant = False
                break
            if node not in needed:
                needed.append(node)
                stack.extend(node.input)
        if not constant:
            continue
        graph = onnx.helper.make_graph(list(reversed(needed)), "constant", [], [onnx.helper.make_tensor_value_info(
            name, onnx.TensorProto.FLOAT, None)], [i for i in model.graph.initializer
                                                   if any(i.name in n.input for n in needed)])
        sub = onnx.helper.make_model(graph, opset_imports=model.opset_import)
        values[name] = ReferenceEvaluator(sub).run(None, {})[0]
    return values


def add_qdq(model, weights: list[tuple[str, np.ndarray, float, int]]) -> int:
    """Give each MatMul whose constant right operand is one of `weights` (transposed) int8 weights and
    an activation QDQ pair, in place. Returns how many MatMuls were quantized; a GEMM of the plan not
    found in the graph is an error naming it."""
    from onnx import helper, numpy_helper

    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    values = _constant_values(model, [n.input[1] for n in matmuls])
    new_nodes, new_inits, done, found = {}, [], 0, set()
    for index, node in enumerate(matmuls):
        b = values.get(node.input[1])
        if b is None or b.ndim != 2:
            continue
        match = next((w for w in weights if w[1].shape == b.T.shape and np.array_equal(w[1], b.T)), None)
        if match is None:
            continue
        part, w, scale, zero_point = match
        found.add(part)
        q_w, s_w = cpu_int8.quantize_weight(torch.from_numpy(w))
        tag = f"dvfl_int8_{index}"
        new_inits += [numpy_helper.from_array(q_w.numpy().T.copy(), f"{tag}_w"),
                      numpy_helper.from_array(s_w.numpy().astype(np.float32), f"{tag}_w_scale"),
                      numpy_helper.from_array(np.zeros(w.shape[0], dtype=np.int8), f"{tag}_w_zero"),
                      numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{tag}_x_scale"),
                      numpy_helper.from_array(np.array(zero_point, dtype=np.uint8), f"{tag}_x_zero")]
        new_nodes[id(node)] = [
            helper.make_node("QuantizeLinear", [node.input[0], f"{tag}_x_scale", f"{tag}_x_zero"], [f"{tag}_xq"]),
            helper.make_node("DequantizeLinear", [f"{tag}_xq", f"{tag}_x_scale", f"{tag}_x_zero"], [f"{tag}_x"]),
            helper.make_node("DequantizeLinear", [f"{tag}_w", f"{tag}_w_scale", f"{tag}_w_zero"], [f"{tag}_b"], axis=1),
        ]
        node.input[0], node.input[1] = f"{tag}_x", f"{tag}_b"
        done += 1
    missing = sorted({w[0] for w in weights} - found)
    if missing:
        raise RuntimeError(f"int8 ONNX export: no MatMul of the exported graph multiplies by {missing[0]}'s weight "
                           f"({len(missing)} of the plan's GEMMs not found)")
    nodes = []
    for node in model.graph.node:
        nodes.extend(new_nodes.get(id(node), []))
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(new_inits)
    _drop_unused(model)
    return done


def _drop_unused(model) -> None:
    """Remove nodes and initializers nothing reads any more (the float weights' transposes)."""
    outputs = {o.name for o in model.graph.output}
    while True:
        read = {i for n in model.graph.node for i in n.input} | outputs
        dead = [n for n in model.graph.node if not any(o in read for o in n.output)]
        if not dead:
            break
        for n in dead:
            model.graph.node.remove(n)
    read = {i for n in model.graph.node for i in n.input}
    keep = [i for i in model.graph.initializer if i.name in read]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def export_onnx_int8(model: Int8Model, out: str, frames: int = 8, size: int = 224) -> dict:
    """Write `out`: the int8 model as ONNX with QDQ pairs (dynamic batch), checked with ONNX Runtime
    against the in-process int8 model on a 2-clip batch. Returns {"path", "format", "max_rel_err",
    "checked_batch", "quantized_matmuls"}."""
    require(ONNX_PACKAGES, "ONNX export")
    import onnx
    import onnxruntime

    if not isinstance(model, Int8Model):
        raise TypeError(f"model: expected an Int8Model (quantize_int8), got {type(model).__name__}")
    check_writable(out)
    with tempfile.TemporaryDirectory() as folder:
        float_path = os.path.join(folder, "float.onnx")
        export_onnx(model.model, float_path, frames, size)
        graph = onnx.load(float_path)
    count = add_qdq(graph, _quantized_weights(model))
    onnx.checker.check_model(graph)
    write_bytes(graph.SerializeToString(), out)
    clip = _example(model.model, frames, size)
    session = onnxruntime.InferenceSession(out, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: clip.numpy()})[0])
    measured, model.measured = model.measured, False  # every GEMM the ranges name in int8, as in the file
    try:
        want = model(clip)
    finally:
        model.measured = measured
    err = _max_rel_err(got, want)
    if not err <= INT8_MAX_REL_ERR:
        raise RuntimeError(f"{out}: ONNX Runtime's int8 logits differ from the int8 model's by {err:.2e} (relative), "
                           f"more than {INT8_MAX_REL_ERR:g}")
    return {"path": out, "format": "onnx-int8", "max_rel_err": err, "checked_batch": clip.shape[0],
            "quantized_matmuls": count}
