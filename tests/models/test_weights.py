"""Checkpoint formats: raw state dicts, the public training code's files (with a pickled yacs
config), wrapper prefixes, heads of another size, 2D FocalNet seeding, and a malicious pickle."""
from __future__ import annotations

import os

import pytest
import torch

from dvflnet.models import CheckpointError, VideoFocalNet, create_model, load_checkpoint

TINY = dict(img_size=64, embed_dim=8, depths=[1, 1, 2, 1], num_classes=5, num_frames=4, drop_path_rate=0.0)


def _same_weights(a, b, skip=()):
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa if k not in skip)


def test_raw_state_dict_file(tmp_path):
    src, dst = VideoFocalNet(**TINY), VideoFocalNet(**TINY)
    torch.save(src.state_dict(), tmp_path / "raw.pth")
    report = load_checkpoint(dst, tmp_path / "raw.pth")
    assert report.kind == "video" and not report.missing and not report.unexpected
    assert _same_weights(src, dst)


def test_public_training_checkpoint_with_yacs_config_and_ddp_prefix(tmp_path):
    yacs = pytest.importorskip("yacs.config")  # installed with fvcore
    config = yacs.CfgNode({"MODEL": yacs.CfgNode({"TYPE": "videofocalnet_tiny", "NUM_CLASSES": 5}), "SEED": 0})
    src, dst = VideoFocalNet(**TINY), VideoFocalNet(**TINY)
    state = {f"module.{k}": v for k, v in src.state_dict().items()}
    optimizer = torch.optim.SGD(src.parameters(), lr=0.1, momentum=0.9)
    torch.save({"model": state, "optimizer": optimizer.state_dict(), "epoch": 3, "max_accuracy": 71.5,
                "config": config}, tmp_path / "ckpt_epoch_3.pth")
    report = load_checkpoint(dst, tmp_path / "ckpt_epoch_3.pth")
    assert _same_weights(src, dst)
    assert report.config["MODEL"]["TYPE"] == "videofocalnet_tiny" and report.config["SEED"] == 0


def test_head_of_another_size(tmp_path):
    src = VideoFocalNet(**(TINY | dict(num_classes=7)))
    torch.save({"model": src.state_dict()}, tmp_path / "k7.pth")
    with pytest.raises(CheckpointError, match="head has 7 classes but the model's has 5.*reset_head=True"):
        load_checkpoint(VideoFocalNet(**TINY), tmp_path / "k7.pth")
    dst = VideoFocalNet(**TINY)
    head_before = dst.head.weight.clone()
    report = load_checkpoint(dst, tmp_path / "k7.pth", reset_head=True)
    assert report.mismatched == ["head.weight", "head.bias"]
    assert torch.equal(dst.head.weight, head_before)
    assert _same_weights(src, dst, skip=("head.weight", "head.bias"))
    via_registry = create_model("vfl_net_nano", **TINY, pretrained=str(tmp_path / "k7.pth"), reset_head=True)
    assert via_registry.head.weight.shape[0] == 5


def test_other_variant_is_rejected_strictly(tmp_path):
    torch.save(VideoFocalNet(**(TINY | dict(depths=[2, 2, 2, 2]))).state_dict(), tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match="unexpected"):
        load_checkpoint(VideoFocalNet(**(TINY | dict(depths=[1, 1, 2, 1]))), tmp_path / "deeper.pth")
    torch.save(VideoFocalNet(**(TINY | dict(embed_dim=16))).state_dict(), tmp_path / "wider.pth")
    with pytest.raises(CheckpointError, match="has shape"):
        load_checkpoint(VideoFocalNet(**TINY), tmp_path / "wider.pth")


def test_image_focalnet_seeds_spatial_parts(tmp_path):
    # A 2D FocalNet checkpoint has the spatial keys of a deeper model, no temporal layers, a 1000-class head.
    image = VideoFocalNet(**(TINY | dict(depths=[2, 2, 2, 2], num_classes=1000)))
    state = {k: v for k, v in image.state_dict().items() if "_temporal" not in k}
    torch.save({"model": state}, tmp_path / "focalnet_tiny_srf.pth")
    nano = VideoFocalNet(**(TINY | dict(depths=[1, 1, 2, 1])))
    fresh = {k: v.clone() for k, v in nano.state_dict().items()}
    report = load_checkpoint(nano, tmp_path / "focalnet_tiny_srf.pth")
    assert report.kind == "image"
    nano_state = nano.state_dict()
    assert "layers.0.blocks.0.modulation.f.weight" in report.loaded
    assert torch.equal(nano_state["layers.0.blocks.0.modulation.f.weight"], state["layers.0.blocks.0.modulation.f.weight"])
    assert torch.equal(nano_state["layers.2.blocks.1.mlp.fc1.weight"], state["layers.2.blocks.1.mlp.fc1.weight"])
    assert "layers.0.blocks.1.mlp.fc1.weight" in report.unexpected  # the deeper model's extra blocks
    assert {"head.weight", "head.bias"} <= set(report.mismatched)
    for key in report.missing:  # temporal layers and head left as initialised
        assert torch.equal(nano_state[key], fresh[key])
    assert any("_temporal" in k for k in report.missing) and "head.weight" in report.missing
    assert "image checkpoint" in str(report)


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_does_not_run(tmp_path):
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker
    state = VideoFocalNet(**TINY).state_dict()
    torch.save({"model": state, "config": exploit}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        load_checkpoint(VideoFocalNet(**TINY), tmp_path / "evil.pth")
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file: .*nope.pth"):
        load_checkpoint(VideoFocalNet(**TINY), tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_checkpoint(VideoFocalNet(**TINY), tmp_path / "junk.pth")
    with pytest.raises(CheckpointError, match="expected a state dict"):
        load_checkpoint(VideoFocalNet(**TINY), {"model": "weights"})
