"""Evaluation: the test views of every video scored exactly once over all processes, top-1 / top-5,
per-class accuracy and the confusion matrix; `run_evaluation` for a checkpoint and a config."""
from __future__ import annotations

import os

import dvfl_kernels

import torch
from torch import nn
from tqdm import tqdm

from ..atomic import write_json
from ..data import VideoCSVDataset, read_class_names
from ..models import Int8Model, load_checkpoint, read_checkpoint
from .builders import autocast, autocast_dtype, batches, build_model, eval_dataset, make_loader
from .config import check_config
from .distributed import DistInfo, ShardSampler, all_gather_objects, init_distributed, shutdown_distributed
from .run_state import interactive
from .schema import RunConfig


@torch.no_grad()
def evaluate(model: nn.Module, dataset: VideoCSVDataset, info: DistInfo, batch_size: int = 4, num_workers: int = 0,
             amp_dtype: torch.dtype | None = None, progress: bool = False) -> dict:
    """Top-1 / top-5, per-class accuracy and the confusion matrix over `dataset`'s test views.

    Each rank scores its shard (every video exactly once over all ranks); the softmax scores of a
    video's views are summed; results are gathered exactly (no padding) and checked for coverage.
    """
    model.eval()
    sampler = ShardSampler(len(dataset), info)
    loader = make_loader(dataset, batch_size, sampler, num_workers, info.device, drop_last=False)
    scores, labels = [], []
    for views, label in tqdm(batches(loader), total=len(loader), desc="evaluate",
                             disable=not (progress and info.is_main and interactive()), leave=False):
        views = views.to(info.device, non_blocking=True)  # (B, V, T, 3, H, W)
        with autocast(info.device, amp_dtype):
            logits = model(views.flatten(0, 1))
        scores.append(logits.float().softmax(-1).unflatten(0, views.shape[:2]).sum(1).cpu())
        labels.append(label)
    num_classes = model.num_classes
    local = (sampler.indices, torch.cat(scores) if scores else torch.zeros(0, num_classes), torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))
    gathered = all_gather_objects(local, info)
    indices = [i for part in gathered for i in part[0]]
    if sorted(indices) != list(range(len(dataset))):
        raise RuntimeError(f"evaluation covered {len(set(indices))} distinct of {len(dataset)} videos ({len(indices)} results)")
    order = torch.tensor(indices).argsort()
    all_scores = torch.cat([part[1] for part in gathered])[order]
    all_labels = torch.cat([part[2] for part in gathered])[order]
    broken = (~torch.isfinite(all_scores).all(1)).nonzero().flatten().tolist()
    if broken:  # never scored: a NaN row's argmax is an arbitrary class
        raise NonFiniteOutputError(f"the model's outputs are not finite (NaN or inf) for {len(broken)} of {len(dataset)} "
                                   f"videos, e.g. {dataset.items[broken[0]][0]}; nothing was scored (broken weights?)")
    return classification_report(all_scores, all_labels, num_classes)


def classification_report(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict:
    """scores (V, K), int labels (V,) -> top-1, top-5 (%), per-class accuracy (%), confusion[true][pred]."""
    top = scores.topk(min(5, num_classes), dim=1).indices
    hits = top == labels[:, None]
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, top[:, 0]), torch.ones_like(labels), accumulate=True)
    per_class = confusion.diag().double() / confusion.sum(1).clamp(min=1).double() * 100
    return {
        "top1": hits[:, 0].double().mean().item() * 100,
        "top5": hits.any(1).double().mean().item() * 100,
        "num_videos": int(labels.numel()),
        "per_class_top1": [round(v, 4) if n else None for v, n in zip(per_class.tolist(), confusion.sum(1).tolist())],
        "confusion": confusion.tolist(),
    }


class NonFiniteOutputError(ValueError):
    """The model's outputs hold NaN or inf: reported, never scored."""


def run_evaluation(cfg: dict | RunConfig) -> dict:
    """Evaluate cfg.eval.checkpoint (default: output/best.pt; an int8 checkpoint of ``dvflnet quantize``
    in int8, on CPU) with every view setting in cfg.eval.views;
    writes eval_<clips>x<crops>.json (metrics, per-class accuracy, confusion) to cfg.output."""
    cfg = check_config(cfg)
    dvfl_kernels.RUNTIME.use_verdicts(cfg.verdicts)  # the training run's CPU engine choices
    info = init_distributed(cfg.torch_device)
    try:
        path = cfg.eval.checkpoint or os.path.join(cfg.output, "best.pt")
        model = build_model(cfg.model, cfg.data, pretrained=False)
        checkpoint = read_checkpoint(path)
        load_checkpoint(model, checkpoint, strict=True, source=path)
        if isinstance(checkpoint, dict) and "int8" in checkpoint:  # `dvflnet quantize`'s: evaluated in int8, on CPU
            model = Int8Model.from_state(model.eval(), checkpoint["int8"], source=path)
        model.to(info.device)
        amp_dtype = autocast_dtype(cfg.train.amp, info.device)
        results = {}
        for clips, crops in cfg.eval.views:
            report = evaluate(model, eval_dataset(cfg, clips, crops), info, cfg.eval.batch_size,
                              cfg.data.num_workers, amp_dtype, progress=cfg.train.progress)
            report.update(checkpoint=path, views=[clips, crops], classes=_class_names(cfg))
            results[f"{clips}x{crops}"] = report
            if info.is_main:
                write_json(report, os.path.join(cfg.output, f"eval_{clips}x{crops}.json"))
        return results
    finally:
        shutdown_distributed(info)


def _class_names(cfg: RunConfig) -> list[str] | None:
    path = cfg.data.labels_csv
    return read_class_names(path) if path else None
