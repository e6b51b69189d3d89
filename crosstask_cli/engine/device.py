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


AMP_MODES = ("auto", "off", "bf16", "fp16")
AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_LABELS = {"off": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast + GradScaler"}  # for people


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86: AVX512-BF16 or AMX tiles; Arm: the BF16 extension), as
    oneDNN needs for bf16 to be faster than fp32 rather than emulated."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None:
            try:
                if check():
                    return True
            except RuntimeError:
                pass
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo") as f:
                return any(line.startswith("Features") and " bf16" in line for line in f)
        except OSError:
            return False
    return False


def resolve_amp(mode: str | bool, device: torch.device, native_bf16: bool | None = None) -> str:
    """The precision a run uses: ``off`` (fp32), ``bf16`` or ``fp16``.

    ``auto``: bf16 on CUDA GPUs that support it and on CPUs with native bf16 (``native_bf16``, probed when None),
    fp32 elsewhere (MPS included). A forced mode is returned as given. ``True``/``False`` (earlier versions'
    boolean ``--amp``) mean ``auto``/``off``.
    """
    if isinstance(mode, bool):
        mode = "auto" if mode else "off"
    if mode not in AMP_MODES:
        from crosstask_cli.errors import ConfigError

        raise ConfigError(f"--amp must be one of {', '.join(AMP_MODES)}, got {mode!r}")
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "off"
    if device.type == "cpu":
        return "bf16" if (cpu_has_native_bf16() if native_bf16 is None else native_bf16) else "off"
    return "off"


def amp_dtype(mode: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None: fp32, no autocast)."""
    return AMP_DTYPES[mode]


def autocast(device: torch.device, mode: str):
    """``torch.autocast`` for a resolved precision (disabled for ``off``)."""
    dtype = AMP_DTYPES[mode]
    return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)


def configure_device(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA (tensor cores) and on CPU (oneDNN convolutions are faster in that layout; the README's
    performance section has the measurement); MPS keeps NCHW."""
    return torch.contiguous_format if device.type == "mps" else torch.channels_last
