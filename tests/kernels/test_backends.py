"""The backend registry (dvfl_kernels/backends.py) and the runtime's state (dvfl_kernels/runtime.py)."""
from __future__ import annotations

import json

import pytest
import torch

import dvfl_kernels
from dvfl_kernels import _probe, backends, ops
from dvfl_kernels.runtime import RUNTIME

_SCHEMA_PAIRS = [(op, f"{op}_triton") for op in ("spatial_context", "spatial_context_backward", "temporal_context",
                                                 "temporal_context_backward", "modulate", "modulate_backward",
                                                 "kd_ce_loss_rows")]


@pytest.mark.parametrize("cpp,triton", _SCHEMA_PAIRS)
def test_the_cpp_and_triton_schemas_are_the_same(cpp, triton):
    if not ops.HAS_EXTENSION or not ops.HAS_TRITON:
        pytest.skip(f"needs both families: {backends.LOAD_ERRORS}")
    ours = str(getattr(torch.ops.dvfl, cpp).default._schema).replace(f"dvfl::{cpp}(", "(")
    theirs = str(getattr(torch.ops.dvfl, triton).default._schema).replace(f"dvfl::{triton}(", "(")
    assert ours == theirs


def test_every_backend_is_one_record_that_the_dispatch_reads():
    assert dvfl_kernels.BACKENDS == tuple(backends.REGISTRY) and "reference" in backends.REGISTRY
    for op in backends.OPS:
        assert "reference" in backends.built_backends(op)
        for name in backends.built_backends(op):
            assert name in backends.REGISTRY
    # auto's first choice on CPU tensors is the record that claims the op for CPU
    assert backends.auto_preference("modulate", torch.device("cpu")) == ("cpu",)
    assert backends.auto_preference("kd_ce_loss", torch.device("cuda")) == ("triton", "cuda")


def test_available_backends_name_what_runs_here(monkeypatch):
    """Triton needs CUDA tensors, or its interpreter; the CUDA C++ kernels need a GPU."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    on_cpu = dvfl_kernels.available_backends("spatial_context", "cpu")
    assert "triton" not in on_cpu and "cuda" not in on_cpu and "reference" in on_cpu
    if not torch.cuda.is_available():
        assert dvfl_kernels.available_backends("spatial_context") == on_cpu
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    if "triton" in backends.built_backends("spatial_context"):
        assert "triton" in dvfl_kernels.available_backends("spatial_context", "cpu")
    with pytest.raises(ValueError, match="op: expected one of"):
        dvfl_kernels.available_backends("conv")


def test_a_backend_asked_for_where_it_cannot_run_says_why(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    z, g = torch.randn(1, 3, 3, 4), torch.randn(1, 3, 3, 2)
    with pytest.raises(dvfl_kernels.BackendUnavailableError, match="backend 'cuda' is not available"):
        dvfl_kernels.spatial_context(z, g, [torch.randn(4, 1, 3, 3)], backend="cuda")
    if "triton" in backends.built_backends("spatial_context"):
        with pytest.raises(dvfl_kernels.BackendUnavailableError, match="need CUDA tensors .or TRITON_INTERPRET=1."):
            dvfl_kernels.spatial_context(z, g, [torch.randn(4, 1, 3, 3)], backend="triton")


def test_the_runtime_describes_resets_and_scopes_its_state():
    key = ("test verdict", 1)
    with RUNTIME.scoped():
        assert RUNTIME.verdicts == {} and RUNTIME.prepared == {}
        assert _probe.fastest(key, {"a": lambda: None}) == "a"
        described = RUNTIME.describe()
        json.dumps(described)  # plain data
        assert described["verdicts"] == {repr(key): "a"}
        assert "cpu" in described["backends"]["built"]["spatial_context"]
        RUNTIME.reset()
        assert RUNTIME.verdicts == {}
        RUNTIME.verdicts[key] = "kept in the scope only"
    assert RUNTIME.verdicts.get(key) != "kept in the scope only"


def test_preset_verdicts_are_taken_before_measuring():
    """A run's config carries its verdicts: another process makes the same choices, unmeasured; a
    preset verdict naming no candidate is measured instead."""
    calls = []
    candidates = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    with RUNTIME.scoped():
        RUNTIME.use_verdicts({repr(("preset", 1)): "b", repr(("preset", 2)): "retired"})
        assert _probe.fastest(("preset", 1), candidates) == "b" and calls == []
        assert _probe.fastest(("preset", 2), candidates) in ("a", "b") and calls
        assert RUNTIME.verdict_table()[repr(("preset", 1))] == "b"
        with pytest.raises(TypeError, match="verdicts: expected a mapping of strings to strings"):
            RUNTIME.use_verdicts({("not", "a string"): "a"})
