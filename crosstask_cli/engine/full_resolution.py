"""Evaluation at ground-truth resolution on the official raw Cityscapes layout, without a prepared copy.

Each val image is read at its own size, resized to the model's input size and predicted; the logits are
upsampled bilinearly to the ground truth's size (as ``predict`` does) and scored against the full-size labelIds,
instanceIds and disparity. Images stream through a bounded queue: memory holds a few batches of full-size
ground truth, never the split.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from crosstask_cli.cityscapes_scores import CityscapesScores
from crosstask_cli.data import cityscapes as cs
from crosstask_cli.data.labels import has_cityscapes_labels
from crosstask_cli.data.prepared import DatasetError
from crosstask_cli.engine.device import autocast, memory_format, resolve_amp
from crosstask_cli.engine.records import EvalResult
from crosstask_cli.errors import InputError
from crosstask_cli.metrics import DepthMetrics
from crosstask_cli.ops import upsampled_class_ids, upsampled_map


def check_full_resolution(dataset: dict, data: Path) -> None:
    """``--full-resolution`` needs a Cityscapes-label model (7 or 19 classes) and the raw official layout."""
    if not has_cityscapes_labels(dataset["name"], dataset["num_classes"]):
        raise InputError(
            f"--full-resolution scores Cityscapes models (7 or 19 classes); this one predicts "
            f"{dataset['num_classes']} {dataset['name']} classes"
        )
    if not cs.is_raw_layout(data):
        raise InputError(
            f"{data}: --full-resolution reads the official raw layout (leftImg8bit/, gtFine/, disparity/), "
            "not a prepared or MTAN copy"
        )


@torch.no_grad()
def evaluate_full_resolution(
    model: torch.nn.Module,
    dataset: dict,
    data: str | Path,
    split: str = "val",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    amp: bool | str = False,
    workers: int = 2,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> EvalResult:
    """Score ``model`` (whose checkpoint ``dataset`` entry is given) on a raw Cityscapes split at full size.

    Returns an :class:`EvalResult` whose ``segmentation``/``depth`` are the standard metrics at ground-truth
    resolution (a 7-class model against the official categories) and whose ``cityscapes`` holds the official
    scores (:class:`~crosstask_cli.cityscapes_scores.CityscapesScores`); iIoU only when every image has its
    ``*_gtFine_instanceIds.png``. ``workers`` threads read the next images while the model runs.
    """
    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.data.resize import resize_image

    data = Path(data)
    check_full_resolution(dataset, data)
    samples = cs.find_raw_samples(data, split)
    if not samples:
        raise DatasetError(f"{data}: no images in leftImg8bit/{split}/<city>/*_leftImg8bit.png")
    instance_files = [s.label.with_name(s.label.name.replace("_labelIds.png", "_instanceIds.png")) for s in samples]
    with_instances = all(f.is_file() for f in instance_files)
    scale = cs.disparity_scale(data)
    depth_kind = dataset["depth"]["kind"]
    h, w = dataset["height"], dataset["width"]
    device = torch.device(device)
    precision = resolve_amp(amp, device)
    fmt = memory_format(device)
    scores = CityscapesScores(dataset["num_classes"])
    depth_metrics = DepthMetrics()
    has_seg, has_depth = "seg" in model.config.tasks, "depth" in model.config.tasks
    if on_total:
        on_total(len(samples))

    def load(i: int):
        rgb, label_ids, depth = cs.read_raw_sample(samples[i], depth_kind, scale)
        inst = cs.read_instances(instance_files[i], label_ids.shape) if with_instances else None
        return resize_image(rgb, h, w), label_ids, inst, depth

    def run(batch: list) -> None:
        x = normalise(torch.from_numpy(np.stack([b[0] for b in batch]))).to(device).contiguous(memory_format=fmt)
        with autocast(device, precision):
            pred = model(x, direct_only=True)
        for i, (_, label_ids, inst, depth) in enumerate(batch):
            size = label_ids.shape
            if pred.seg is not None:
                scores.update(upsampled_class_ids(pred.seg[i], size), label_ids, inst)
            if pred.depth is not None:
                up = torch.from_numpy(upsampled_map(pred.depth[i, 0], size))
                depth_metrics.update(up[None, None], torch.from_numpy(depth)[None, None])
            if progress:
                progress(1)

    was_training = model.training
    model.to(device, memory_format=fmt)
    model.eval()
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool:
            pending: deque = deque(pool.submit(load, i) for i in range(min(len(samples), 2 * batch_size)))
            nxt = len(pending)
            batch: list = []
            while pending:
                item = pending.popleft().result()
                if nxt < len(samples):
                    pending.append(pool.submit(load, nxt))
                    nxt += 1
                batch.append(item)
                if len(batch) == batch_size:
                    run(batch)
                    batch = []
            if batch:
                run(batch)
    finally:
        model.train(was_training)
    official = scores.compute() if has_seg else None
    seg = scores.cm.compute() if has_seg else {}
    return EvalResult(
        protocol="standard",
        split=split,
        num_images=len(samples),
        metrics={"seg": seg, "depth": depth_metrics.compute() if has_depth else {}},
        dataset=dataset["name"],
        depth_kind=depth_kind,
        data=str(data),
        precision=precision,
        tasks=[t for t in model.config.tasks if t in ("seg", "depth")],
        cityscapes=official,
    )
