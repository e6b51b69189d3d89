"""Training configuration: the method's flags with the paper's per-dataset defaults."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from crosstask_cli.errors import ConfigError
from crosstask_cli.losses import CONSISTENCY, DEPTH_LOSSES, TDEPTH_LOSSES, TSEG_LOSSES
from crosstask_cli.models.encoder import RESNET_DEPTHS

DATASETS = ("cityscapes", "nyu", "synthetic")
OPTIMIZERS = ("adam", "sgd")
SELECT_METRICS = {"loss": "min", "miou": "max", "pixel_acc": "max", "abs_err": "min", "rel_err": "min"}

# The reference implementation's flag table (Cityscapes / NYUv2); synthetic follows Cityscapes with a
# schedule short enough for a CPU.
PAPER_DEFAULTS: dict[str, dict] = {
    "cityscapes": dict(
        height=128,
        width=256,
        epochs=250,
        batch_size=8,
        scheduler_step_size=80,
        alpha=0.01,
        gamma=0.01,
        num_classes=7,
        data="data/cityscapes",
    ),
    "nyu": dict(
        height=288,
        width=384,
        epochs=100,
        batch_size=6,
        scheduler_step_size=60,
        alpha=1e-4,
        gamma=1e-4,
        num_classes=13,
        data="data/nyu",
    ),
    "synthetic": dict(
        height=128,
        width=256,
        epochs=30,
        batch_size=8,
        scheduler_step_size=20,
        alpha=0.01,
        gamma=0.01,
        num_classes=7,
        data="data/synthetic",
    ),
}


@dataclass
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory."""

    dataset: str = "cityscapes"
    data: str | None = None
    run_dir: str | None = None
    height: int = 128
    width: int = 256
    epochs: int = 250
    enc_layers: int = 34
    pretrained: bool = False
    encoder_weights: str | None = None
    batch_size: int = 8
    optimizer: str = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)
    scheduler_step_size: int = 80
    scheduler_gamma: float = 0.5
    alpha: float = 0.01
    gamma: float = 0.01
    label_smoothing: float = 0.0
    lp: str = "l1"
    tdep_loss: str = "l1"
    tseg_loss: str = "ce"
    ttnet_batch_norm: bool = False
    wider_ttnet: bool = False
    weighting: str = "fixed"
    gradnorm_alpha: float = 0.16
    gradnorm_params: str = "conv"
    dwa_temperature: float = 2.0
    tasks: tuple[str, ...] = ("seg", "depth")
    consistency: str = "xtsc"
    num_classes: int = 7
    depth: str = "inverse"
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    amp: bool = False
    compile: bool = False
    max_steps_per_epoch: int | None = None
    max_val_batches: int | None = None
    eval_batch_size: int = 8
    select_metric: str = "loss"
    skip_nonfinite: int = 0
    save_every_steps: int | None = None
    sync_bn: bool = False
    synthetic_train: int = 400
    synthetic_val: int = 100
    extra: dict = field(default_factory=dict)

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> TrainConfig:
        """The paper's defaults for ``dataset`` with ``overrides`` (None values are ignored) applied."""
        if dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
        values = {**PAPER_DEFAULTS[dataset], **{k: v for k, v in overrides.items() if v is not None}}
        cfg = cls(dataset=dataset, **values)
        cfg.validate()
        return cfg

    def replace(self, **changes) -> TrainConfig:
        cfg = replace(self, **{k: v for k, v in changes.items() if v is not None})
        cfg.validate()
        return cfg

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise ConfigError(msg)

        self.tasks = tuple(self.tasks)
        if not self.tasks or set(self.tasks) - {"seg", "depth"} or len(set(self.tasks)) != len(self.tasks):
            bad(f"--tasks must be seg,depth, seg or depth, got {','.join(self.tasks)}")
        if self.consistency not in CONSISTENCY:
            bad(f"--consistency must be one of {', '.join(CONSISTENCY)}, got {self.consistency!r}")
        if len(self.tasks) == 1:
            self.consistency = "none"  # a single task has nothing to be consistent with
        if self.dwa_temperature <= 0:
            bad(f"--dwa-temperature must be positive, got {self.dwa_temperature}")

        if self.dataset not in DATASETS:
            bad(f"unknown dataset {self.dataset!r}; choose from {', '.join(DATASETS)}")
        if self.enc_layers not in RESNET_DEPTHS:
            bad(f"--enc-layers must be one of {', '.join(map(str, RESNET_DEPTHS))}, got {self.enc_layers}")
        for name in ("epochs", "batch_size", "height", "width", "scheduler_step_size", "eval_batch_size"):
            if int(getattr(self, name)) < 1:
                bad(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.height % 8 or self.width % 8:
            bad(
                f"--height and --width must be multiples of 8 (the TaskTransferNet pools three times), got {self.height}×{self.width}"
            )
        if self.lp not in DEPTH_LOSSES:
            bad(f"--lp must be one of {', '.join(DEPTH_LOSSES)}, got {self.lp!r}")
        if self.tdep_loss not in TDEPTH_LOSSES:
            bad(f"--tdep-loss must be one of {', '.join(TDEPTH_LOSSES)}, got {self.tdep_loss!r}")
        if self.tseg_loss not in TSEG_LOSSES:
            bad(f"--tseg-loss must be one of {', '.join(TSEG_LOSSES)}, got {self.tseg_loss!r}")
        from crosstask_cli.weighting import weighting_names

        if self.weighting not in weighting_names():
            bad(f"--weighting must be one of {', '.join(weighting_names())}, got {self.weighting!r}")
        if self.optimizer not in OPTIMIZERS:
            bad(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        from crosstask_cli.weighting import GRADNORM_PARAMS

        if self.gradnorm_params not in GRADNORM_PARAMS:
            bad(f"--gradnorm-params must be one of {', '.join(GRADNORM_PARAMS)}, got {self.gradnorm_params!r}")
        if self.select_metric not in SELECT_METRICS:
            bad(f"--select-metric must be one of {', '.join(SELECT_METRICS)}, got {self.select_metric!r}")
        needs = {"miou": "seg", "pixel_acc": "seg", "abs_err": "depth", "rel_err": "depth"}.get(self.select_metric)
        if needs is not None and needs not in self.tasks:
            bad(f"--select-metric {self.select_metric} needs the {needs} task, but --tasks is {','.join(self.tasks)}")
        if self.lr <= 0:
            bad(f"--lr must be positive, got {self.lr}")
        if not 0 < self.scheduler_gamma <= 1:
            bad(f"--scheduler-gamma must be in (0, 1], got {self.scheduler_gamma}")
        for name in ("alpha", "gamma", "label_smoothing"):
            if not 0 <= getattr(self, name) <= 1:
                bad(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        if self.depth not in ("inverse", "metric"):
            bad(f"--depth must be inverse or metric, got {self.depth!r}")
        if self.dataset == "nyu" and self.num_classes != 13:
            bad(f"NYUv2 has 13 classes, got --num-classes {self.num_classes}")
        if self.dataset != "nyu" and self.num_classes not in (7, 19):
            bad(f"Cityscapes-style data has 7 or 19 classes, got --num-classes {self.num_classes}")
        if self.workers < 0:
            bad(f"--workers must be ≥ 0, got {self.workers}")
        if self.save_every_steps is not None and self.save_every_steps < 1:
            bad("--save-every-steps must be ≥ 1")
        if self.skip_nonfinite < 0:
            bad("--skip-nonfinite must be ≥ 0")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            bad("--max-steps-per-epoch must be ≥ 1")
        if self.device not in ("auto", "cpu", "mps") and not self.device.startswith("cuda"):
            bad(f"--device must be auto, cpu, cuda[:N] or mps, got {self.device!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["tasks"] = list(self.tasks)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "tasks" in d:
            d["tasks"] = tuple(d["tasks"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: not a valid crosstask config ({exc})") from exc

    def save(self, path: Path) -> None:
        from crosstask_cli.atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))
