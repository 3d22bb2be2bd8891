"""The CPU linear engine (dvfl_kernels.linear / linears): each implementation it chooses between, against
float64 ATen, on odd shapes, views, both dtypes and every grad mode; prepared weights never stale;
the model on it against the reference backend."""
from __future__ import annotations

import copy
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dvfl_kernels
from dvfl_kernels import cpu_linear
from dvfl_kernels.runtime import RUNTIME
from dvflnet.models import VideoFocalNet
from helpers import (WEIGHT_UPDATES, assert_close, swap_two_values_through_data, update_one_element_through_data,
                     update_through_numpy)

IMPLS = ["aten", "onednn"] if cpu_linear._ONEDNN else ["aten"]
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@pytest.fixture(autouse=True)
def fresh_engine(monkeypatch):
    monkeypatch.delenv("DVFL_CPU_GEMM", raising=False)
    dvfl_kernels.clear_prepared_weights()
    RUNTIME.verdicts.clear()
    yield
    dvfl_kernels.clear_prepared_weights()


def _force(monkeypatch, impl: str, dtype: torch.dtype = torch.float32) -> None:
    if impl == "onednn" and not cpu_linear.onednn_runs(dtype):
        pytest.skip(f"oneDNN's {dtype} linear does not run on this CPU (no AVX512-BF16, AVX512BW or AVX-NE-CONVERT)")
    monkeypatch.setenv("DVFL_CPU_GEMM", impl)


def _reference(x, weight, bias, activation="none", residual=None):
    out = F.linear(x.double(), weight.double().flatten(1), None if bias is None else bias.double())
    if activation == "gelu":
        out = F.gelu(out)
    return out if residual is None else residual.double() + out


def _inputs(shape, k, n, dtype, bias=True, strided=False):
    x = torch.randn(*shape, 2 * k if strided else k)
    x = x[..., ::2] if strided else x  # a non-contiguous view
    weight, b = torch.randn(n, k) / k**0.5, torch.randn(n) if bias else None
    return x.to(dtype), weight.to(dtype), None if b is None else b.to(dtype)


SHAPES = [((1,), 5, 3), ((7,), 17, 33), ((2, 3, 5, 4), 24, 11), ((257,), 96, 195), ((1, 1, 1, 1), 8, 1)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape, k, n", SHAPES)
@pytest.mark.parametrize("strided", [False, True])
def test_linear_epilogues_against_float64(monkeypatch, impl, dtype, shape, k, n, strided):
    _force(monkeypatch, impl, dtype)
    torch.manual_seed(k * n)
    x, weight, bias = _inputs(shape, k, n, dtype, strided=strided)
    residual = torch.randn(*shape, n).to(dtype)
    kept = [t.clone() for t in (x, weight, bias, residual)]
    with torch.inference_mode():
        for activation, res in (("none", None), ("gelu", None), ("none", residual), ("gelu", residual)):
            out = dvfl_kernels.linear(x, weight, bias, activation=activation, residual=res)
            assert out.dtype == dtype and out.shape == (*shape, n)
            assert_close(out, _reference(x, weight, bias, activation, res), TOL[dtype], f"{impl} {activation} {res is not None}")
    for before, after in zip(kept, (x, weight, bias, residual)):
        assert torch.equal(before, after)  # nothing the caller owns is written


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias", [True, False])
def test_linears_is_one_gemm_per_layer_list(monkeypatch, impl, bias):
    _force(monkeypatch, impl)
    torch.manual_seed(1)
    x = torch.randn(3, 5, 7, 13)
    layers = [(torch.randn(29, 13), torch.randn(29) if bias else None), (torch.randn(6, 13), torch.randn(6) if bias else None)]
    with torch.no_grad():
        outs = dvfl_kernels.linears(x, layers)
    for out, (w, b) in zip(outs, layers):
        assert_close(out, _reference(x, w, b), 1e-5, impl)
    if impl == "onednn":  # the engine ran: the outputs are slices of one buffer
        assert outs[0].untyped_storage().data_ptr() == outs[1].untyped_storage().data_ptr()


@pytest.mark.parametrize("impl", IMPLS)
def test_autocast_computes_in_bf16_like_f_linear(monkeypatch, impl):
    _force(monkeypatch, impl, torch.bfloat16)
    torch.manual_seed(2)
    x, weight, bias = _inputs((33,), 40, 21, torch.float32)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = dvfl_kernels.linear(x, weight, bias, activation="gelu")
        expected = F.gelu(F.linear(x, weight, bias))
    assert out.dtype == expected.dtype == torch.bfloat16
    assert_close(out, _reference(x, weight, bias, "gelu"), 2e-2, impl)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_follow_the_reference_in_grad_mode(monkeypatch, impl):
    """With a gradient needed the calls are ATen's ops: every gradient matches float64."""
    _force(monkeypatch, impl)
    torch.manual_seed(3)
    x, weight, bias = _inputs((4, 6), 10, 7, torch.float64)
    residual = torch.randn(4, 6, 7, dtype=torch.float64)
    leaves = [t.requires_grad_() for t in (x, weight, bias, residual)]
    assert torch.autograd.gradcheck(lambda *t: dvfl_kernels.linear(t[0], t[1], t[2], activation="gelu", residual=t[3]), leaves)
    for dtype in (torch.float32, torch.bfloat16):
        xs = [t.detach().to(dtype).requires_grad_() for t in leaves]
        out = dvfl_kernels.linear(*xs[:3], activation="gelu", residual=xs[3])
        grads = torch.autograd.grad(out.float().square().sum(), xs)
        ref = [t.detach().double().requires_grad_() for t in xs]
        expected = torch.autograd.grad(_reference(*ref[:3], "gelu", ref[3]).square().sum(), ref)
        for got, want, name in zip(grads, expected, ("x", "weight", "bias", "residual")):
            assert_close(got, want, 1e-4 if dtype == torch.float32 else 5e-2, f"{dtype} d{name}")


def test_choice_is_measured_per_shape_and_thread_count():
    torch.manual_seed(4)
    x, weight, bias = _inputs((64,), 32, 48, torch.float32)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        first = dvfl_kernels.linear(x, weight, bias)
        try:
            torch.set_num_threads(1)
            single = dvfl_kernels.linear(x, weight, bias)
        finally:
            torch.set_num_threads(threads)
    keys = list(RUNTIME.verdicts)
    assert {key[-1] for key in keys} == {threads, 1} and all(v in IMPLS for v in RUNTIME.verdicts.values())
    assert_close(first, single, 1e-6, "1 thread vs many")  # thread-count independent results
    assert_close(first, _reference(x, weight, bias), 1e-5, "measured choice")


def test_bad_override_and_activation_are_named():
    x, weight, bias = _inputs((4,), 3, 2, torch.float32)
    with pytest.raises(ValueError, match="activation: expected one of"):
        dvfl_kernels.linear(x, weight, bias, activation="relu")
    with pytest.raises(ValueError, match="backend: expected"):
        dvfl_kernels.linears(x, [(weight, bias)], backend="gpu")


def test_bad_env_override_is_named(monkeypatch):
    _force(monkeypatch, "mkl")
    x, weight, bias = _inputs((4,), 3, 2, torch.float32)
    with pytest.raises(ValueError, match="DVFL_CPU_GEMM: expected"), torch.no_grad():
        dvfl_kernels.linear(x, weight, bias)


def test_a_cpu_without_onednn_bf16_runs_bf16_on_aten(monkeypatch):
    """Where oneDNN's bf16 linear cannot run (an AVX2-only CPU) it is no candidate: a stored or preset
    verdict naming it is not taken, and forcing it is an error that says why."""
    monkeypatch.setattr(cpu_linear, "_ONEDNN_BF16", False)
    torch.manual_seed(6)
    x, weight, bias = _inputs((9,), 12, 5, torch.bfloat16)
    key = ("linear", 16, 12, (5,), torch.bfloat16, "none", False, torch.get_num_threads())
    with RUNTIME.scoped(), torch.inference_mode():
        RUNTIME.use_verdicts({repr(key): "onednn"})
        out = dvfl_kernels.linear(x, weight, bias)
        assert RUNTIME.verdicts.get(key) is None  # nothing measured: one candidate
    assert_close(out, _reference(x, weight, bias), TOL[torch.bfloat16], "bf16 on aten")
    monkeypatch.setenv("DVFL_CPU_GEMM", "onednn")
    with pytest.raises(ValueError, match="DVFL_CPU_GEMM=onednn: oneDNN's torch.bfloat16 linear does not run"), torch.no_grad():
        dvfl_kernels.linear(x, weight, bias)
    with torch.no_grad():  # float32 is unaffected
        assert_close(dvfl_kernels.linear(x.float(), weight.float(), bias.float()), _reference(x, weight, bias), 1e-5, "fp32")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("update", WEIGHT_UPDATES)
@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_a_changed_weight_is_never_served_stale(monkeypatch, impl, update, mode):
    _force(monkeypatch, impl)
    torch.manual_seed(5)
    layer = nn.Linear(37, 29)
    x = torch.randn(2, 9, 37)
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad
    for _ in range(2):
        with context():
            before = dvfl_kernels.linear(x, layer.weight, layer.bias, activation="gelu")
        assert_close(before, _reference(x, layer.weight.detach(), layer.bias.detach(), "gelu"), 1e-5, "before")
        update(layer)
        with context():
            after = dvfl_kernels.linear(x, layer.weight, layer.bias, activation="gelu")
        assert_close(after, _reference(x, layer.weight.detach(), layer.bias.detach(), "gelu"), 1e-5, update.__name__)


def test_prepared_weights_go_with_their_parameters(monkeypatch):
    _force(monkeypatch, IMPLS[-1])
    layer = nn.Linear(8, 4)
    with torch.no_grad():
        dvfl_kernels.linear(torch.randn(3, 8), layer.weight, layer.bias)
    assert len(RUNTIME.prepared) == 1
    del layer
    assert len(RUNTIME.prepared) == 0


def test_outside_the_engine_the_reference_ops_run(monkeypatch):
    """float64, tensors needing a gradient, backend="reference": nothing is prepared or measured."""
    x, weight, bias = _inputs((5,), 6, 4, torch.float64)
    with torch.no_grad():
        dvfl_kernels.linear(x, weight, bias)
        dvfl_kernels.linear(x.float(), weight.float(), bias.float(), backend="reference")
    dvfl_kernels.linear(x.float(), weight.float().requires_grad_(), bias.float())
    assert not RUNTIME.prepared and not RUNTIME.verdicts


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("bias", [True, False])
def test_grad_mode_gradients_against_float64(monkeypatch, impl, bias):
    """In grad mode (ATen's ops, whatever the engine's setting) linears over two layers, a flattened
    1x1-convolution weight and autocast: every gradient vs float64."""
    _force(monkeypatch, impl)
    torch.manual_seed(9)
    conv = nn.Conv1d(13, 11, 1, bias=bias)
    layers = [(torch.randn(29, 13, requires_grad=True), torch.randn(29, requires_grad=True) if bias else None),
              (conv.weight.flatten(1), conv.bias)]
    x = torch.randn(3, 5, 7, 13, requires_grad=True)
    outs = dvfl_kernels.linears(x, layers)
    loss = sum((o * torch.linspace(-1, 1, o.shape[-1])).square().sum() for o in outs)
    leaves = [x, layers[0][0], conv.weight] + ([layers[0][1], conv.bias] if bias else [])
    grads = torch.autograd.grad(loss, leaves)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    ref_layers = [(ref_leaves[1], ref_leaves[3] if bias else None), (ref_leaves[2].flatten(1), ref_leaves[4] if bias else None)]
    ref_loss = sum((_reference(ref_leaves[0], w, b) * torch.linspace(-1, 1, w.shape[0], dtype=torch.float64)).square().sum()
                   for w, b in ref_layers)
    for got, want, name in zip(grads, torch.autograd.grad(ref_loss, ref_leaves), ("x", "w0", "conv", "b0", "conv bias")):
        assert got.dtype == torch.float32 and got.shape == want.shape
        assert_close(got, want, 1e-4, f"{impl} d{name}")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dvfl_kernels.linear(x, layers[0][0], layers[0][1], activation="gelu")
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().square().sum(), [x, layers[0][0]])
    expected = torch.autograd.grad(_reference(ref_leaves[0], ref_leaves[1], ref_leaves[3] if bias else None, "gelu").square().sum(),
                                   [ref_leaves[0], ref_leaves[1]])
    for got, want in zip(grads, expected):
        assert got.dtype == torch.float32
        assert_close(got, want, 5e-2, f"{impl} autocast")


@pytest.mark.parametrize("impl", IMPLS)
def test_training_on_the_engine_follows_the_reference_backend(monkeypatch, impl):
    """A few SGD steps of a small model on "auto" (the engine set either way; the block's fused
    residual path) and on the reference backend: the same losses and weights, and gradient
    checkpointing changes nothing."""
    _force(monkeypatch, impl)
    torch.manual_seed(10)
    reference = VideoFocalNet(**MODEL, backend="reference")
    models = {"reference": reference, "auto": copy.deepcopy(reference), "checkpointed": copy.deepcopy(reference)}
    models["auto"].set_backend("auto")
    models["checkpointed"].set_backend("auto")
    models["checkpointed"].set_grad_checkpointing(True)
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for name, m in models.items()}
    clips, labels = torch.randn(2, 3, 3, 64, 64), torch.tensor([1, 4])
    for _ in range(3):
        losses = {}
        for name, model in models.items():
            loss = F.cross_entropy(model(clips), labels)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad()
            losses[name] = loss.item()
        assert losses["auto"] == pytest.approx(losses["reference"], rel=1e-4)
        assert losses["checkpointed"] == pytest.approx(losses["auto"], rel=1e-5)
    for (name, p), q in zip(reference.named_parameters(), models["auto"].parameters()):
        assert_close(q, p, 1e-4, name)


MODEL = dict(img_size=64, embed_dim=12, depths=[1, 2, 1, 1], num_classes=7, num_frames=3, drop_path_rate=0.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_model_on_the_engine_matches_the_reference_backend(monkeypatch, impl):
    """Logits within 1e-5 of the reference backend's, in inference_mode / no_grad / grad mode, N=1 and
    T=1, and bf16 autocast with the same argmax; weights changed between calls are followed."""
    _force(monkeypatch, impl)
    torch.manual_seed(6)
    reference = VideoFocalNet(**MODEL, backend="reference").eval()
    model = copy.deepcopy(reference)
    model.set_backend("auto")
    for clips in (torch.randn(2, 3, 3, 64, 64), torch.randn(1, 1, 3, 64, 64)):
        with torch.no_grad():
            expected = reference(clips)
        for context in (torch.inference_mode, torch.no_grad, torch.enable_grad):
            with context():
                assert_close(model(clips), expected, 1e-5, f"{impl} {context.__name__}")
        if impl == "aten" or cpu_linear.onednn_runs(torch.bfloat16):  # else forcing it is an error (above)
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(clips)
            assert torch.equal(low.float().argmax(-1), expected.argmax(-1))
    state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    reference.load_state_dict(state)
    model.load_state_dict(state)
    with torch.no_grad():
        assert_close(model(clips), reference(clips), 1e-5, "after load_state_dict")


def test_hooks_see_the_modules_they_were_registered_on():
    """A forward hook on fc1 (a feature extractor, thop) still fires: the block then runs its modules."""
    torch.manual_seed(7)
    model = VideoFocalNet(**MODEL, backend="auto").eval()
    seen = []
    handle = model.layers[0].blocks[0].mlp.fc1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.inference_mode():
        model(torch.randn(1, 3, 3, 64, 64))
    handle.remove()
    assert seen == [(3, 16, 16, 48)]


def test_compiled_model_on_auto_fullgraph():
    torch.manual_seed(8)
    model = VideoFocalNet(**MODEL, backend="auto").eval()
    clips = torch.randn(1, 3, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        assert_close(compiled(clips), model(clips), 1e-5, "compiled")


@pytest.mark.parametrize("update", [update_one_element_through_data, update_through_numpy, swap_two_values_through_data])
def test_without_the_extension_a_changed_weight_is_still_never_served_stale(monkeypatch, update):
    """Without dvfl_kernels._C (no content digest), prepared weights keep a copy and compare it whole."""
    monkeypatch.setitem(sys.modules, "dvfl_kernels._C", None)
    _force(monkeypatch, IMPLS[-1])
    torch.manual_seed(7)
    layer = nn.Linear(11, 5)
    x = torch.randn(3, 11)
    for when in ("before", update.__name__):
        with torch.no_grad():
            out = dvfl_kernels.linear(x, layer.weight, layer.bias)
        assert_close(out, _reference(x, layer.weight.detach(), layer.bias.detach(), None), 1e-5, when)
        update(layer)
    assert any(isinstance(d, torch.Tensor) for e in RUNTIME.prepared.values() for d in e.digests)


def test_the_content_digest_sees_any_one_byte_a_swap_and_the_size():
    from dvfl_kernels._C import content_digest

    torch.manual_seed(8)
    for n in (1, 3, 8, 1001, 70_001):  # tails of every length, and several threads' chunks
        base = torch.randn(n)
        seen = {content_digest(base)}
        raw = base.view(torch.uint8)
        for byte in sorted({0, 3, raw.numel() // 2, raw.numel() - 1}):
            changed = base.clone()
            changed.view(torch.uint8)[byte] ^= 0x10
            seen.add(content_digest(changed))
        assert len(seen) == 1 + len({0, 3, raw.numel() // 2, raw.numel() - 1}), n
        assert content_digest(base) == content_digest(base.clone())
    sparse = torch.zeros(1 << 16)
    a, b = sparse.clone(), sparse.clone()
    a[0], a[256], b[0], b[256] = 1.0, 2.0, 2.0, 1.0  # structured: one bit apart, aligned positions
    assert content_digest(a) != content_digest(b)
    assert content_digest(torch.zeros(4)) != content_digest(torch.zeros(5))
    strided = torch.randn(6, 8)[:, ::2]
    assert content_digest(strided) == content_digest(strided.contiguous())
