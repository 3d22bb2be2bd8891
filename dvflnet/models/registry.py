"""Named model variants: ``create_model("vfl_net_nano", num_classes=101)``."""
from __future__ import annotations

from .video_focalnet import VideoFocalNet

# name -> (constructor defaults). Drop-path rates are the recipe's per-variant defaults.
MODEL_CONFIGS: dict[str, dict] = {
    "vfl_net_nano": dict(embed_dim=96, depths=[1, 1, 2, 1], drop_path_rate=0.2),
    "video_focalnet_tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], drop_path_rate=0.2),
    "video_focalnet_small": dict(embed_dim=96, depths=[2, 2, 18, 2], drop_path_rate=0.3),
    "video_focalnet_base": dict(embed_dim=128, depths=[2, 2, 18, 2], drop_path_rate=0.5),
}
# The names the public Video-FocalNets / DVFL-Net code registers.
ALIASES: dict[str, str] = {
    "videofocalnet_nano": "vfl_net_nano",
    "videofocalnet_tiny": "video_focalnet_tiny",
    "videofocalnet_small": "video_focalnet_small",
    "videofocalnet_base": "video_focalnet_base",
}


def list_models() -> list[str]:
    return sorted(MODEL_CONFIGS) + sorted(ALIASES)


def resolve_name(name: str) -> str:
    canonical = ALIASES.get(name, name)
    if canonical not in MODEL_CONFIGS:
        text = repr(name) if len(repr(name)) <= 80 else f"{repr(name)[:80]}... ({len(repr(name)):,} characters)"
        raise ValueError(f"model name: unknown model {text}; known: {', '.join(list_models())}")
    return canonical


def create_model(name: str, pretrained=None, **kwargs) -> VideoFocalNet:
    """Build a variant; keyword arguments override its defaults (any VideoFocalNet argument).

    pretrained: None/False, or a checkpoint path loaded with ``load_checkpoint`` (strict; pass
    ``reset_head=True`` in kwargs to replace a head of another size).
    """
    config = dict(MODEL_CONFIGS[resolve_name(name)])
    reset_head = kwargs.pop("reset_head", False)
    config.update(kwargs)
    model = VideoFocalNet(**config)
    if pretrained is True:
        raise ValueError("pretrained: no download location is built in; pass the path of a checkpoint file")
    if pretrained:
        from .weights import load_checkpoint

        load_checkpoint(model, pretrained, reset_head=reset_head)
    return model
