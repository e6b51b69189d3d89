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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crosstask_cli.architectures import arch_help, arch_names, get_arch
from crosstask_cli.data.datasets import dataset_info, dataset_names, paper_defaults
from crosstask_cli.engine.records import SELECT_DIRECTION
from crosstask_cli.errors import ConfigError
from crosstask_cli.options import FieldInfo, field_table, option, parse_value
from crosstask_cli.tasks import all_specs, get_task, parse_pairs, parse_tasks
from crosstask_cli.weighting.catalog import HYPERPARAMETERS, method_info, weighting_help, weighting_names

DATASETS = dataset_names()
METHODS = ("standard", "kd4mtl")  # the training method (KD4MTL: engine.distillation)
OPTIMIZERS = ("adam", "sgd")

# The reference implementation's flag table (Cityscapes / NYUv2), by flat keyword (data.datasets holds them).
PAPER_DEFAULTS: dict[str, dict] = {name: paper_defaults(name) for name in DATASETS}


@dataclass(frozen=True, kw_only=True)
class DataOptions:
    name: str = option("cityscapes", " | ".join(DATASETS), flag=None, kwarg="dataset")
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
    arch: str = option("resnet", arch_help())
    enc_layers: int = option(34, "ResNet depth of the encoder (--arch resnet): 18, 34 (default), 50, 101, 152.")
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
        "The tasks to train, comma-separated, from seg, depth, normal (nyu and synthetic): seg,depth (default), "
        "seg,depth,normal (the NYUv2 3-task benchmark), or one task alone for a single-task baseline (one decoder, "
        "no TaskTransferNets).",
        cli_type=str,
    )
    transfer_pairs: tuple[str, ...] = option(
        (),
        "The TaskTransferNets as SOURCE:TARGET pairs, comma-separated, e.g. seg:depth,depth:seg (default: every "
        "ordered pair of the trained tasks: 2 for two tasks, 6 for three).",
        cli_type=str,
    )


_LOSS_CORE = (
    ("consistency", str, option(
        "xtsc",
        "xtsc (default, the method: transferred predictions against the detached direct ones), xtc (against the "
        "ground truth, as the original's xtc: each with its target task's direct loss, e.g. transferred depth with "
        "the --lp loss, transferred seg with plain cross-entropy; --tdep-loss, --tseg-loss and --label-smoothing do "
        "not apply) or none (plain multi-task learning, no TaskTransferNets).",
    )),
    ("alpha", float, option(
        0.01,
        "Weight λ_seg of the transferred losses of the nets fed by segmentation in the segmentation task loss; with "
        "seg and depth: the transferred-depth loss, λ1 (cityscapes 0.01, nyu 1e-4).",
    )),
    ("gamma", float, option(
        0.01,
        "Weight λ_depth of the transferred losses of the nets fed by depth in the depth task loss; with seg and "
        "depth: the transferred-segmentation loss, λ2 (cityscapes 0.01, nyu 1e-4).",
    )),
)  # fmt: skip
# The original's loss options keep their place (and config.json its key order); other tasks' options follow.
_LEGACY_LOSS_ORDER = ("label_smoothing", "lp", "tdep_loss", "tseg_loss")


def _task_option_fields() -> list[tuple[str, type, Any]]:
    declared = {o.name: o for spec in all_specs() for o in spec.options}
    names = [n for n in _LEGACY_LOSS_ORDER if n in declared] + [n for n in declared if n not in _LEGACY_LOSS_ORDER]
    return [(n, declared[n].type, option(declared[n].default, declared[n].help)) for n in names]


LossOptions = dataclasses.make_dataclass(
    "LossOptions",
    [
        *_LOSS_CORE,
        *_task_option_fields(),
        ("method", str, option(
            "standard",
            "standard (default: the weighted task losses) or kd4mtl (Li & Bilen 2020: adds the distillation of frozen "
            "single-task teachers, --teacher, through per-task 1×1 adaptors trained by their own Adam, lr 0.1).",
        )),
        ("teachers", tuple[str, ...], option(
            (),
            "KD4MTL's teachers as TASK=CHECKPOINT, one per trained task, repeatable: crosstask single-task checkpoints "
            "of the same --arch and data, e.g. --teacher seg=runs/seg/checkpoints/best.pt.",
            flag="--teacher",
            cli_type=list[str],
            metavar="TASK=CKPT",
        )),
        ("consistency_weights", tuple[str, ...], option(
            (),
            "λ of the other tasks as TASK=WEIGHT, comma-separated, e.g. normal=1e-4 (the weight of the transferred "
            "losses of the nets a task feeds in its task loss; seg's is --alpha, depth's --gamma); default: the "
            "dataset's α (cityscapes/synthetic 0.01, nyu 1e-4).",
            cli_type=str,
        )),
    ],
    frozen=True,
    kw_only=True,
    namespace={"__doc__": "The objective's options: consistency, the consistency weights λ and each task's losses "
               "(declared by the task specs, crosstask_cli.tasks)."},
)  # fmt: skip


OptimOptions = dataclasses.make_dataclass(
    "OptimOptions",
    [
        ("epochs", int, option(250, "Number of epochs (cityscapes 250, nyu 100, synthetic 30).")),
        ("batch_size", int, option(8, "Batch size (cityscapes 8, nyu 6).")),
        ("optimizer", str, option("adam", "adam (default, the paper's) or sgd (momentum 0.9, the original's "
                                  "alternative).")),
        ("lr", float, option(1e-4, "Initial learning rate (1e-4).")),
        ("betas", tuple[float, float], option((0.9, 0.99), "Adam betas (0.9 0.99); unused by sgd.")),
        ("scheduler_step_size", int, option(80, "StepLR step in epochs (cityscapes 80, nyu 60).")),
        ("scheduler_gamma", float, option(0.5, "StepLR decay factor (0.5).")),
        ("weighting", str, option("fixed", weighting_help())),
        # each method's hyper-parameters, declared with it (weighting.catalog)
        *((h.name, type(h.default), option(h.default, h.help)) for h in HYPERPARAMETERS),
    ],
    frozen=True,
    kw_only=True,
    namespace={"__doc__": "The optimizer, its schedule and the task weighting with its hyper-parameters."},
)  # fmt: skip


# Named protocols: settings applied under the options given (``--preset``; a sweep's [base] ``preset = "mtan"``).
# mtan: the standard optimiser protocol on SegNet-MTAN (MTAN; Nash-MTL, FAMO, Aligned-MTL, DB-MTL): Adam 1e-4
# (PyTorch's betas) halved at epoch 100 of 200, batch 2 on NYUv2 (3 tasks, 288×384) and 8 on Cityscapes (128×256),
# equal weights, no TaskTransferNets; no model selection: read the last 10 epochs (`compare --last-k 10`).
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mtan": {
        "all": dict(arch="segnet-mtan", consistency="none", optimizer="adam", lr=1e-4, betas=(0.9, 0.999),
                    epochs=200, scheduler_step_size=100, scheduler_gamma=0.5, weighting="fixed"),
        "nyu": dict(batch_size=2, height=288, width=384, tasks=("seg", "depth", "normal")),
        "cityscapes": dict(batch_size=8, height=128, width=256),
        "synthetic": dict(batch_size=8, height=128, width=256),
    },
}  # fmt: skip


def preset_values(name: str | None, dataset: str) -> dict[str, Any]:
    """The flat settings of preset ``name`` for ``dataset`` ({} for None)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise ConfigError(f"--preset must be one of {', '.join(PRESETS)}, got {name!r}")
    return {**PRESETS[name]["all"], **PRESETS[name].get(dataset, {})}


@dataclass(frozen=True, kw_only=True)
class RuntimeOptions:
    preset: str | None = option(
        None,
        "A named protocol whose settings apply under the options given: mtan (the standard optimiser protocol on "
        "SegNet-MTAN: Adam 1e-4 halved at epoch 100 of 200, batch 2 on nyu with seg,depth,normal at 288×384, 8 on "
        "cityscapes at 128×256, equal weights, no TaskTransferNets; no model selection, read the last 10 epochs with "
        "`compare --last-k 10`). config.json records it and every value it set.",
    )
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


FIELDS: dict[str, FieldInfo] = field_table(SECTIONS)
"""Every option by its flat keyword: the one table the CLI, ``--set`` and 0.1.0 config files map through."""
BY_PATH: dict[str, FieldInfo] = {f.path: f for f in FIELDS.values()}


def default_consistency(values: dict[str, Any]) -> str:
    """The consistency a config gets when none is given: the method's (xtsc) for two tasks or more, none for one (a
    single task has nothing to be consistent with; asking for consistency with one task is an error)."""
    tasks = values.get("tasks") or ModelOptions().tasks
    tasks = tuple(t.strip() for t in tasks.split(",")) if isinstance(tasks, str) else tuple(tasks)
    return LossOptions().consistency if len(set(tasks)) > 1 else "none"


def flag_of(kwarg: str) -> str:
    f = FIELDS[kwarg]
    return f.flag or f.kwarg


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything that defines a training run; saved as ``config.json`` in the run directory. Validated when built."""

    data: DataOptions = field(default_factory=DataOptions)
    model: ModelOptions = field(default_factory=ModelOptions)
    loss: LossOptions = field(default_factory=LossOptions)
    optim: OptimOptions = field(default_factory=OptimOptions)
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)

    def __post_init__(self) -> None:
        for section in SECTIONS:  # JSON gives lists where the fields hold tuples
            options = getattr(self, section)
            lists = {
                f.name: tuple(v) for f in dataclasses.fields(options) if isinstance(v := getattr(options, f.name), list)
            }
            if lists:
                object.__setattr__(self, section, dataclasses.replace(options, **lists))
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
        values = {**PAPER_DEFAULTS[dataset], **preset_values(given.get("preset"), dataset), **given,
                  "dataset": dataset}  # fmt: skip
        if "consistency" not in given and "consistency" not in preset_values(given.get("preset"), dataset):
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

    # --- derived values -----------------------------------------------------------------------------------
    def consistency_weights(self) -> dict[str, float]:
        """λ of every trained task: seg's is ``alpha``, depth's ``gamma``, the others' from
        ``consistency_weights`` (TASK=WEIGHT) or, when not given, the dataset's paper α."""
        given = dict(_weight_entries(self.loss.consistency_weights))
        fallback = PAPER_DEFAULTS[self.data.name]["alpha"]
        weights = {"seg": self.loss.alpha, "depth": self.loss.gamma}
        return {t: weights.get(t, given.get(t, fallback)) for t in self.model.tasks}

    def task_options(self) -> dict[str, Any]:
        """Every task's loss options by keyword (``lp``, ``tseg_loss``, ``normal_loss``, …)."""
        return {o.name: getattr(self.loss, o.name) for spec in all_specs() for o in spec.options}

    def transfer_pairs(self) -> tuple[tuple[str, str], ...]:
        """The TaskTransferNets of this run as (source, target), canonical order; () without consistency."""
        if self.loss.consistency == "none":
            return ()
        return parse_pairs(self.model.transfer_pairs, self.model.tasks)

    # --- validation, once, in field terms ----------------------------------------------------------------
    def _validate(self) -> None:
        """Every check, in field terms, each ConfigError naming the flag. Split by what is checked: the tasks and the
        objective, the components' own options, the sizes and counts, the rest of each section."""
        tasks = parse_tasks(self.model.tasks)
        self._validate_tasks(tasks)
        for spec in all_specs():
            for opt in spec.options:
                opt.check(getattr(self.loss, opt.name))
        for h in HYPERPARAMETERS:
            h.check(getattr(self.optim, h.name))
        self._validate_counts()
        self._validate_choices(tasks)

    def _validate_tasks(self, tasks: tuple[str, ...]) -> None:
        from crosstask_cli.objective import CONSISTENCY

        info, m, lo = dataset_info(self.data.name), self.model, self.loss
        lacking = [t for t in tasks if t not in info.tasks]
        if lacking:
            raise ConfigError(f"--tasks {','.join(tasks)}: {info.title} has no "
                              f"{', '.join(get_task(t).title for t in lacking)} (its tasks: {', '.join(info.tasks)})")  # fmt: skip
        _one_of("consistency", lo.consistency, CONSISTENCY)
        if len(tasks) == 1 and lo.consistency != "none":
            raise ConfigError(
                f"--consistency {lo.consistency} needs two tasks or more; with --tasks {tasks[0]} there is nothing to "
                "be consistent with (leave --consistency out, or give none)"
            )
        if m.transfer_pairs:
            if lo.consistency == "none":
                raise ConfigError("--transfer-pairs chooses TaskTransferNets, but --consistency none trains none")
            parse_pairs(m.transfer_pairs, tasks)
        for name, weight in _weight_entries(lo.consistency_weights):
            if name in ("seg", "depth"):
                own = "--alpha" if name == "seg" else "--gamma"
                raise ConfigError(f"--consistency-weights {name}=…: the weight of {name} is {own}")
            if name not in tasks:
                raise ConfigError(f"--consistency-weights {name}=…: {name} is not trained (--tasks {','.join(tasks)})")
            if not 0 <= weight <= 1:
                raise ConfigError(f"--consistency-weights {name}={weight}: a weight must be in [0, 1]")
        for kwarg in ("alpha", "gamma"):
            value = getattr(lo, kwarg)
            if not 0 <= value <= 1:
                raise ConfigError(f"{flag_of(kwarg)} must be in [0, 1], got {value}")
        self._validate_method(tasks)
        if len(tasks) < 2 and method_info(self.optim.weighting).kind == "gradient":
            raise ConfigError(f"--weighting {self.optim.weighting} balances the gradients of two tasks; --tasks is "
                              f"{tasks[0]}")  # fmt: skip

    def _validate_method(self, tasks: tuple[str, ...]) -> None:
        lo = self.loss
        _one_of("method", lo.method, METHODS)
        teachers = parse_teachers(lo.teachers, tasks)
        if lo.method == "standard" and teachers:
            raise ConfigError("--teacher gives KD4MTL's teachers; add --method kd4mtl")
        if lo.method == "kd4mtl":
            missing = [t for t in tasks if t not in teachers]
            if missing:
                raise ConfigError(f"--method kd4mtl distils every task: give --teacher {missing[0]}=CHECKPOINT")
            if method_info(self.optim.weighting).kind == "gradient":
                raise ConfigError(f"--method kd4mtl adds its distillation to the combined loss; --weighting "
                                  f"{self.optim.weighting} sets the gradients itself (use a loss weighting)")  # fmt: skip

    def _validate_counts(self) -> None:
        d, o, r = self.data, self.optim, self.runtime
        for kwarg in ("epochs", "batch_size", "height", "width", "scheduler_step_size", "eval_batch_size"):
            f = FIELDS[kwarg]
            value = getattr(getattr(self, f.section), f.name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{flag_of(kwarg)} must be a positive integer, got {value}")
        if d.height % 8 or d.width % 8:
            raise ConfigError("--height and --width must be multiples of 8 (the TaskTransferNet pools three times), "
                              f"got {d.height}×{d.width}")  # fmt: skip
        if not o.lr > 0:  # also refuses NaN
            raise ConfigError(f"--lr must be positive, got {o.lr}")
        if len(o.betas) != 2 or not all(isinstance(b, int | float) and 0 <= b < 1 for b in o.betas):
            raise ConfigError(f"--betas must be two numbers in [0, 1), got {' '.join(map(str, o.betas))}")
        if not isinstance(r.seed, int) or isinstance(r.seed, bool) or not 0 <= r.seed < 2**32:
            raise ConfigError(f"--seed must be an integer in [0, 2^32), got {r.seed!r}")
        if r.max_val_batches is not None and r.max_val_batches < 1:
            raise ConfigError(f"--max-val-batches must be ≥ 1 (validation on nothing selects nothing), got "
                              f"{r.max_val_batches}")  # fmt: skip
        if not 0 < o.scheduler_gamma <= 1:
            raise ConfigError(f"--scheduler-gamma must be in (0, 1], got {o.scheduler_gamma}")
        if d.root is not None and not str(d.root).strip():
            raise ConfigError("--data is empty; give the dataset folder, or leave it out for the dataset's default")
        if d.workers < 0:
            raise ConfigError(f"--workers must be ≥ 0, got {d.workers}")
        for kwarg, value, low in (("save_every_steps", r.save_every_steps, 1), ("skip_nonfinite", r.skip_nonfinite, 0),
                                  ("max_steps_per_epoch", r.max_steps_per_epoch, 1)):  # fmt: skip
            if value is not None and value < low:
                raise ConfigError(f"{flag_of(kwarg)} must be ≥ {low}")

    def _validate_choices(self, tasks: tuple[str, ...]) -> None:
        # imported here: the CLI reads the option table (this module) without loading torch
        from crosstask_cli.engine.device import AMP_MODES
        from crosstask_cli.models.encoder import RESNET_DEPTHS

        d, m, o, r = self.data, self.model, self.optim, self.runtime
        if m.enc_layers not in RESNET_DEPTHS:
            raise ConfigError(f"--enc-layers must be one of {', '.join(map(str, RESNET_DEPTHS))}, got {m.enc_layers}")
        _one_of("arch", m.arch, arch_names())
        arch = get_arch(m.arch)
        if not arch.resnet_encoder and (m.pretrained or m.encoder_weights):
            flag = "--pretrained" if m.pretrained else "--encoder-weights"
            raise ConfigError(f"{flag} starts a ResNet encoder; --arch {m.arch} has none (it trains from scratch, as "
                              "its reference)")  # fmt: skip
        if arch.needs_input_size and (d.height % arch.size_multiple or d.width % arch.size_multiple):
            raise ConfigError(f"--arch {m.arch} needs --height and --width multiples of {arch.size_multiple}, got "
                              f"{d.height}×{d.width}")  # fmt: skip
        _one_of("weighting", o.weighting, weighting_names())
        _one_of("optimizer", o.optimizer, OPTIMIZERS)
        _one_of("amp", r.amp, AMP_MODES)
        if r.preset is not None:
            _one_of("preset", r.preset, tuple(PRESETS))
        _one_of("select_metric", r.select_metric, tuple(SELECT_DIRECTION))
        needs = next((s.name for s in all_specs() if r.select_metric in s.directions), None)
        if needs is not None and needs not in tasks:
            raise ConfigError(f"--select-metric {r.select_metric} needs the {needs} task, but --tasks is "
                              f"{','.join(tasks)}")  # fmt: skip
        _one_of("depth", d.depth, ("inverse", "metric"))
        info = dataset_info(d.name)
        if m.num_classes not in info.classes:
            raise ConfigError(f"{info.title} has {' or '.join(map(str, info.classes))} classes, got --num-classes "
                              f"{m.num_classes}")  # fmt: skip
        if r.device not in ("auto", "cpu", "mps") and not r.device.startswith("cuda"):
            raise ConfigError(f"--device must be auto, cpu, cuda[:N] or mps, got {r.device!r}")


def parse_teachers(entries, tasks: tuple[str, ...]) -> dict[str, str]:
    """``("seg=PATH", …)`` → {task: path}; ConfigError for an entry that is not TASK=PATH of a trained task."""
    out = {}
    for entry in entries:
        task, sep, path = str(entry).partition("=")
        task, path = task.strip(), path.strip()
        if not sep or not task or not path:
            raise ConfigError(f"--teacher {entry!r}: expected TASK=CHECKPOINT, e.g. seg=runs/seg/checkpoints/best.pt")
        if task not in tasks:
            raise ConfigError(f"--teacher {task}=…: {task} is not trained (--tasks {','.join(tasks)})")
        if task in out:
            raise ConfigError(f"--teacher {task}=… is given twice")
        out[task] = path
    return out


def _one_of(kwarg: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{flag_of(kwarg)} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _weight_entries(entries) -> list[tuple[str, float]]:
    """``("normal=1e-4", …)`` → [("normal", 0.0001), …]; ConfigError for an entry that is not TASK=NUMBER."""
    out = []
    for entry in entries:
        name, sep, value = str(entry).partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = float("nan")
        if not sep or not name.strip() or weight != weight:
            raise ConfigError(f"--consistency-weights {entry!r}: expected TASK=WEIGHT, e.g. normal=1e-4")
        out.append((name.strip(), weight))
    return out


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
