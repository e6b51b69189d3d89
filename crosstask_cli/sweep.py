"""Sweeps: a base training configuration, named variants and a list of seeds, trained, resumed and evaluated run by
run, with a manifest written after every run.

Spec (TOML)::

    [sweep]
    dataset = "synthetic"            # train's DATASET
    out = "runs/synthetic-quick"     # runs go to OUT/<variant>/seed-<seed>; the manifest is OUT/sweep.json
    seeds = [0, 1, 2]

    [prepare]                        # optional: data made once, before the first run, when missing
    synthetic = { out = "data/syn/raw", train = 240, val = 40, height = 128, width = 256, seed = 0 }
    cityscapes = { src = "data/syn/raw", out = "data/syn/prepared", height = 64, width = 128,
                   num_classes = 7, val_from_train = 40, seed = 0 }

    [base]                           # any `train` option by its keyword (the flag without --, - as _)
    data = "data/syn/prepared"
    epochs = 5

    [eval]                           # after training: `crosstask eval` of a checkpoint → RUN/eval.json
    split = "val"
    checkpoint = "best"              # or "last"

    [variants.seg-only]
    tasks = "seg"
    [variants.xtsc-uncertainty]
    weighting = "uncertainty"

Relative paths are relative to the working directory, as on the command line. ``{seed}`` and ``{out}`` in a string
value are the run's seed and the sweep's OUT (KD4MTL's teachers: the same seed's single-task runs of an earlier
variant; runs go variant by variant in the spec's order). A run is *done* when its
``eval.json`` exists; a run with a ``config.json`` but no ``eval.json`` is resumed (``train --resume``: an
interrupted run loses at most its current epoch) and then evaluated; any other run starts afresh.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crosstask_cli.errors import ConfigError, InputError

MANIFEST = "sweep.json"
EVAL_FILE = "eval.json"
_SECTIONS = {"sweep", "prepare", "base", "eval", "variants"}


@dataclass(frozen=True)
class SweepRun:
    variant: str
    seed: int
    run_dir: Path
    options: dict[str, Any]  # flat train keywords: base, variant, seed


@dataclass
class SweepSpec:
    path: Path
    dataset: str
    out: Path
    seeds: list[int]
    base: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    eval_split: str = "val"
    eval_checkpoint: str = "best"
    eval_data: str | None = None
    prepare: dict[str, dict[str, Any]] = field(default_factory=dict)

    def runs(self, only: list[str] | None = None) -> list[SweepRun]:
        """Every variant × seed (variant order of the spec, then seeds), optionally only the named variants."""
        if only:
            unknown = [v for v in only if v not in self.variants]
            if unknown:
                raise ConfigError(f"--only {', '.join(unknown)}: not a variant of {self.path} "
                                  f"({', '.join(self.variants)})")  # fmt: skip
        names = [v for v in self.variants if not only or v in only]
        return [
            SweepRun(v, s, self.out / v / f"seed-{s}",
                     {**_placeholders({**self.base, **self.variants[v]}, s, self.out), "seed": s})
            for v in names
            for s in self.seeds
        ]  # fmt: skip


def _placeholders(options: dict[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """``{seed}`` and ``{out}`` in string values (and lists of strings) become the run's seed and the sweep's OUT:
    a KD4MTL variant names its teachers as the same seed's runs of earlier variants, e.g.
    ``teachers = ["seg={out}/seg-only/seed-{seed}/checkpoints/best.pt"]``."""

    def fill(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("{seed}", str(seed)).replace("{out}", str(out))
        if isinstance(v, tuple) and all(isinstance(x, str) for x in v):
            return tuple(fill(x) for x in v)
        return v

    return {k: fill(v) for k, v in options.items()}


def _typed(path: Path, where: str, values: dict[str, Any]) -> dict[str, Any]:
    """TOML values → train keywords in their field types (strings parsed as ``--set`` parses them)."""
    from crosstask_cli.engine.config import FIELDS, parse_value

    out = {}
    for key, value in values.items():
        if key not in FIELDS:
            close = [k for k in FIELDS if k.startswith(key[:4])][:4]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{path}: [{where}] {key!r} is not a train option{hint}")
        if key in ("run_dir", "seed"):
            raise ConfigError(f"{path}: [{where}] sets {key}; the sweep chooses it (OUT/<variant>/seed-<seed>)")
        info = FIELDS[key]
        if isinstance(value, str) and info.type is not str:
            value = parse_value(info, value)
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, int) and not isinstance(value, bool) and info.type is float:
            value = float(value)
        out[key] = value
    return out


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; every run's configuration is built once here, so a bad option is reported
    before anything trains. Errors name the file and the table."""
    from crosstask_cli.engine.config import TrainConfig

    path = Path(path)
    raw = _read_toml(path)
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_SECTIONS))}"
        )
    head = _check_head(path, raw.get("sweep", {}))
    variants = raw.get("variants", {})
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: no [variants.NAME] tables; a sweep needs at least one variant")
    for name in variants:
        if not name or "/" in name or name.startswith(".") or name != name.strip():
            raise ConfigError(f"{path}: variant name {name!r} cannot be a folder name")
    ev, prepare = _check_eval_and_prepare(path, raw.get("eval", {}), raw.get("prepare", {}))
    spec = SweepSpec(
        path=path,
        dataset=head["dataset"],
        out=Path(head["out"]),
        seeds=list(head["seeds"]),
        base=_typed(path, "base", raw.get("base", {})),
        variants={n: _typed(path, f"variants.{n}", v) for n, v in variants.items()},
        eval_split=str(ev.get("split", "val")),
        eval_checkpoint=str(ev.get("checkpoint", "best")),
        eval_data=ev.get("data"),
        prepare=prepare,
    )
    for run in spec.runs():  # every configuration valid before the first run trains
        try:
            TrainConfig.for_dataset(spec.dataset, **run.options)
        except ConfigError as exc:
            raise ConfigError(f"{path}: variant {run.variant!r}: {exc}") from None
    return spec


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli is the same parser
        import tomli as tomllib

    try:
        return tomllib.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"{path}: cannot read the sweep spec ({exc.strerror or exc})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def _check_head(path: Path, head: dict) -> dict:
    """The [sweep] table: dataset, out and a list of distinct integer seeds."""
    from crosstask_cli.engine.config import DATASETS

    for key in ("dataset", "out", "seeds"):
        if key not in head:
            raise ConfigError(f"{path}: [sweep] needs {key!r}")
    if head["dataset"] not in DATASETS:
        raise ConfigError(f"{path}: [sweep] dataset must be one of {', '.join(DATASETS)}, got {head['dataset']!r}")
    seeds = head["seeds"]
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        raise ConfigError(f"{path}: [sweep] seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: [sweep] seeds repeat: {seeds}")
    return head


def _check_eval_and_prepare(path: Path, ev: dict, prepare: dict) -> tuple[dict, dict]:
    bad_eval = set(ev) - {"split", "checkpoint", "data"}
    if bad_eval:
        raise ConfigError(f"{path}: [eval] knows split, checkpoint and data, not {', '.join(sorted(bad_eval))}")
    if ev.get("checkpoint", "best") not in ("best", "last"):
        raise ConfigError(f"{path}: [eval] checkpoint must be best or last, got {ev['checkpoint']!r}")
    bad_prep = set(prepare) - {"synthetic", "cityscapes", "nyu"}
    if bad_prep:
        raise ConfigError(f"{path}: [prepare] knows synthetic, cityscapes and nyu, not {', '.join(sorted(bad_prep))}")
    return ev, prepare


# --- the manifest -------------------------------------------------------------------------------------------


def read_manifest(where: str | Path, missing_ok: bool = True) -> dict:
    """A sweep manifest (``OUT/sweep.json``, or OUT); a missing one is empty with ``missing_ok``, else an error."""
    path = Path(where)
    path = path / MANIFEST if path.is_dir() or path.name != MANIFEST else path
    if not path.is_file():
        if missing_ok:
            return {"runs": []}
        raise InputError(f"{path}: no sweep manifest (run `crosstask sweep SPEC` first)")
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable sweep manifest ({exc})") from exc
    if not isinstance(d, dict) or not isinstance(d.get("runs"), list):
        raise InputError(f"{path}: not a crosstask sweep manifest (no 'runs' list)")
    return d


def _write_manifest(spec: SweepSpec, rows: dict[tuple[str, int], dict]) -> None:
    from crosstask_cli.atomic import atomic_write_json

    spec.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(spec.out / MANIFEST, {
        "format": "crosstask-sweep",
        "spec": str(spec.path.resolve()),
        "dataset": spec.dataset,
        "seeds": spec.seeds,
        "variants": list(spec.variants),
        "runs": list(rows.values()),
    })  # fmt: skip


def run_status(run: SweepRun) -> str:
    """From the run directory: done (evaluated), running (started: resumed next), pending. The manifest also
    records trained (between training and evaluation) and failed."""
    if (run.run_dir / EVAL_FILE).is_file():
        return "done"
    if (run.run_dir / "config.json").is_file():
        return "running"
    return "pending"


# --- commands for a scheduler ---------------------------------------------------------------------------------


def _set_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def train_command(spec: SweepSpec, run: SweepRun) -> str:
    """One shell line that trains (or resumes) and evaluates ``run`` as the sweep would."""
    from crosstask_cli.engine.config import FIELDS

    resume = run_status(run) == "running"
    parts = ["crosstask", "train", spec.dataset, "--run-dir", str(run.run_dir)]
    if resume:
        parts.append("--resume")
    else:
        parts += ["--seed", str(run.seed)]
        for key, value in run.options.items():
            if key != "seed":
                parts += ["--set", f"{FIELDS[key].path}={_set_value(value)}"]
    train = " ".join(shlex.quote(p) for p in parts)
    return f"{train} && {' '.join(shlex.quote(p) for p in eval_args(spec, run))}"


def eval_args(spec: SweepSpec, run: SweepRun) -> list[str]:
    ckpt = run.run_dir / "checkpoints" / f"{spec.eval_checkpoint}.pt"
    args = [
        "crosstask",
        "eval",
        "--ckpt",
        str(ckpt),
        "--split",
        spec.eval_split,
        "--json",
        str(run.run_dir / EVAL_FILE),
    ]
    data = spec.eval_data or run.options.get("data")
    if data:
        args += ["--data", str(data)]
    return args


def prepare_commands(spec: SweepSpec) -> list[str]:
    """Shell lines that make the spec's [prepare] data that does not exist yet."""
    lines = []
    order = [("synthetic", ["crosstask", "prepare", "synthetic"]), ("cityscapes", ["crosstask", "prepare", "cityscapes"]),
             ("nyu", ["crosstask", "prepare", "nyu"])]  # fmt: skip
    for kind, head in order:
        p = spec.prepare.get(kind)
        if p is None or Path(p["out"]).exists():
            continue
        args = list(head)
        for k, v in p.items():
            if k != "dataset":
                args += [f"--{k.replace('_', '-')}", str(v)]
        lines.append(" ".join(shlex.quote(a) for a in args))
    return lines


# --- running ------------------------------------------------------------------------------------------------


def prepare_data(spec: SweepSpec, message: Callable[[str], None] = lambda m: None) -> None:
    """Make the spec's [prepare] data that does not exist yet (synthetic scenes first, then preparations)."""
    from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes, prepare_nyu, prepare_synthetic

    syn = spec.prepare.get("synthetic")
    if syn is not None and not Path(syn["out"]).exists():
        message(f"rendering synthetic scenes into {syn['out']}")
        kw = {k: syn[k] for k in ("train", "val", "height", "width", "seed") if k in syn}
        prepare_synthetic(Path(syn["out"]), **kw)
    for kind, fn in (("cityscapes", prepare_cityscapes), ("nyu", prepare_nyu)):
        p = spec.prepare.get(kind)
        if p is None or Path(p["out"]).exists():
            continue
        message(f"preparing {p['src']} into {p['out']}")
        opts = PrepareOptions(**{k: v for k, v in p.items() if k not in ("src", "out", "dataset")})
        if kind == "cityscapes":
            fn(
                Path(p["src"]),
                Path(p["out"]),
                opts,
                dataset=p.get("dataset", spec.dataset if spec.dataset != "nyu" else "cityscapes"),
            )
        else:
            fn(Path(p["src"]), Path(p["out"]), opts)


@dataclass
class SweepReport:
    total: int
    done_before: int
    trained: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def run_sweep(
    spec: SweepSpec,
    only: list[str] | None = None,
    device: str | None = None,
    on_run: Callable[[SweepRun, str], None] | None = None,
    on_result: Callable[[SweepRun, dict, float], None] | None = None,
    message: Callable[[str], None] = lambda m: None,
    keep_going: bool = False,
) -> SweepReport:
    """Train and evaluate every run that is not done, in spec order; write the manifest after every run.

    ``on_run(run, action)`` is called before a run (action: train, resume, evaluate); ``on_result(run, metrics,
    seconds)`` after it. A failing run stops the sweep (its error propagates) unless ``keep_going``.
    """
    import crosstask_cli as ct
    from crosstask_cli.engine.config import TrainConfig

    runs = spec.runs(only)
    prepare_data(spec, message)
    rows: dict[tuple[str, int], dict] = {}
    for old in read_manifest(spec.out)["runs"]:  # keep what an earlier (or --only) sweep recorded
        if isinstance(old, dict) and "variant" in old and "seed" in old:
            rows[(old["variant"], old["seed"])] = old
    for run in spec.runs():
        key, status = (run.variant, run.seed), run_status(run)
        row = {**rows.get(key, {}), "variant": run.variant, "seed": run.seed, "run_dir": str(run.run_dir)}
        row["status"] = status if row.get("status") != "failed" or status == "done" else "failed"
        if status == "done" and "metrics" not in row:
            row["metrics"] = _summary(run.run_dir / EVAL_FILE)
        rows[key] = row
    _write_manifest(spec, rows)
    report = SweepReport(total=len(runs), done_before=sum(run_status(r) == "done" for r in runs))
    start = time.monotonic()
    for run in runs:
        status = run_status(run)
        if status == "done":
            continue
        key = (run.variant, run.seed)
        t0 = time.monotonic()
        rows[key].update(status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        _write_manifest(spec, rows)
        try:
            if status == "running":
                if on_run:
                    on_run(run, "resume")
                overrides = {"device": device} if device else None
                ct.train(TrainConfig.for_dataset(spec.dataset, **run.options), run_dir=run.run_dir, resume=True,
                         resume_overrides=overrides)  # fmt: skip
            else:
                if on_run:
                    on_run(run, "train")
                extra = {"device": device} if device else {}
                cfg = TrainConfig.for_dataset(spec.dataset, **run.options, **extra)
                ct.train(cfg, run_dir=run.run_dir, force=run.run_dir.exists())
            rows[key]["status"] = "trained"
            _write_manifest(spec, rows)
            if on_run:
                on_run(run, "evaluate")
            metrics = evaluate_run(spec, run, device)
        except KeyboardInterrupt:
            rows[key]["status"] = "running"  # resumable: the next sweep continues it
            _write_manifest(spec, rows)
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, then re-raised unless keep_going
            rows[key].update(status="failed", error=f"{type(exc).__name__}: {exc}")
            _write_manifest(spec, rows)
            report.failed.append((f"{run.variant}/seed-{run.seed}", str(exc)))
            if not keep_going:
                raise
            continue
        seconds = time.monotonic() - t0
        rows[key].update(status="done", metrics=metrics, seconds=round(seconds, 1))
        rows[key].pop("error", None)
        _write_manifest(spec, rows)
        report.trained.append(f"{run.variant}/seed-{run.seed}")
        if on_result:
            on_result(run, metrics, seconds)
    report.seconds = time.monotonic() - start
    return report


def evaluate_run(spec: SweepSpec, run: SweepRun, device: str | None = None) -> dict:
    """Evaluate the run's checkpoint on the spec's split, write RUN/eval.json atomically; returns its summary."""
    from crosstask_cli.atomic import atomic_write_json
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from crosstask_cli.engine.data_paths import resolve_eval_data
    from crosstask_cli.engine.device import resolve_device
    from crosstask_cli.engine.evaluator import evaluate

    ckpt_path = run.run_dir / "checkpoints" / f"{spec.eval_checkpoint}.pt"
    c = load_checkpoint(ckpt_path)
    data = spec.eval_data or run.options.get("data")
    prepared = resolve_eval_data(c, Path(data) if data else None)
    dev = resolve_device(device or "auto")
    model = model_from_checkpoint(c, ckpt_path).to(dev)
    res = evaluate(model, prepared, spec.eval_split, device=dev, amp="auto", energy=False)
    res.checkpoint, res.data = str(ckpt_path), str(prepared)
    atomic_write_json(run.run_dir / EVAL_FILE, res.to_dict())
    return _summary(res)


def _summary(res) -> dict:
    """The compared metrics of an evaluation (an EvalResult, or the path of its eval.json) that the run has."""
    import math

    from crosstask_cli.engine.records import EvalResult
    from crosstask_cli.tasks import all_specs

    if not isinstance(res, EvalResult):
        res = EvalResult.from_dict(json.loads(Path(res).read_text()), str(res))
    flat = res.flat_metrics()
    values = {k: flat.get(k) for spec in all_specs() for k in spec.compared}
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float) and math.isfinite(v)}


def print_plan(spec: SweepSpec, only: list[str] | None = None, write: Callable[[str], None] = print) -> None:
    for run in spec.runs(only):
        write(f"{run_status(run):8} {run.variant}/seed-{run.seed}  {run.run_dir}")
