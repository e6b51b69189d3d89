"""Checkpoint files (format v1, README "Formats"): one ``torch.save`` dict, written atomically, loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from crosstask_cli.atomic import atomic_write
from crosstask_cli.errors import CheckpointError
from crosstask_cli.models.network import state_dict_mismatch

__all__ = ["load_checkpoint", "model_from_checkpoint", "save_checkpoint", "state_dict_mismatch"]

FORMAT = "crosstask-checkpoint"
VERSION = 1


def save_checkpoint(path: Path, payload: dict) -> None:
    from crosstask_cli import __version__

    payload = {"format": FORMAT, "version": VERSION, "created_by": f"crosstask {__version__}", **payload}
    atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate a crosstask checkpoint. Never unpickles code (weights_only=True)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.pt)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    with path.open("rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save's zip, or a legacy pickle
        raise CheckpointError(f"{path}: not a PyTorch checkpoint file (it starts with {magic!r})")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling errors come in many types
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects other than tensors and plain data "
                f"(possibly code); crosstask only loads weights-only checkpoints ({text})"
            ) from exc
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {text}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a crosstask checkpoint (no 'format': '{FORMAT}' entry)")
    version = ckpt.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this crosstask supports ({VERSION}); upgrade crosstask"
        )
    for key in ("model_config", "dataset", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint lacks the {key!r} entry")
    return ckpt


def model_from_checkpoint(ckpt: dict, where: str | Path = "checkpoint"):
    """Rebuild the CrossTaskNet stored in a loaded checkpoint (eval mode, on CPU). A model description that does
    not build, or weights that do not fit it, are one :class:`CheckpointError` naming ``where`` (the file)."""
    from crosstask_cli.models.network import CrossTaskNet, ModelConfig

    if not isinstance(ckpt["model_config"], dict):
        raise CheckpointError(f"{where}: its 'model_config' entry is not a model description")
    config = dict(ckpt["model_config"])
    # crosstask 0.1.0 wrote no such key; its decoders upsampled with align_corners=False and were trained so.
    config.setdefault("decoder_align_corners", False)
    try:
        model = CrossTaskNet(ModelConfig(**config))
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{where}: its model description cannot be built ({exc})") from exc
    if not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{where}: its 'model' entry is not a state dict")
    mismatch = state_dict_mismatch(model.state_dict(), ckpt["model"])
    if mismatch:
        raise CheckpointError(f"{where}: its weights do not match its model description ({mismatch})")
    bad = next((k for k, v in ckpt["model"].items() if v.is_floating_point() and not bool(torch.isfinite(v).all())),
               None)  # fmt: skip
    if bad is not None:
        raise CheckpointError(f"{where}: its weights are not finite ({bad} holds NaN or inf); it cannot predict")
    model.load_state_dict(ckpt["model"])
    return model.eval()
