"""Reference weights to a crosstask checkpoint: ``crosstask import-weights`` (and :func:`import_reference_weights`).

A state dict saved from MTAN's published SegNet code, or from the original cross-task project's AdaMT-Net, becomes a
checkpoint (format v1, weights only) of the matching crosstask model that ``eval``, ``predict``, ``export`` and
``info`` accept. The dataset it is described with is the one given (prepared, or MTAN's preprocessed layout,
prepared at the dataset's size as ``eval`` would); its classes must be the head's. MTAN (and the original project on
MTAN's preprocessed arrays) trains on RGB in [0, 1] without normalisation, so the model is built with
``input_space="unit"`` by default and undoes crosstask's ImageNet normalisation itself; ``input_space="imagenet"``
is for weights trained on ImageNet-normalised images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from crosstask_cli.errors import ConfigError, InputError

_HEAD = re.compile(r"^(?:module\.)?pred_task(\d+)\.1\.weight$")
_ADAMT_W = "decoder_segmt.dec_block4.W"  # B×32×H×W: the input size AdaMT-Net was built for


@dataclass
class ImportResult:
    path: Path
    arch: str
    tasks: tuple[str, ...]
    num_classes: int
    parameters: int
    skipped: dict  # what the reference held beyond the network (MTAN: logsigma)


def read_state_dict(path: Path) -> dict:
    """A state dict from ``path``: the file's dict itself, or its ``state_dict`` / ``model`` entry (weights only)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such weights file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: not a weights-only PyTorch file ({text})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise InputError(f"{path}: expected a state dict (parameter names to tensors)")
    return obj


def import_reference_weights(
    weights: str | Path,
    out: str | Path,
    data: str | Path,
    source: str = "mtan",
    arch: str | None = None,
    force: bool = False,
    input_space: str = "unit",
    attention_position: int = 0,
) -> ImportResult:
    """Write ``out``, a crosstask checkpoint of ``weights`` (saved by ``source``) described with the dataset at
    ``data``. ``arch`` (mtan): segnet-mtan or segnet (default: segnet-mtan when the file has attention modules);
    adamt-net weights make an adamt-net model. ``input_space``: what the weights were trained on (module docstring).
    ``attention_position``: AdaMT-Net's batch position whose attention maps are taken
    (:func:`~crosstask_cli.models.reference.load_reference_weights`)."""
    from crosstask_cli.data.datasets import dataset_for_layout
    from crosstask_cli.data.prepare import check_compatible, detect_layout, resolve_data
    from crosstask_cli.data.prepared import read_meta
    from crosstask_cli.engine.checkpoint import load_checkpoint, save_checkpoint
    from crosstask_cli.errors import CheckpointError
    from crosstask_cli.models.network import CrossTaskNet, ModelConfig, count_trainable_parameters
    from crosstask_cli.models.reference import SOURCES, load_reference_weights
    from crosstask_cli.outputs import check_output_file

    if source not in SOURCES:
        raise ConfigError(f"--source must be one of {', '.join(SOURCES)}, got {source!r}")
    if source == "adamt-net" and arch not in (None, "adamt-net"):
        raise ConfigError(f"--source adamt-net makes an adamt-net model, not --arch {arch}")
    weights, out, data = Path(weights), Path(out), Path(data)
    check_output_file(out, "--out", {"FILE": weights, "--data": data})
    if out.exists():
        if not force:
            raise FileExistsError(f"--out {out} already exists; pass --force to replace it")
        try:
            load_checkpoint(out)
        except CheckpointError:
            raise ConfigError(f"--out {out} is not a crosstask checkpoint; --force replaces only what crosstask "
                              "made: remove it yourself or choose another file") from None  # fmt: skip
    state = read_state_dict(weights)
    if source == "mtan":
        tasks, num_classes, arch, input_size = _describe_mtan(weights, state, arch)
    else:
        tasks, num_classes, arch, input_size = _describe_adamt(weights, state)
    layout = detect_layout(data)
    if layout == "prepared":
        meta = read_meta(data)
        prepared = data
    else:
        info = dataset_for_layout(layout)
        prepared = resolve_data(info.name, data, *info.size, num_classes)
        meta = read_meta(prepared)
    check_compatible(meta, num_classes, None, prepared)
    lacking = [t for t in tasks if t not in meta.tasks]
    if lacking:
        raise InputError(f"{prepared}: the weights predict {', '.join(lacking)}, which the dataset has no targets for")
    model = CrossTaskNet(ModelConfig(num_classes=num_classes, tasks=tasks, transfer=False, arch=arch,
                                     input_size=input_size, input_space=input_space))  # fmt: skip
    skipped = load_reference_weights(model, state, source=source, attention_position=attention_position)
    from crosstask_cli.data.dataset import normalisation

    payload = {
        "model_config": model.config.to_dict(),
        "dataset": {"name": meta.dataset, "num_classes": meta.num_classes, "class_names": meta.class_names,
                    "palette": meta.palette, "ignore_index": meta.ignore_index, "depth": meta.depth,
                    "height": meta.height, "width": meta.width, "normalisation": normalisation()},
        "model": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "train_config": {},  # not trained by crosstask: "imported" says where it comes from
        "imported": {"source": source, "file": str(weights.resolve()), "data": str(Path(prepared).resolve()),
                     **{k: v.tolist() if hasattr(v, "tolist") else v for k, v in skipped.items()}},
        "epoch": 0,
        "step": 0,
        "metrics": {},
    }  # fmt: skip
    save_checkpoint(out, payload)
    return ImportResult(out, arch, tasks, num_classes, count_trainable_parameters(model), skipped)


def _describe_mtan(weights: Path, state: dict, arch: str | None) -> tuple[tuple[str, ...], int, str, None]:
    """(tasks, classes, arch, input size) of an MTAN SegNet state dict, from its heads and attention modules."""
    from crosstask_cli.models.reference import MTAN_TASKS

    heads = sorted(int(m.group(1)) for k in state if (m := _HEAD.match(k)))
    if heads not in ([1, 2], [1, 2, 3]):
        raise InputError(f"{weights}: not an MTAN SegNet state dict (expected pred_task1…2 or …3 heads, found "
                         f"{[f'pred_task{h}' for h in heads] or 'none'})")  # fmt: skip
    num_classes = int(state[next(k for k in state if _HEAD.match(k) and _HEAD.match(k).group(1) == "1")].shape[0])
    has_attention = any(k.removeprefix("module.").startswith("encoder_att.") for k in state)
    return MTAN_TASKS[: len(heads)], num_classes, arch or ("segnet-mtan" if has_attention else "segnet"), None


def _describe_adamt(weights: Path, state: dict) -> tuple[tuple[str, ...], int, str, tuple[int, int]]:
    """(tasks, classes, arch, input size) of the original project's AdaMT-Net state dict: its decoders, the
    segmentation head's channels and the size of its last attention maps."""
    from crosstask_cli.models.reference import ADAMT_DECODERS

    state = {k.removeprefix("module."): v for k, v in state.items()}
    tasks = tuple(t for d, t in ADAMT_DECODERS.items() if any(k.startswith(d + ".") for k in state))
    head, w = state.get("decoder_segmt.final_conv.weight"), state.get(_ADAMT_W)
    if tasks[:2] != ("seg", "depth") or head is None or w is None or w.dim() != 4:
        raise InputError(f"{weights}: not an AdaMT-Net state dict of the original project (expected decoder_segmt "
                         f"and decoder_depth with final_conv and dec_block4.W, found decoders "
                         f"{', '.join(tasks) or 'none'})")  # fmt: skip
    return tasks, int(head.shape[0]), "adamt-net", (int(w.shape[-2]), int(w.shape[-1]))
