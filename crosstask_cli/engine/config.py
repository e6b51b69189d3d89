"""Training configuration: one nested, frozen, keyword-only config, the single source of every `train` option.

Each field carries its CLI flag and help text; ``crosstask train`` derives its options from :data:`FIELDS`, and
``--set section.field=value`` reaches any field. Validation happens once, here, with messages naming the flag.
Per-dataset defaults are the paper's (:data:`PAPER_DEFAULTS`).

Python code may address fields flat by their keyword (``TrainConfig.for_dataset("nyu", lr=1e-3)``,
``cfg.replace(weighting="gradnorm")``: every keyword is unique) or nested (``cfg.optim.lr``).
``config.json`` and checkpoints store the nested form; flat files written by crosstask 0.1.0 still load.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosstask_cli.engine.records import SELECT_DIRECTION
from crosstask_cli.errors import ConfigError

DATASETS = ("cityscapes", "nyu", "synthetic")
OPTIMIZERS = ("adam", "sgd")

# The reference implementation's flag table (Cityscapes / NYUv2), by flat keyword; synthetic follows
# Cityscapes with a schedule short enough for a CPU.
PAPER_DEFAULTS: dict[str, dict] = {
    "cityscapes": dict(height=128, width=256, epochs=250, batch_size=8, scheduler_step_size=80, alpha=0.01,
                       gamma=0.01, num_classes=7, data="data/cityscapes"),
    "nyu": dict(height=288, width=384, epochs=100, batch_size=6, scheduler_step_size=60, alpha=1e-4, gamma=1e-4,
                num_classes=13, data="data/nyu"),
    "synthetic": dict(height=128, width=256, epochs=30, batch_size=8, scheduler_step_size=20, alpha=0.01,
                      gamma=0.01, num_classes=7, data="data/synthetic"),
}  # fmt: skip


def option(default: Any, help: str, *, flag: str | None = "", kwarg: str | None = None, cli_type: Any = None):
    """A config field with its CLI flag ('' = derived from the name, None = no flag) and help text.

    ``kwarg``: the flat keyword (and 0.1.0 config.json key) when it differs from the field name; ``cli_type``:
    how the CLI reads it when that differs from the field's type (paths, comma lists)."""
    meta = {"help": help, "flag": flag, "kwarg": kwarg, "cli_type": cli_type}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    name: str = option("cityscapes", "cityscapes | nyu | synthetic", flag=None, kwarg="dataset")
    root: str | None = option(
        None,
        "Dataset directory (raw, MTAN or prepared). Default: data/<dataset>; synthetic data is generated there if missing.",
        flag="--data",
        kwarg="data",
        cli_type=Path,
    )
    height: int = option(128, "Input height, multiple of 8 (cityscapes 128, nyu 288).")
    width: int = option(256, "Input width, multiple of 8 (cityscapes 256, nyu 384).")
    depth: str = option("inverse", "Cityscapes depth encoding when preparing raw data: inverse (default) or metric.")
    workers: int = option(2, "DataLoader worker processes (2).")
    synthetic_train: int = option(400, "Scenes to generate for train when the synthetic set is missing (400).")
    synthetic_val: int = option(100, "Scenes to generate for val when the synthetic set is missing (100).")


@dataclass(frozen=True, kw_only=True)
class ModelOptions:
    enc_layers: int = option(34, "ResNet depth of the encoder: 18, 34 (default), 50, 101, 152.")
    num_classes: int = option(7, "Segmentation classes: cityscapes/synthetic 7 or 19, nyu 13.")
    pretrained: bool = option(
        False,
        "Start the encoder from torchvision's ImageNet weights, read from the local torch cache (never downloaded).",
    )
    encoder_weights: str | None = option(
        None, "Start the encoder from a local ResNet state dict (.pth) instead.", cli_type=Path
    )
    ttnet_batch_norm: bool = option(False, "Batch norm after every TaskTransferNet conv.")
    wider_ttnet: bool = option(False, "Double the TaskTransferNet channels.")
    tasks: tuple[str, ...] = option(
        ("seg", "depth"),
        "seg,depth (default), or seg / depth alone for a single-task baseline (one decoder, no TaskTransferNets).",
        cli_type=str,
    )


@dataclass(frozen=True, kw_only=True)
class LossOptions:
    consistency: str = option(
        "xtsc",
        "xtsc (default, the method: transferred predictions against the detached direct ones), xtc (against the "
        "ground truth, as the original's xtc: transferred depth with the --lp loss, transferred seg with plain "
        "cross-entropy; --tdep-loss, --tseg-loss and --label-smoothing do not apply) or none (plain multi-task "
        "learning, no TaskTransferNets).",
    )
    alpha: float = option(
        0.01,
        "Weight of the transferred-depth loss in the segmentation task loss, λ1 (cityscapes 0.01, nyu 1e-4).",
    )
    gamma: float = option(
        0.01,
        "Weight of the transferred-segmentation loss in the depth task loss, λ2 (cityscapes 0.01, nyu 1e-4).",
    )
    label_smoothing: float = option(0.0, "Label smoothing ε of the transferred-segmentation loss (0).")
    lp: str = option("l1", "Direct depth loss: l1 (default), mse, logl1, smoothl1.")
    tdep_loss: str = option("l1", "Transferred depth loss against the detached direct depth: l1 (default) or ssim.")
    tseg_loss: str = option(
        "ce",
        "Transferred segmentation loss against the argmax of the detached direct seg: ce (default; label-smoothed "
        "cross-entropy) or kl (KL from the smoothed one-hot, the original's definition); soft-kl distils the direct "
        "softmax instead (an extension). All are summed over labelled pixels and divided by all pixels, as the "
        "original.",
    )


@dataclass(frozen=True, kw_only=True)
class OptimOptions:
    epochs: int = option(250, "Number of epochs (cityscapes 250, nyu 100, synthetic 30).")
    batch_size: int = option(8, "Batch size (cityscapes 8, nyu 6).")
    optimizer: str = option("adam", "adam (default, the paper's) or sgd (momentum 0.9, the original's alternative).")
    lr: float = option(1e-4, "Initial learning rate (1e-4).")
    betas: tuple[float, float] = option((0.9, 0.99), "Adam betas (0.9 0.99); unused by sgd.")
    scheduler_step_size: int = option(80, "StepLR step in epochs (cityscapes 80, nyu 60).")
    scheduler_gamma: float = option(0.5, "StepLR decay factor (0.5).")
    weighting: str = option(
        "fixed",
        "Task weighting. From loss values: fixed (default; the plain sum), uncertainty (Kendall 2018), dwa (Liu "
        "2019), rlw (Lin 2022), famo (Liu 2023). From per-task gradients at the shared encoder: gradnorm (Chen "
        "2018), mgda (Sener 2018), pcgrad (Yu 2020), cagrad (Liu 2021), imtl (IMTL-G, Liu 2021), nash-mtl (Navon "
        "2022), aligned-mtl (Senushkin 2023), db-mtl (Lin 2023), upgrad (Quinton 2024), fairgrad (Ban 2024).",
    )
    grad_space: str = option(
        "features",
        "Where gradient methods (mgda … fairgrad, not gradnorm) take the per-task gradients: features (default; "
        "the encoder's outputs, backpropagating the encoder once) or encoder (its parameters: exact, every task "
        "backpropagated through the encoder).",
    )
    cagrad_c: float = option(0.4, "CAGrad's c (0.4, the paper's for NYUv2 and CityScapes).")
    nash_update_every: int = option(1, "Nash-MTL: solve for new weights every N steps (1, the paper's).")
    nash_iters: int = option(20, "Nash-MTL: iterations of its convex-concave solver per update (20).")
    fairgrad_alpha: float = option(1.0, "FairGrad's α (1.0, the official scripts' default).")
    famo_lr: float = option(0.025, "FAMO: learning rate of its task logits (0.025, the paper's).")
    famo_decay: float = option(0.01, "FAMO: weight decay γ of its task logits (0.01, the official scripts').")
    dbmtl_beta: float = option(0.9, "DB-MTL: moving-average factor β of the gradient norms (0.9).")
    dbmtl_beta_sigma: float = option(0.0, "DB-MTL: β decays as β/k^σ over steps k (σ = 0).")
    max_grad_norm: float = option(
        1.0,
        "nash-mtl, cagrad, famo and fairgrad clip the shared encoder's gradient to this norm after each step, as "
        "their official code does (1.0); 0 disables.",
    )
    gradnorm_alpha: float = option(0.16, "GradNorm asymmetry α (0.16, the original's; the GradNorm paper used 1.5).")
    gradnorm_params: str = option(
        "conv",
        "Where GradNorm measures task gradient norms: conv (default, as the original: the encoder's last conv "
        "weight, layer4[-1].conv2) or block (every parameter of the last layer4 block). Its weights always train "
        "with their own Adam (betas 0.9/0.999, the initial lr, no schedule).",
    )
    dwa_temperature: float = option(2.0, "Temperature T of --weighting dwa (2).")


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    run_dir: str | None = option(None, "Run directory (default runs/<dataset>-<timestamp>).", cli_type=Path)
    device: str = option("auto", "auto (default), cpu, cuda, cuda:N or mps.")
    seed: int = option(0, "Random seed (initialisation, shuffling, augmentation).")
    amp: str = option(
        "auto",
        "Precision: auto (default: bf16 autocast on CUDA GPUs that support it and on CPUs with native bf16, e.g. "
        "AVX512-BF16/AMX; fp32 elsewhere), off (fp32), bf16, or fp16 (with a GradScaler). Losses and metrics stay "
        "fp32. config.json records the precision used.",
    )
    compile: bool = option(False, "torch.compile the model (GPU).")
    max_steps_per_epoch: int | None = option(None, "Quick runs: cap the training batches per epoch.")
    max_val_batches: int | None = option(None, "Quick runs: cap the validation batches per epoch.")
    eval_batch_size: int = option(8, "Validation batch size (8).")
    select_metric: str = option(
        "loss", "best.pt by: loss (default, as the original), miou, pixel_acc, abs_err, rel_err."
    )
    skip_nonfinite: int = option(0, "Tolerate up to N batches with a non-finite loss (skipped) before stopping (0).")
    save_every_steps: int | None = option(
        None,
        "Also write last.pt every N steps inside an epoch (long epochs on preemptible machines); --resume continues "
        "from that step.",
    )
    sync_bn: bool = option(
        False, "Multi-GPU (torchrun): synchronise BatchNorm statistics across processes (CUDA only)."
    )
    tensorboard: bool = option(
        False,
        "Also log to RUN/tensorboard/ (needs the tensorboard extra): every metrics-log scalar per epoch (losses, "
        "task weights, lr, validation metrics) and three validation panels; `tensorboard --logdir RUN` (or a "
        "sweep's OUT) shows them. metrics.csv stays the record.",
    )
    verify: bool = option(
        False,
        "Check every value of the prepared data before training (labels in range, depth finite and ≥ 0); by default "
        "only its format and a sample of values are checked.",
    )


SECTIONS: dict[str, type] = {
    "data": DataOptions,
    "model": ModelOptions,
    "loss": LossOptions,
    "optim": OptimOptions,
    "runtime": RuntimeOptions,
}


@dataclass(frozen=True)
class FieldInfo:
    """One row of the option table: where a setting lives and how the CLI spells it."""

    section: str
    name: str
    kwarg: str
    flag: str | None
    help: str
    type: Any  # the field's type, None removed from unions
    cli_type: Any
    optional: bool = False  # None is a valid value (``--set …=none`` means None only then)

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


def _strip_none(tp: Any) -> Any:
    """``int | None`` → ``int``: the CLI reads the value type; None means unset."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _field_table() -> dict[str, FieldInfo]:
    table = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            m = f.metadata
            kwarg = m["kwarg"] or f.name
            flag = "--" + f.name.replace("_", "-") if m["flag"] == "" else m["flag"]
            tp = _strip_none(hints[f.name])
            optional = type(None) in typing.get_args(hints[f.name])
            table[kwarg] = FieldInfo(section, f.name, kwarg, flag, m["help"], tp, m["cli_type"] or tp, optional)
    return table


FIELDS: dict[str, FieldInfo] = _field_table()
"""Every option by its flat keyword: the one table the CLI, ``--set`` and 0.1.0 config files map through."""
BY_PATH: dict[str, FieldInfo] = {f.path: f for f in FIELDS.values()}


def default_consistency(values: dict[str, Any]) -> str:
    """The consistency a config gets when none is given: the method's (xtsc) for two tasks, none for one (a single
    task has nothing to be consistent with; asking for consistency with one task is an error)."""
    tasks = values.get("tasks") or ModelOptions().tasks
    tasks = tuple(t.strip() for t in tasks.split(",")) if isinstance(tasks, str) else tuple(tasks)
    return LossOptions().consistency if len(set(tasks)) > 1 else "none"


def flag_of(kwarg: str) -> str:
    f = FIELDS[kwarg]
    return f.flag or f.kwarg


def parse_value(info: FieldInfo, text: str) -> Any:
    """A ``--set`` value in the field's type: numbers, true/false, comma lists for tuples; none/null for fields that
    may be unset (for the others, e.g. ``loss.consistency=none``, it is the string)."""
    t = text.strip()
    if t.lower() in ("none", "null") and (info.optional or info.type is not str):
        return None
    tp = info.type
    try:
        if tp is bool:
            if t.lower() in ("true", "1", "yes", "on"):
                return True
            if t.lower() in ("false", "0", "no", "off"):
                return False
            raise ValueError(t)
        if tp is int:
            return int(t)
        if tp is float:
            return float(t)
        if typing.get_origin(tp) is tuple:
            items = [s.strip() for s in t.strip("()[]").split(",") if s.strip()]
            item_type = typing.get_args(tp)[0]
            return tuple(item_type(s) for s in items)
    except ValueError:
        raise ConfigError(f"--set {info.path}={text}: not a valid {getattr(tp, '__name__', tp)}") from None
    return t


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory. Validated when built."""

    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        model = self.model
        if not isinstance(model.tasks, tuple):
            model = dataclasses.replace(model, tasks=tuple(model.tasks))
        if not isinstance(self.optim.betas, tuple):
            object.__setattr__(self, "optim", dataclasses.replace(self.optim, betas=tuple(self.optim.betas)))
        object.__setattr__(self, "model", model)
        if isinstance(self.runtime.amp, bool):  # configs of earlier versions stored a boolean --amp
            amp = "auto" if self.runtime.amp else "off"
            object.__setattr__(self, "runtime", dataclasses.replace(self.runtime, amp=amp))
        self._validate()

    # --- building ----------------------------------------------------------------------------------------
    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from flat keywords (unknown ones are an error)."""
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(sorted(unknown))}")
        sections: dict[str, dict] = {s: {} for s in SECTIONS}
        for k, v in values.items():
            sections[FIELDS[k].section][FIELDS[k].name] = v
        return cls(**{s: SECTIONS[s](**kw) for s, kw in sections.items()})

    @classmethod
    def for_dataset(cls, dataset: str, **overrides: Any) -> TrainConfig:
        """The paper's defaults for ``dataset`` with flat ``overrides`` (None values are ignored) applied."""
        if dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
        given = {k: v for k, v in overrides.items() if v is not None}
        values = {**PAPER_DEFAULTS[dataset], **given, "dataset": dataset}
        if "consistency" not in given:
            values["consistency"] = default_consistency(values)
        return cls.from_flat(values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with flat keyword changes (None values are ignored), validated."""
        changes = {k: v for k, v in changes.items() if v is not None}
        flat = {**self.flat(), **changes}
        if "tasks" in changes and "consistency" not in changes and flat["consistency"] == LossOptions().consistency:
            flat["consistency"] = default_consistency(flat)
        return TrainConfig.from_flat(flat)

    def with_assignments(self, assignments: list[str]) -> TrainConfig:
        """Apply ``section.field=value`` strings (``--set``), e.g. ``optim.lr=3e-4``, ``model.tasks=seg``."""
        changes = {}
        for a in assignments:
            path, sep, value = a.partition("=")
            path = path.strip()
            if not sep or path not in BY_PATH:
                known = ", ".join(sorted(BY_PATH))
                raise ConfigError(f"--set {a!r}: expected SECTION.FIELD=VALUE with a field among: {known}")
            info = BY_PATH[path]
            changes[info.kwarg] = parse_value(info, value)
        flat = self.flat()
        flat.update(changes)
        if "consistency" not in changes and flat["consistency"] == LossOptions().consistency:
            flat["consistency"] = default_consistency(flat)
        return TrainConfig.from_flat(flat)

    # --- views -------------------------------------------------------------------------------------------
    def flat(self) -> dict[str, Any]:
        """Every setting by its flat keyword."""
        return {k: getattr(getattr(self, f.section), f.name) for k, f in FIELDS.items()}

    def to_dict(self) -> dict:
        """The nested JSON form (tuples as lists)."""

        def plain(v: Any) -> Any:
            return list(v) if isinstance(v, tuple) else v

        return {s: {k: plain(v) for k, v in asdict(getattr(self, s)).items()} for s in SECTIONS}

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Nested (this version) or flat (crosstask 0.1.0's config.json and checkpoints) → validated config."""
        if not isinstance(d, dict):
            raise ConfigError("a config must be a JSON object")
        return cls.from_flat(flat_config(d, strict=True))

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

    # --- validation, once, in field terms ----------------------------------------------------------------
    def _validate(self) -> None:
        # imported here: the CLI reads the option table (this module) without loading torch
        from crosstask_cli.engine.device import AMP_MODES
        from crosstask_cli.losses import CONSISTENCY, DEPTH_LOSSES, TDEPTH_LOSSES, TSEG_LOSSES
        from crosstask_cli.models.encoder import RESNET_DEPTHS
        from crosstask_cli.weighting import GRAD_SPACES, GRADNORM_PARAMS, weighting_class, weighting_names

        d, m, lo, o, r = self.data, self.model, self.loss, self.optim, self.runtime

        def bad(msg: str) -> None:
            raise ConfigError(msg)

        def one_of(kwarg: str, value: Any, choices) -> None:
            if value not in choices:
                bad(f"{flag_of(kwarg)} must be one of {', '.join(map(str, choices))}, got {value!r}")

        if d.name not in DATASETS:
            bad(f"unknown dataset {d.name!r}; choose from {', '.join(DATASETS)}")
        if not m.tasks or set(m.tasks) - {"seg", "depth"} or len(set(m.tasks)) != len(m.tasks):
            bad(f"--tasks must be seg,depth, seg or depth, got {','.join(m.tasks)}")
        one_of("consistency", lo.consistency, CONSISTENCY)
        if len(m.tasks) == 1 and lo.consistency != "none":
            bad(
                f"--consistency {lo.consistency} needs both tasks; with --tasks {m.tasks[0]} there is nothing to be "
                "consistent with (leave --consistency out, or give none)"
            )
        if o.dwa_temperature <= 0:
            bad(f"--dwa-temperature must be positive, got {o.dwa_temperature}")
        for kwarg in ("cagrad_c", "fairgrad_alpha", "famo_lr", "famo_decay", "max_grad_norm", "dbmtl_beta_sigma"):
            if getattr(o, kwarg) < 0:
                bad(f"{flag_of(kwarg)} must be ≥ 0, got {getattr(o, kwarg)}")
        if not 0 <= o.dbmtl_beta < 1:
            bad(f"--dbmtl-beta must be in [0, 1), got {o.dbmtl_beta}")
        for kwarg in ("nash_update_every", "nash_iters"):
            if not isinstance(getattr(o, kwarg), int) or getattr(o, kwarg) < 1:
                bad(f"{flag_of(kwarg)} must be a positive integer, got {getattr(o, kwarg)}")
        if m.enc_layers not in RESNET_DEPTHS:
            bad(f"--enc-layers must be one of {', '.join(map(str, RESNET_DEPTHS))}, got {m.enc_layers}")
        for kwarg in ("epochs", "batch_size", "height", "width", "scheduler_step_size", "eval_batch_size"):
            f = FIELDS[kwarg]
            value = getattr(getattr(self, f.section), f.name)
            if not isinstance(value, int) or value < 1:
                bad(f"{flag_of(kwarg)} must be a positive integer, got {value}")
        if d.height % 8 or d.width % 8:
            bad(
                "--height and --width must be multiples of 8 (the TaskTransferNet pools three times), "
                f"got {d.height}×{d.width}"
            )
        one_of("lp", lo.lp, DEPTH_LOSSES)
        one_of("tdep_loss", lo.tdep_loss, TDEPTH_LOSSES)
        one_of("tseg_loss", lo.tseg_loss, TSEG_LOSSES)
        one_of("weighting", o.weighting, weighting_names())
        one_of("optimizer", o.optimizer, OPTIMIZERS)
        one_of("amp", r.amp, AMP_MODES)
        one_of("gradnorm_params", o.gradnorm_params, GRADNORM_PARAMS)
        one_of("grad_space", o.grad_space, GRAD_SPACES)
        if len(m.tasks) < 2 and weighting_class(o.weighting).kind == "gradient":
            bad(f"--weighting {o.weighting} balances the gradients of two tasks; --tasks is {m.tasks[0]}")
        one_of("select_metric", r.select_metric, tuple(SELECT_DIRECTION))
        needs = {"miou": "seg", "pixel_acc": "seg", "abs_err": "depth", "rel_err": "depth"}.get(r.select_metric)
        if needs is not None and needs not in m.tasks:
            bad(f"--select-metric {r.select_metric} needs the {needs} task, but --tasks is {','.join(m.tasks)}")
        if o.lr <= 0:
            bad(f"--lr must be positive, got {o.lr}")
        if not 0 < o.scheduler_gamma <= 1:
            bad(f"--scheduler-gamma must be in (0, 1], got {o.scheduler_gamma}")
        for kwarg in ("alpha", "gamma", "label_smoothing"):
            value = getattr(lo, kwarg)
            if not 0 <= value <= 1:
                bad(f"{flag_of(kwarg)} must be in [0, 1], got {value}")
        one_of("depth", d.depth, ("inverse", "metric"))
        if d.name == "nyu" and m.num_classes != 13:
            bad(f"NYUv2 has 13 classes, got --num-classes {m.num_classes}")
        if d.name != "nyu" and m.num_classes not in (7, 19):
            bad(f"Cityscapes-style data has 7 or 19 classes, got --num-classes {m.num_classes}")
        if d.workers < 0:
            bad(f"--workers must be ≥ 0, got {d.workers}")
        if r.save_every_steps is not None and r.save_every_steps < 1:
            bad("--save-every-steps must be ≥ 1")
        if r.skip_nonfinite < 0:
            bad("--skip-nonfinite must be ≥ 0")
        if r.max_steps_per_epoch is not None and r.max_steps_per_epoch < 1:
            bad("--max-steps-per-epoch must be ≥ 1")
        if r.device not in ("auto", "cpu", "mps") and not r.device.startswith("cuda"):
            bad(f"--device must be auto, cpu, cuda[:N] or mps, got {r.device!r}")


def flat_config(d: dict, strict: bool = False) -> dict[str, Any]:
    """A stored config, nested or 0.1.0's flat form, as flat keywords. ``strict`` (loading): unknown sections or keys
    are a ConfigError; otherwise (display) they are left out of a nested config."""
    # 0.1.0's flat form has a "data" key too (the dataset path, a string or null), never a section dict
    if not any(isinstance(d.get(s), dict) for s in SECTIONS):
        return {k: v for k, v in d.items() if not (k == "extra" and not v)}  # 0.1.0 wrote an empty "extra"
    if strict and set(d) - set(SECTIONS):
        raise ConfigError(f"unknown config sections: {', '.join(sorted(set(d) - set(SECTIONS)))}")
    flat = {}
    for section, values in d.items():
        for name, v in (values if isinstance(values, dict) else {}).items():
            path = f"{section}.{name}"
            if path in BY_PATH:
                flat[BY_PATH[path].kwarg] = v
            elif strict:
                raise ConfigError(f"unknown config key: {path}")
    return flat
