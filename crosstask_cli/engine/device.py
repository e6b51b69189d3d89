"""Device selection and the per-device speed settings (channels_last, AMP dtype, cudnn.benchmark)."""

from __future__ import annotations

import torch

from crosstask_cli.errors import DeviceUnavailableError


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' → cuda if available, else mps, else cpu. Raises with a clear message for an absent device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailableError(
            f"--device {name}: CUDA is not available on this machine (use --device cpu or auto)"
        )
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceUnavailableError(
            f"--device {name}: MPS is not available on this machine (use --device cpu or auto)"
        )
    return dev


def amp_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the device supports it, else fp16 (which then needs a GradScaler)."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor cores) and on CPU (oneDNN convolutions are faster in that layout; the README's
    performance section has the measurement); MPS keeps NCHW."""
    return torch.contiguous_format if device.type == "mps" else torch.channels_last
