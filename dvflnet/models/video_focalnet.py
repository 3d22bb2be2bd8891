"""Video-FocalNet / DVFL-Net models: spatio-temporal focal modulation networks for video.

State-dict compatible with the public Video-FocalNets checkpoints (same module tree and keys) and
with the public constructor's keyword arguments. Unlike the public code, activations stay
channels-last ``(B*T, H, W, C)`` from the stem to the head: the focal modulation calls the
``dvfl_kernels`` ops on strided slices of the projections, with no permute/contiguous copies, and
no tensors are stored on modules during forward (use ``capture_modulators`` to look at them).

Input: clips ``(B, T, 3, H, W)``; frames are folded into the batch, ``N = B*T`` (``B*T/tubelet``).
"""
from __future__ import annotations

import contextlib
import numbers
from typing import Callable, Iterator

import torch
import torch.utils.checkpoint
from torch import nn

import dvfl_kernels

from . import fusion
from .layers import DropPath, Mlp, to_2tuple, trunc_normal_


def _integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_model_args(*, num_classes, embed_dim, depths, focal_levels, focal_windows, patch_size, in_chans, mlp_ratio,
                     drop_rate, drop_path_rate, num_frames, tubelet_size) -> None:
    """The constructor's values and their relations, checked before anything is built (the config
    path runs the same checks, naming its keys)."""
    def expect(ok: bool, name: str, what: str, value) -> None:
        if not ok:
            raise ValueError(f"{name}: expected {what}, got {value!r}")

    expect(_integer(num_classes) and num_classes >= 0, "num_classes", "an integer >= 0 (0: no head)", num_classes)
    for name, value in (("embed_dim", embed_dim), ("patch_size", patch_size), ("in_chans", in_chans),
                        ("num_frames", num_frames), ("tubelet_size", tubelet_size)):
        expect(_integer(value) and value >= 1, name, "a positive integer", value)
    expect(len(depths) == len(focal_levels) == len(focal_windows) and len(depths) > 0,
           "depths, focal_levels, focal_windows", "one entry per stage each", (depths, focal_levels, focal_windows))
    expect(all(_integer(d) and d >= 0 for d in depths), "depths", "integers >= 0 (blocks per stage)", depths)
    expect(all(_integer(v) and v >= 1 for v in focal_levels), "focal_levels", "positive integers", focal_levels)
    expect(all(_integer(v) and v >= 1 for v in focal_windows), "focal_windows", "positive integers", focal_windows)
    expect(isinstance(mlp_ratio, (int, float)) and mlp_ratio > 0 and int(embed_dim * mlp_ratio) >= 1, "mlp_ratio",
           "a number > 0", mlp_ratio)
    expect(isinstance(drop_rate, (int, float)) and 0 <= drop_rate < 1, "drop_rate", "a value in [0, 1)", drop_rate)
    expect(isinstance(drop_path_rate, (int, float)) and 0 <= drop_path_rate < 1, "drop_path_rate", "a value in [0, 1)",
           drop_path_rate)
    if num_frames % tubelet_size != 0:
        raise ValueError(f"num_frames={num_frames} must be a multiple of tubelet_size={tubelet_size}")


class VideoFocalNet(nn.Module):
    r"""Spatio-temporal focal modulation network (Video-FocalNet; DVFL-Net's "nano" is a small one).

    Args (those of the public model, plus ``backend``):
        img_size: nominal input size (informational, as in the public model; any H, W divisible by
            patch_size * 2**(stages-1) works).
        patch_size, in_chans, num_classes (0: no head), embed_dim (width of stage 1; stage i has
            embed_dim * 2**i), depths (blocks per stage), mlp_ratio, drop_rate, drop_path_rate
            (linearly increasing over blocks), norm_layer, patch_norm, use_checkpoint (gradient
            checkpointing per block), focal_levels / focal_windows (per stage; level l uses kernel
            focal_factor*l + focal_window), use_conv_embed, use_layerscale, layerscale_value,
            use_postln, use_postln_in_modulation, normalize_modulator, num_frames (frames per clip
            the model is built for; clips of other lengths run too), tubelet_size (> 1: Conv3d stem
            folding tubelet_size frames into one).
        backend: which ``dvfl_kernels`` backend runs the focal modulation ("auto", "reference", ...).
            Held here only and handed to every block with each call (``set_backend`` changes it).
            Off the reference backend a block fuses its residual adds into its GEMMs per call where
            that gives the same sums (models/fusion.py).
    """

    def __init__(
        self,
        img_size=224,
        patch_size=4,
        in_chans=3,
        num_classes=1000,
        embed_dim=96,
        depths=(2, 2, 6, 2),
        mlp_ratio=4.0,
        drop_rate=0.0,
        drop_path_rate=0.1,
        norm_layer=nn.LayerNorm,
        patch_norm=True,
        use_checkpoint=False,
        focal_levels=(2, 2, 2, 2),
        focal_windows=(3, 3, 3, 3),
        use_conv_embed=False,
        use_layerscale=False,
        layerscale_value=1e-4,
        use_postln=False,
        use_postln_in_modulation=False,
        normalize_modulator=False,
        num_frames=8,
        tubelet_size=1,
        backend="auto",
    ):
        super().__init__()
        depths, focal_levels, focal_windows = list(depths), list(focal_levels), list(focal_windows)
        check_model_args(num_classes=num_classes, embed_dim=embed_dim, depths=depths, focal_levels=focal_levels,
                         focal_windows=focal_windows, patch_size=patch_size, in_chans=in_chans, mlp_ratio=mlp_ratio,
                         drop_rate=drop_rate, drop_path_rate=drop_path_rate, num_frames=num_frames, tubelet_size=tubelet_size)
        self.num_layers = len(depths)
        widths = [embed_dim * 2**i for i in range(self.num_layers)]
        self.num_classes = num_classes
        self.embed_dim = widths
        self.patch_norm = patch_norm
        self.num_features = widths[-1]
        self.mlp_ratio = mlp_ratio
        self.in_chans = in_chans
        self.tubelet_size = tubelet_size
        self.num_frames = num_frames // tubelet_size
        self.patch_size = patch_size
        self.backend = backend

        self.patch_embed = PatchEmbed(
            img_size=to_2tuple(img_size),
            patch_size=patch_size,
            in_chans=in_chans,
            embed_dim=widths[0],
            use_conv_embed=use_conv_embed,
            norm_layer=norm_layer if patch_norm else None,
            is_stem=True,
            tubelet_size=tubelet_size,
        )
        self.patches_resolution = self.patch_embed.patches_resolution
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()  # stochastic depth decay rule
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            self.layers.append(
                BasicLayer(
                    dim=widths[i],
                    out_dim=widths[i + 1] if i < self.num_layers - 1 else None,
                    input_resolution=(self.patches_resolution[0] // 2**i, self.patches_resolution[1] // 2**i),
                    depth=depths[i],
                    mlp_ratio=mlp_ratio,
                    drop=drop_rate,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                    norm_layer=norm_layer,
                    downsample=PatchEmbed if i < self.num_layers - 1 else None,
                    use_checkpoint=use_checkpoint,
                    focal_level=focal_levels[i],
                    focal_window=focal_windows[i],
                    use_conv_embed=use_conv_embed,
                    use_layerscale=use_layerscale,
                    layerscale_value=layerscale_value,
                    use_postln=use_postln,
                    use_postln_in_modulation=use_postln_in_modulation,
                    normalize_modulator=normalize_modulator,
                    num_frames=self.num_frames,
                )
            )
        self.norm = norm_layer(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # -- public API of the timm-style model ---------------------------------------------------------
    # The public model returns {''} from both. The public optimizer builder exempts a parameter when
    # any keyword is a substring of its name, and '' is a substring of every name, so the code behind
    # the paper's tables trained with no weight decay at all. Returning the same keeps a drop-in swap
    # into that code faithful; dvflnet's own engine does not read these (see train.weight_decay_on).
    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return {""}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        return {""}

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head by a freshly initialised one with `num_classes` outputs (0: no head)."""
        self.num_classes = num_classes
        device = self.norm.weight.device
        self.head = nn.Linear(self.num_features, num_classes).to(device) if num_classes > 0 else nn.Identity()
        self.head.apply(self._init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for layer in self.layers:
            layer.use_checkpoint = enable

    def set_backend(self, backend: str) -> None:
        """Run every focal modulation on `backend` ("auto", "reference", "triton", ...) from the next call."""
        self.backend = backend

    # -- forward ------------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor, frames_dim: bool) -> int:
        """Validate a clip batch; returns the number of frames per clip after the stem."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a tensor, got {type(x).__name__}")
        expected = "(B, T, C, H, W)" if frames_dim else "(B*T, C, H, W)"
        if x.dim() != (5 if frames_dim else 4):
            raise ValueError(f"x: expected a {expected} tensor, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor (normalised frames), got dtype {x.dtype}")
        if x.shape[0] == 0 or (frames_dim and x.shape[1] == 0):
            raise ValueError(f"x: expected at least one clip of at least one frame, got shape {tuple(x.shape)}")
        channels, height, width = x.shape[-3:]
        if channels != self.in_chans:
            raise ValueError(f"x: expected {self.in_chans} channels at dim {x.dim() - 3} {expected}, got {tuple(x.shape)}")
        stride = self.patch_size * 2 ** (self.num_layers - 1)
        if height % stride or width % stride:
            raise ValueError(
                f"x: H and W must be multiples of {stride} (patch_size {self.patch_size} x 2^{self.num_layers - 1} "
                f"patch merges), got H={height}, W={width}"
            )
        if frames_dim:
            frames = int(x.shape[1])  # a plain int even under jit tracing (fvcore)
            if frames % self.tubelet_size:
                raise ValueError(f"x: T={frames} frames is not a multiple of tubelet_size={self.tubelet_size}")
            return frames // self.tubelet_size
        if self.tubelet_size != 1:
            raise ValueError("x: a model with tubelet_size > 1 needs clips (B, T, C, H, W), not frames")
        if x.shape[0] % self.num_frames:
            raise ValueError(f"x: {x.shape[0]} frames is not a whole number of {self.num_frames}-frame clips")
        return self.num_frames

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame features (B*T', num_features) of clips (B, T, C, H, W) (or frames
        (B*num_frames, C, H, W), as the public model takes them)."""
        frames = self._check_input(x, frames_dim=x.dim() == 5)
        dvfl_kernels.on_cpu_compute(x)  # the process's CPU settings, once (dvfl_kernels/cpu_threads.py)
        if self.tubelet_size == 1 and x.dim() == 5:
            x = x.flatten(0, 1)
        x = self.pos_drop(self.patch_embed(x))  # (N, H, W, C)
        for layer in self.layers:
            x = layer(x, frames, self.backend)
        return self.norm(x).mean((1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) of clips (B, T, C, H, W): per-frame features averaged over T."""
        if not isinstance(x, torch.Tensor) or x.dim() != 5:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x: expected clips of shape (B, T, C, H, W), got {shape}")
        with dvfl_kernels.cpu_threads.shared_core_guard(x):  # inference: one thread while the cores are shared
            features = self.forward_features(x)
            return self.head(features.unflatten(0, (x.shape[0], -1)).mean(1))


class BasicLayer(nn.Module):
    """One stage: `depth` blocks at one resolution, then an optional 2x patch merge."""

    def __init__(
        self,
        dim,
        out_dim,
        input_resolution,
        depth,
        mlp_ratio=4.0,
        drop=0.0,
        drop_path=0.0,
        norm_layer=nn.LayerNorm,
        downsample=None,
        use_checkpoint=False,
        focal_level=1,
        focal_window=1,
        use_conv_embed=False,
        use_layerscale=False,
        layerscale_value=1e-4,
        use_postln=False,
        use_postln_in_modulation=False,
        normalize_modulator=False,
        num_frames=8,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.blocks = nn.ModuleList(
            VideoFocalNetBlock(
                dim=dim,
                input_resolution=input_resolution,
                mlp_ratio=mlp_ratio,
                drop=drop,
                drop_path=drop_path[i] if isinstance(drop_path, (list, tuple)) else drop_path,
                norm_layer=norm_layer,
                focal_level=focal_level,
                focal_window=focal_window,
                use_layerscale=use_layerscale,
                layerscale_value=layerscale_value,
                use_postln=use_postln,
                use_postln_in_modulation=use_postln_in_modulation,
                normalize_modulator=normalize_modulator,
                num_frames=num_frames,
            )
            for i in range(depth)
        )
        self.downsample = (
            downsample(
                img_size=input_resolution,
                patch_size=2,
                in_chans=dim,
                embed_dim=out_dim,
                use_conv_embed=use_conv_embed,
                norm_layer=norm_layer,
                is_stem=False,
            )
            if downsample is not None
            else None
        )

    def forward(self, x: torch.Tensor, num_frames: int, backend: str = "auto") -> torch.Tensor:
        """x: (N, H, W, C) -> (N, H/2, W/2, out_dim) (or unchanged size in the last stage)."""
        for block in self.blocks:
            if self.use_checkpoint and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, num_frames, backend, use_reentrant=False)
            else:
                x = block(x, num_frames, backend)
        return self.downsample(x) if self.downsample is not None else x

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_resolution={self.input_resolution}, depth={self.depth}"


class VideoFocalNetBlock(nn.Module):
    """x + drop_path(modulation(LN(x))), then x + drop_path(mlp(LN(x))) (or post-LN variants)."""

    def __init__(
        self,
        dim,
        input_resolution,
        mlp_ratio=4.0,
        drop=0.0,
        drop_path=0.0,
        act_layer=nn.GELU,
        norm_layer=nn.LayerNorm,
        focal_level=1,
        focal_window=3,
        use_layerscale=False,
        layerscale_value=1e-4,
        use_postln=False,
        use_postln_in_modulation=False,
        normalize_modulator=False,
        num_frames=8,
    ):
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.mlp_ratio = mlp_ratio
        self.use_postln = use_postln
        self.norm1 = norm_layer(dim)
        self.modulation = SpatioTemporalFocalModulation(
            dim,
            focal_window=focal_window,
            focal_level=focal_level,
            proj_drop=drop,
            use_postln_in_modulation=use_postln_in_modulation,
            normalize_modulator=normalize_modulator,
            num_frames=num_frames,
        )
        # Stochastic depth drops whole frames (rows of the folded B*T batch), as the public model does.
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.gamma_1 = 1.0
        self.gamma_2 = 1.0
        if use_layerscale:
            self.gamma_1 = nn.Parameter(layerscale_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(layerscale_value * torch.ones(dim))

    def forward(self, x: torch.Tensor, num_frames: int, backend: str = "auto") -> torch.Tensor:
        """x: (N, H, W, C) with N = clips * num_frames; the focal modulation runs on `backend`."""
        if self.use_postln:
            x = x + self.drop_path(self.gamma_1 * self.norm1(self.modulation(x, num_frames, backend)))
            return x + self.drop_path(self.gamma_2 * self.norm2(self.mlp(x)))
        if fusion.fuses_block(self, backend):  # the same sums, residual adds fused into the GEMMs
            return fusion.fused_block(self, x, num_frames, backend)
        x = x + self.drop_path(self.gamma_1 * self.modulation(self.norm1(x), num_frames, backend))
        return x + self.drop_path(self.gamma_2 * self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, input_resolution={self.input_resolution}, mlp_ratio={self.mlp_ratio}"


class SpatioTemporalFocalModulation(nn.Module):
    """y = proj(q * h(A_s) * h_t(A_t)) with the spatial (A_s) and temporal (A_t) focal contexts.

    [q, z, g] = f(x), [z_t, g_t] = f_temporal(x); the contexts are computed by
    ``dvfl_kernels.spatial_context`` / ``temporal_context`` straight from those slices.
    """

    def __init__(
        self,
        dim,
        focal_window,
        focal_level,
        focal_factor=2,
        bias=True,
        proj_drop=0.0,
        use_postln_in_modulation=False,
        normalize_modulator=False,
        num_frames=8,
    ):
        super().__init__()
        self.dim = dim
        self.focal_window = focal_window
        self.focal_level = focal_level
        self.focal_factor = focal_factor
        self.use_postln_in_modulation = use_postln_in_modulation
        self.normalize_modulator = normalize_modulator
        self.num_frames = num_frames
        # Receives (m_s, m_t) when set; see capture_modulators. Not a tensor store.
        self.modulator_sink: Callable[[torch.Tensor, torch.Tensor], None] | None = None

        self.f = nn.Linear(dim, 2 * dim + focal_level + 1, bias=bias)
        self.h = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        # Registered (empty) here and filled below, as in the public model: parameters and state-dict
        # entries come in its order (f, h, proj, focal_layers, f_temporal, ...), so optimizer states
        # saved by the public training code map onto the right tensors; the convolutions are still
        # created after f_temporal / h_temporal, the public model's random-initialisation order.
        self.focal_layers = nn.ModuleList()
        self.f_temporal = nn.Linear(dim, dim + focal_level + 1, bias=bias)
        self.h_temporal = nn.Conv1d(dim, dim, kernel_size=1, bias=bias)
        self.kernel_sizes = [focal_factor * k + focal_window for k in range(focal_level)]
        # Sequential(conv, GELU) only to keep the public state-dict keys (focal_layers.<l>.0.weight);
        # the ops apply the GELU themselves.
        self.focal_layers.extend(
            nn.Sequential(nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim, bias=False), nn.GELU())
            for k in self.kernel_sizes
        )
        self.focal_layers_temporal = nn.ModuleList(
            nn.Sequential(nn.Conv1d(dim, dim, k, padding=k // 2, bias=False), nn.GELU()) for k in self.kernel_sizes
        )
        if use_postln_in_modulation:
            self.ln = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_frames: int | None = None, backend: str = "auto") -> torch.Tensor:
        """proj(q * h(A_s) * h_t(A_t)) of x (N, H, W, C), N = clips * num_frames (default: the frames
        the layer was built for), the focal contexts computed on `backend`."""
        return self.proj_drop(self.proj(self.modulate(x, num_frames, backend)))

    def modulate(self, x: torch.Tensor, num_frames: int | None = None, backend: str = "auto") -> torch.Tensor:
        """The modulated query q * h(A_s) * h_t(A_t) (layer-normed where use_postln_in_modulation):
        proj's input, (N, H, W, C)."""
        num_frames = self.num_frames if num_frames is None else num_frames
        channels, levels = self.dim, self.focal_level
        f, f_t = fusion.projections(self, x, backend)  # f(x), f_temporal(x), one GEMM where it can
        q, z, g = f.split((channels, channels, levels + 1), dim=-1)
        z_t, g_t = f_t.split((channels, levels + 1), dim=-1)
        a_s = dvfl_kernels.spatial_context(
            z, g, [layer[0].weight for layer in self.focal_layers], self.normalize_modulator, backend=backend
        )
        a_t = dvfl_kernels.temporal_context(
            z_t,
            g_t,
            [layer[0].weight for layer in self.focal_layers_temporal],
            num_frames,
            self.normalize_modulator,
            backend=backend,
        )
        # h and h_temporal are 1x1 convolutions: linears over C in the channels-last layout.
        m_s = dvfl_kernels.linear(a_s, self.h.weight.flatten(1), self.h.bias, backend=backend)
        m_t = dvfl_kernels.linear(a_t, self.h_temporal.weight.flatten(1), self.h_temporal.bias, backend=backend)
        if self.modulator_sink is not None:
            self.modulator_sink(m_s.detach(), m_t.detach())
        out = dvfl_kernels.modulate(q, m_s, m_t, backend=backend)
        return self.ln(out) if self.use_postln_in_modulation else out

    def extra_repr(self) -> str:
        return f"dim={self.dim}, focal_level={self.focal_level}, kernel_sizes={self.kernel_sizes}"


class PatchEmbed(nn.Module):
    """Stem (is_stem: images/clips -> (N, H/p, W/p, C)) or 2x patch merge ((N, H, W, C) -> (N, H/2, W/2, C'))."""

    def __init__(
        self,
        img_size=(224, 224),
        patch_size=4,
        in_chans=3,
        embed_dim=96,
        use_conv_embed=False,
        norm_layer=None,
        is_stem=False,
        tubelet_size=1,
    ):
        super().__init__()
        patch_size = to_2tuple(patch_size)
        img_size = to_2tuple(img_size)
        self.img_size = img_size
        self.patch_size = patch_size
        self.patches_resolution = [img_size[0] // patch_size[0], img_size[1] // patch_size[1]]
        self.num_patches = self.patches_resolution[0] * self.patches_resolution[1]
        self.in_chans = in_chans
        self.embed_dim = embed_dim
        self.is_stem = is_stem
        self.tubelet_size = tubelet_size if is_stem else 1
        if use_conv_embed:
            kernel, padding, stride = (7, 2, 4) if is_stem else (3, 1, 2)
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel, stride=stride, padding=padding)
        elif self.tubelet_size == 1:
            self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        else:
            kernel = (self.tubelet_size, *patch_size)
            self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_stem:  # channels-last activations, read by the conv as an NCHW view
            x = self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        elif self.tubelet_size == 1:
            # One copy of the 3-channel input so the conv writes channels-last output directly.
            x = self.proj(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        else:  # (B, T, C, H, W) -> Conv3d over (B, C, T, H, W) -> frames folded into the batch
            x = self.proj(x.transpose(1, 2)).movedim(1, -1).flatten(0, 1)
        return self.norm(x) if self.norm is not None else x


@contextlib.contextmanager
def capture_modulators(model: nn.Module) -> Iterator[dict]:
    """Collect the spatial and temporal modulators of every focal modulation during forward passes.

    Yields a dict filled as the model runs: ``{module name: {"spatial": h(A_s), "temporal": h_t(A_t)}}``,
    each (N, H, W, C), detached (the last forward wins). The modules hold no tensors themselves.

        with capture_modulators(model) as mods:
            model(clips)
        mods["layers.0.blocks.0.modulation"]["spatial"]
    """
    captured: dict[str, dict[str, torch.Tensor]] = {}
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SpatioTemporalFocalModulation)]

    def sink_for(name: str):
        def sink(m_s: torch.Tensor, m_t: torch.Tensor) -> None:
            captured[name] = {"spatial": m_s, "temporal": m_t}

        return sink

    for name, module in layers:
        module.modulator_sink = sink_for(name)
    try:
        yield captured
    finally:
        for _, module in layers:
            module.modulator_sink = None
