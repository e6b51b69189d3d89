"""Image corruptions for the out-of-distribution check (``crosstask eval --corrupt KIND[:SEVERITY]``).

Applied to the uint8 RGB image before normalisation, deterministically per image (seeded by the image's index),
at severities 1 (mild) to 5 (strong). Parameters follow the spirit of ImageNet-C (Hendrycks & Dietterich, 2019),
scaled for any image size (blur radius in proportion to the image width):

- ``noise``: additive Gaussian noise, σ = 0.04, 0.06, 0.08, 0.10, 0.14 (of the 0..1 range);
- ``blur``: Gaussian blur, σ = 0.4, 0.7, 1.0, 1.5, 2.0 % of the width (in pixels);
- ``fog``: uniform haze towards a light grey, x ← (1 − a)·x + a·0.8 with a = 0.2, 0.3, 0.4, 0.5, 0.6;
- ``brightness``: HSV value + 0.1, 0.2, 0.3, 0.4, 0.5 (clipped);
- ``jpeg``: JPEG re-encoding at quality 25, 18, 15, 10, 7.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crosstask_cli.errors import ConfigError

SEVERITIES = {
    "noise": (0.04, 0.06, 0.08, 0.10, 0.14),
    "blur": (0.004, 0.007, 0.010, 0.015, 0.020),
    "fog": (0.2, 0.3, 0.4, 0.5, 0.6),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg": (25, 18, 15, 10, 7),
}
KINDS = tuple(SEVERITIES)


@dataclass(frozen=True)
class Corruption:
    """One corruption kind at one severity (1..5); ``corruption(image, index)`` returns a corrupted copy of an
    H×W×3 uint8 RGB image, the same for the same index and seed."""

    kind: str
    severity: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in SEVERITIES:
            raise ConfigError(f"corruption must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if not 1 <= self.severity <= 5:
            raise ConfigError(f"corruption severity must be 1..5, got {self.severity}")

    @classmethod
    def parse(cls, spec: str, seed: int = 0) -> Corruption:
        """``KIND`` or ``KIND:SEVERITY`` (default severity 3)."""
        kind, _, severity = spec.partition(":")
        try:
            level = int(severity) if severity else 3
        except ValueError:
            raise ConfigError(f"--corrupt {spec!r}: the severity after ':' must be an integer 1..5") from None
        return cls(kind.strip().lower(), level, seed)

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.severity}"

    def __call__(self, image: np.ndarray, index: int = 0) -> np.ndarray:
        import cv2

        p = SEVERITIES[self.kind][self.severity - 1]
        if self.kind == "jpeg":
            ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(p)])
            if not ok:
                raise RuntimeError("OpenCV could not JPEG-encode the image")
            return np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
        x = image.astype(np.float32) / 255.0
        if self.kind == "noise":
            rng = np.random.default_rng([self.seed, index])
            x = x + rng.normal(0.0, p, x.shape).astype(np.float32)
        elif self.kind == "blur":
            sigma = max(p * image.shape[1], 0.3)
            x = cv2.GaussianBlur(x, (0, 0), sigma)
        elif self.kind == "fog":
            x = (1 - p) * x + p * 0.8
        elif self.kind == "brightness":
            hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)
            hsv[..., 2] = np.clip(hsv[..., 2] + p, 0, 1)
            x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
