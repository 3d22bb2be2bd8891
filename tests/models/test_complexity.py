"""Parameter and FLOP counts against the paper / spec, the fvcore handles of the custom ops, peak
memory, and the `dvflnet flops` command."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from dvfl_kernels import reference
from dvflnet import cli
from dvflnet.complexity import (
    count_flops,
    count_parameters,
    peak_memory,
    spatial_context_flop_jit,
    temporal_context_flop_jit,
)
from dvflnet.models import VideoFocalNet, create_model

SPEC_FLOPS = {  # fvcore, one 1x8x3x224x224 clip, 101 classes (spec/video_focalnet_state_dict.md)
    "vfl_net_nano": 27_216_142_080,
    "video_focalnet_tiny": 63_138_746_112,
    "video_focalnet_small": 124_539_719_424,
    "video_focalnet_base": 220_927_038_464,
}
PAPER_PARAMS_M = {"vfl_net_nano": 22, "video_focalnet_tiny": 49, "video_focalnet_small": 88, "video_focalnet_base": 157}


@pytest.mark.parametrize("name", list(SPEC_FLOPS))
def test_flops_and_params_match_spec(name):
    model = create_model(name, num_classes=101, backend="reference")
    flops = count_flops(model, frames=8, size=224)
    assert abs(flops - SPEC_FLOPS[name]) / SPEC_FLOPS[name] < 0.005, flops
    assert count_parameters(model) // 10**6 == PAPER_PARAMS_M[name]  # the paper truncates to millions


# The handles are exercised through test-local custom ops with the dvfl ops' schemas, so this test
# checks the multiply-add formulas against fvcore's count of the reference decomposition.
_lib = torch.library.Library("dvfl_flops_test", "DEF")
_lib.define("spatial_context(Tensor z, Tensor g, Tensor[] weights, bool normalize) -> Tensor")
_lib.define("temporal_context(Tensor z, Tensor g, Tensor[] weights, int num_frames, bool normalize) -> Tensor")
_lib.impl("spatial_context", lambda z, g, w, n: reference.spatial_context(z, g, w, n), "CompositeExplicitAutograd")
_lib.impl("temporal_context", lambda z, g, w, t, n: reference.temporal_context(z, g, w, t, n), "CompositeExplicitAutograd")


class _Contexts(nn.Module):
    def __init__(self, op_namespace, c=6, frames=4):
        super().__init__()
        self.ns, self.frames = op_namespace, frames
        self.spatial = nn.ParameterList([nn.Parameter(torch.randn(c, 1, k, k)) for k in (3, 5, 7)])
        self.temporal = nn.ParameterList([nn.Parameter(torch.randn(c, c, k)) for k in (3, 5)])

    def forward(self, z):
        g3, g2 = z[..., :4], z[..., :3]
        if self.ns == "reference":
            return reference.spatial_context(z, g3, list(self.spatial), False) + reference.temporal_context(
                z, g2, list(self.temporal), self.frames, False
            )
        ops = torch.ops.dvfl_flops_test
        return ops.spatial_context(z, g3, list(self.spatial), False) + ops.temporal_context(
            z, g2, list(self.temporal), self.frames, False
        )


def test_custom_op_flop_handles_equal_reference_count():
    from fvcore.nn import FlopCountAnalysis

    z = torch.randn(8, 5, 7, 6)
    ref = FlopCountAnalysis(_Contexts("reference"), z)
    ref.unsupported_ops_warnings(False)
    custom = FlopCountAnalysis(_Contexts("custom"), z).set_op_handle(
        **{"dvfl_flops_test::spatial_context": spatial_context_flop_jit,
           "dvfl_flops_test::temporal_context": temporal_context_flop_jit}
    )
    custom.unsupported_ops_warnings(False)
    expected = 8 * 5 * 7 * 6 * (9 + 25 + 49) + 8 * 5 * 7 * 6 * 6 * (3 + 5)
    assert ref.total() == expected
    assert custom.total() == expected


def test_peak_memory_counts_activations():
    model = VideoFocalNet(img_size=64, embed_dim=8, depths=[1, 1, 1, 1], num_classes=3, num_frames=2)
    clip = torch.randn(1, 2, 3, 64, 64)
    forward = peak_memory(model.eval(), clip, backward=False)
    train = peak_memory(model.train(), clip, backward=True)
    stem_output = 2 * 16 * 16 * 8 * 4  # bytes of one activation of stage 1
    assert stem_output < forward < train


def test_flops_command_json(capsys):
    assert cli.main(["flops", "vfl_net_nano", "--json", "--classes", "400"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["params"] == 22_444_654
    assert row["model"] == "vfl_net_nano" and row["gflops"] == pytest.approx(27.2, abs=0.1)
    assert cli.main(["flops", "no_such_model"]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err


def test_thop_counts_the_fused_modulation_with_our_custom_ops():
    thop = pytest.importorskip("thop")
    from dvflnet.complexity import count_flops, thop_custom_ops

    model = create_model("vfl_net_nano", num_classes=101, embed_dim=32).eval()
    clip = torch.randn(1, 8, 3, 64, 64)
    plain, _ = thop.profile(copy.deepcopy(model), inputs=(clip,), verbose=False)
    counted, _ = thop.profile(copy.deepcopy(model), inputs=(clip,), custom_ops=thop_custom_ops(), verbose=False)
    fvcore = count_flops(model, frames=8, size=64)
    assert plain < 0.7 * fvcore  # what a thop user got: the fused ops' convolutions missing
    assert counted == pytest.approx(fvcore, rel=2e-3)
