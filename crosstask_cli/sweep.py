"""Sweeps: a base training configuration, named variants and a list of seeds, trained, resumed and evaluated run by
run (this module: the spec, the run records, the manifest, the serial launcher; :mod:`crosstask_cli.sweep_launch`:
the pool and SLURM launchers).

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

    [slurm]                          # optional, for --launcher slurm (SLURM_KEYS)
    partition = "gpu"
    time = "0-12:00:00"
    gpus_per_run = 1

    [variants.seg-only]
    tasks = "seg"
    [variants.xtsc-uncertainty]
    weighting = "uncertainty"

Relative paths in a spec are relative to the working directory, as on the command line. ``{seed}`` and ``{out}`` in
a string value are the run's seed and the sweep's OUT (KD4MTL's teachers: the same seed's single-task runs of an
earlier variant; runs go variant by variant in the spec's order). The whole spec (tables, keys, value types,
``[prepare]`` and ``[eval]``) is checked before the first run; errors name the file, the table and the key.

Each run directory is the record of its run: ``config.json`` holds the recipe it was trained with and
``sweep-run.json`` (:data:`RUN_RECORD`) its status, the recipe's hash, metrics or last error. A run is *done* when
its ``eval.json`` exists; *trained* runs are evaluated; *running* (interrupted) ones are resumed (``train
--resume``: at most the current epoch is lost) and then evaluated; *failed* ones are started again; any other run
starts afresh. A run whose recipe differs from the spec's (an edited spec) is neither reused nor resumed: the sweep
refuses it with the differences, or trains it afresh with ``rerun_changed``. One process at a time works on a
run (a lock in ``OUT/.locks/``); a second sweep on the same OUT leaves it alone. ``OUT/sweep.json`` is rebuilt from
the run directories, under a lock and atomically, whenever a run changes state; its run paths are relative to it.
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
RUN_RECORD = "sweep-run.json"  # in each run directory: status, recipe hash, metrics or error
SLURM_FOLDER = "slurm"  # OUT/slurm/: submitit's job files, and jobs.json (run → job id)
LOCKS = ".locks"  # OUT/.locks/: one lock file per run being worked on, and the manifest's
_SECTIONS = {"sweep", "prepare", "base", "eval", "variants", "slurm"}
EVAL_SPLITS = ("val", "train", "holdout")  # holdout: prepared with --val-from-train
# Where a run trains, not what it trains: not part of its recipe. amp is compared unless the spec says auto.
NOT_RECIPE = ("run_dir", "device", "workers", "verify")


@dataclass(frozen=True)
class SweepRun:
    variant: str
    seed: int
    run_dir: Path
    options: dict[str, Any]  # flat train keywords: base, variant, seed

    @property
    def key(self) -> tuple[str, int]:
        return self.variant, self.seed


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
    slurm: dict[str, Any] = field(default_factory=dict)  # [slurm]: SLURM_KEYS

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


def _typed(path: Path, where: str, values: Any) -> dict[str, Any]:
    """TOML values → train keywords in their field types (strings parsed as ``--set`` parses them); a value of
    the wrong type is an error naming the file, the table and the key."""
    from crosstask_cli.engine.config import FIELDS, parse_value

    values = _table(path, where, values)
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
            try:
                value = parse_value(info, value)
            except ConfigError:
                raise ConfigError(
                    f"{path}: [{where}] {key} = {_toml(value)}: expected {_expected(info.type)}"
                ) from None
        elif isinstance(value, list):
            value = tuple(value)
        elif isinstance(value, int) and not isinstance(value, bool) and info.type is float:
            value = float(value)
        _check_type(path, where, key, info, value)
        out[key] = value
    return out


def _check_type(path: Path, where: str, key: str, info, value: Any) -> None:
    """A TOML value of a type the option cannot take (``epochs = 1.5``, ``lr = true``, ``tasks = 3``)."""
    import typing

    if value is None:
        return
    tp = info.type
    if typing.get_origin(tp) is tuple:
        ok = isinstance(value, tuple) and all(_is_a(v, typing.get_args(tp)[0]) for v in value)
    else:
        ok = _is_a(value, tp)
    if not ok:
        raise ConfigError(f"{path}: [{where}] {key} = {_toml(value)}: expected {_expected(tp)}")


def _expected(tp: Any) -> str:
    import typing

    if typing.get_origin(tp) is tuple:
        return f"a list of {_type_word(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    return _type_word(tp)


def _is_a(value: Any, tp: Any) -> bool:
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp) if isinstance(tp, type) else True


def _type_word(tp: Any) -> str:
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value) if isinstance(value, str) else repr(value)


def _table(path: Path, where: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{where}] must be a table of keys and values, got {_toml(value)}")
    return value


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; every run's configuration is built once here, so a bad option is reported
    before anything trains. Errors name the file, the table and the key."""
    from crosstask_cli.engine.config import TrainConfig

    path = Path(path)
    raw = _read_toml(path)
    unknown = set(raw) - _SECTIONS
    if unknown:
        raise ConfigError(
            f"{path}: unknown table(s) {', '.join(sorted(unknown))}; expected {', '.join(sorted(_SECTIONS))}"
        )
    head = _check_head(path, _table(path, "sweep", raw.get("sweep", {})))
    variants = _table(path, "variants", raw.get("variants", {}))
    if not variants:
        raise ConfigError(f"{path}: no [variants.NAME] tables; a sweep needs at least one variant")
    for name in variants:
        if not name or "/" in name or name.startswith(".") or name != name.strip():
            raise ConfigError(f"{path}: variant name {name!r} cannot be a folder name")
    ev = _check_eval(path, _table(path, "eval", raw.get("eval", {})))
    prepare = _check_prepare(path, _table(path, "prepare", raw.get("prepare", {})))
    spec = SweepSpec(
        path=path,
        dataset=head["dataset"],
        out=Path(head["out"]),
        seeds=list(head["seeds"]),
        base=_typed(path, "base", raw.get("base", {})),
        variants={n: _typed(path, f"variants.{n}", v) for n, v in variants.items()},
        eval_split=ev.get("split", "val"),
        eval_checkpoint=ev.get("checkpoint", "best"),
        eval_data=ev.get("data"),
        prepare=prepare,
        slurm=check_slurm_table(path, raw.get("slurm", {})),
    )
    from crosstask_cli.engine.rundir import run_inputs
    from crosstask_cli.outputs import check_not_an_input

    for run in spec.runs():  # every configuration valid, and no run inside its inputs, before the first run trains
        try:
            cfg = TrainConfig.for_dataset(spec.dataset, **run.options)
            check_not_an_input(run.run_dir, "[sweep] out: the run", {**run_inputs(cfg), "the spec": path})
        except ConfigError as exc:
            raise ConfigError(f"{path}: variant {run.variant!r}: {exc}") from None
    _check_eval_split(spec)
    return spec


def _read_toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: tomli is the same parser
        import tomli as tomllib

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read the sweep spec ({exc.strerror or exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def _check_head(path: Path, head: dict) -> dict:
    """The [sweep] table: dataset, out and a list of distinct integer seeds."""
    from crosstask_cli.engine.config import DATASETS

    for key in ("dataset", "out", "seeds"):
        if key not in head:
            raise ConfigError(f"{path}: [sweep] needs {key!r}")
    extra = set(head) - {"dataset", "out", "seeds"}
    if extra:
        raise ConfigError(f"{path}: [sweep] knows dataset, out and seeds, not {', '.join(sorted(extra))}")
    if head["dataset"] not in DATASETS:
        raise ConfigError(f"{path}: [sweep] dataset must be one of {', '.join(DATASETS)}, got {_toml(head['dataset'])}")
    if not isinstance(head["out"], str) or not head["out"].strip():
        raise ConfigError(f"{path}: [sweep] out = {_toml(head['out'])}: expected the output folder as a string")
    seeds = head["seeds"]
    integers = isinstance(seeds, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)
    if not integers or not seeds:
        raise ConfigError(f"{path}: [sweep] seeds must be a non-empty list of integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{path}: [sweep] seeds repeat: {seeds}")
    return head


def _check_eval(path: Path, ev: dict) -> dict:
    bad_eval = set(ev) - {"split", "checkpoint", "data"}
    if bad_eval:
        raise ConfigError(f"{path}: [eval] knows split, checkpoint and data, not {', '.join(sorted(bad_eval))}")
    for key in ("split", "checkpoint", "data"):
        if key in ev and not isinstance(ev[key], str):
            raise ConfigError(f"{path}: [eval] {key} = {_toml(ev[key])}: expected a string")
    if ev.get("checkpoint", "best") not in ("best", "last"):
        raise ConfigError(f"{path}: [eval] checkpoint must be best or last, got {ev['checkpoint']!r}")
    if ev.get("split", "val") not in EVAL_SPLITS:
        raise ConfigError(f"{path}: [eval] split must be one of {', '.join(EVAL_SPLITS)}, got {ev['split']!r}")
    return ev


def _check_eval_split(spec: SweepSpec) -> None:
    """The [eval] split exists in every prepared dataset that the runs will be evaluated on (where it exists
    already; data prepared by the sweep or from a raw folder has train and val, and holdout when asked for)."""
    from crosstask_cli.data.prepared import is_prepared, read_meta

    folders = {spec.eval_data} if spec.eval_data else {run.options.get("data") for run in spec.runs()}
    for folder in sorted(f for f in folders if f):
        if is_prepared(Path(folder)):
            splits = read_meta(Path(folder)).splits
            if spec.eval_split not in splits:
                raise ConfigError(f"{spec.path}: [eval] split {spec.eval_split!r} is not a split of {folder} "
                                  f"({', '.join(splits)})")  # fmt: skip


def _check_prepare(path: Path, prepare: dict) -> dict[str, dict[str, Any]]:
    """[prepare]: synthetic (out, and the options of ``prepare synthetic``), cityscapes and nyu (src, out, and the
    options of ``prepare cityscapes|nyu``), each key checked against the command's options and types."""
    from crosstask_cli.data.prepare_options import PREPARE_FIELDS, SYNTHETIC_FIELDS

    bad_prep = set(prepare) - {"synthetic", "cityscapes", "nyu"}
    if bad_prep:
        raise ConfigError(f"{path}: [prepare] knows synthetic, cityscapes and nyu, not {', '.join(sorted(bad_prep))}")
    out = {}
    for kind, table in prepare.items():
        where = f"prepare.{kind}"
        table = _table(path, where, table)
        fields = SYNTHETIC_FIELDS if kind == "synthetic" else PREPARE_FIELDS
        required = ("out",) if kind == "synthetic" else ("src", "out")
        allowed = {*required, *(f for f in fields if f != "force"), *(("dataset",) if kind == "cityscapes" else ())}
        missing = [k for k in required if k not in table]
        if missing:
            raise ConfigError(f"{path}: [{where}] needs {', '.join(repr(k) for k in missing)}")
        unknown = set(table) - allowed
        if unknown:
            raise ConfigError(f"{path}: [{where}] knows {', '.join(sorted(allowed))}, not {', '.join(sorted(unknown))}")
        for key, value in table.items():
            tp = str if key in ("src", "out", "dataset") else fields[key].type
            if not _is_a(value, tp):
                raise ConfigError(f"{path}: [{where}] {key} = {_toml(value)}: expected {_type_word(tp)}")
        _check_prepare_options(path, where, kind, table)
        out[kind] = table
    return out


def _check_prepare_options(path: Path, where: str, kind: str, table: dict) -> None:
    """The values in range, as ``crosstask prepare`` checks them."""
    from crosstask_cli.data.prepare_options import PrepareOptions, SyntheticOptions

    cls = SyntheticOptions if kind == "synthetic" else PrepareOptions
    try:
        cls(**{k: v for k, v in table.items() if k not in ("src", "out", "dataset")})
    except ConfigError as exc:
        raise ConfigError(f"{path}: [{where}] {exc}") from None


SLURM_KEYS = {
    "partition": str, "time": (int, str), "gpus_per_run": int, "cpus": int, "mem": str, "account": str,
    "constraint": str, "qos": str, "array_parallelism": int, "setup": list, "extra": dict,
}  # fmt: skip


def check_slurm_table(path: Path, table: Any) -> dict[str, Any]:
    """The spec's ``[slurm]`` table: known keys of the right types (errors name the file, the table and the key)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [slurm] must be a table of keys and values")
    for key, value in table.items():
        if key not in SLURM_KEYS:
            raise ConfigError(f"{path}: [slurm] knows {', '.join(SLURM_KEYS)}, not {key}")
        kind = SLURM_KEYS[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ConfigError(f"{path}: [slurm] {key} = {value!r}: expected {_kind_word(kind)}")
    for key in ("gpus_per_run", "cpus", "array_parallelism"):
        if key in table and table[key] < (0 if key == "gpus_per_run" else 1):
            raise ConfigError(f"{path}: [slurm] {key} must be ≥ {0 if key == 'gpus_per_run' else 1}")
    if "time" in table:
        slurm_minutes(table["time"], path)
    if "setup" in table and not all(isinstance(x, str) for x in table["setup"]):
        raise ConfigError(f"{path}: [slurm] setup must be a list of shell lines")
    return table


def _kind_word(kind: Any) -> str:
    words = {str: "a string", int: "an integer", list: "a list", dict: "a table"}
    return " or ".join(words[k] for k in kind) if isinstance(kind, tuple) else words[kind]


def slurm_minutes(value: int | str, path: Path | str = "[slurm]") -> int:
    """A SLURM time limit (minutes, or ``MM``, ``HH:MM:SS``, ``D-HH:MM:SS``) in whole minutes (at least 1)."""
    if isinstance(value, int):
        minutes = value
    else:
        try:
            days, _, clock = value.rpartition("-")
            parts = [int(p) for p in clock.split(":")]
            h, m, s = ([0] * (3 - len(parts)) + parts) if len(parts) > 1 else (0, parts[0], 0)
            minutes = (int(days or 0) * 24 + h) * 60 + m + (1 if s else 0)
        except ValueError:
            raise ConfigError(f"{path}: [slurm] time = {value!r}: expected minutes or D-HH:MM:SS") from None
    if minutes < 1:
        raise ConfigError(f"{path}: [slurm] time must be at least 1 minute, got {value!r}")
    return minutes


# --- run records, recipes and the manifest ------------------------------------------------------------------


def read_manifest(where: str | Path, missing_ok: bool = True) -> dict:
    """A sweep manifest (``OUT/sweep.json``, or OUT); a missing one is empty with ``missing_ok``, else an error.
    Every entry of ``runs`` is checked to be a run record (variant, seed, run_dir)."""
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
    for i, row in enumerate(d["runs"], 1):
        ok = isinstance(row, dict) and isinstance(row.get("variant"), str) and isinstance(row.get("run_dir"), str)
        if not ok or not isinstance(row.get("seed"), int) or isinstance(row.get("seed"), bool):
            raise InputError(f"{path}: entry {i} of 'runs' is not a run record (an object with variant, seed and "
                             f"run_dir)")  # fmt: skip
    return d


def manifest_run_dir(manifest: str | Path, row: dict) -> Path:
    """Where a manifest entry's run is: ``run_dir`` relative to the manifest's folder (absolute in manifests of
    earlier versions); else OUT/<variant>/seed-<seed> beside the manifest. Never relative to the working
    directory, so a manifest reads the same from anywhere."""
    out = Path(manifest).parent
    given = Path(row["run_dir"])
    if given.is_absolute() and given.exists():
        return given
    if not given.is_absolute() and (out / given).exists():
        return out / given
    return out / row["variant"] / f"seed-{row['seed']}"


def recipe(cfg) -> dict[str, Any]:
    """What a run trains (a TrainConfig's flat settings, lists for tuples), without where it trains
    (:data:`NOT_RECIPE`)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.flat().items() if k not in NOT_RECIPE}


def recipe_hash(cfg) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(recipe(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def recipe_changes(trained: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """``key: trained → wanted`` for every setting that differs; an ``amp`` of auto matches the precision that
    training resolved it to."""
    changes = []
    for key in sorted(set(trained) | set(wanted)):
        old, new = trained.get(key), wanted.get(key)
        if old == new or (key == "amp" and new == "auto"):
            continue
        changes.append(
            f"{key}: {_toml(old) if old is not None else 'none'} → {_toml(new) if new is not None else 'none'}"
        )
    return changes


def changed_recipe(spec: SweepSpec, run: SweepRun) -> list[str]:
    """How the recipe the run directory was trained with (its config.json) differs from the spec's; [] when it
    does not, or when the run has not started."""
    from crosstask_cli.engine.config import TrainConfig

    config = run.run_dir / "config.json"
    if not config.is_file():
        return []
    try:
        trained = recipe(TrainConfig.load(config))
    except ConfigError as exc:
        return [f"its config.json cannot be read ({exc})"]
    return recipe_changes(trained, recipe(TrainConfig.for_dataset(spec.dataset, **run.options)))


def read_record(run: SweepRun) -> dict:
    """The run's ``sweep-run.json`` ({} when missing or unreadable: the files then say where the run stands)."""
    try:
        d = json.loads((run.run_dir / RUN_RECORD).read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def write_record(run: SweepRun, **fields: Any) -> None:
    """Update the run's ``sweep-run.json`` atomically (the fields given replace those of the same name)."""
    from crosstask_cli.atomic import atomic_write_json

    record = {**read_record(run), "format": "crosstask-sweep-run", "variant": run.variant, "seed": run.seed,
              **fields, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
    atomic_write_json(run.run_dir / RUN_RECORD, {k: v for k, v in record.items() if v is not None})


def run_status(run: SweepRun) -> str:
    """From the run directory: done (evaluated), trained (to be evaluated), failed (its last attempt failed),
    running (started, or interrupted: resumed next), pending."""
    if (run.run_dir / EVAL_FILE).is_file():
        return "done"
    status = read_record(run).get("status")
    if status in ("trained", "failed"):
        return status
    return "running" if (run.run_dir / "config.json").is_file() else "pending"


def read_jobs(spec: SweepSpec) -> dict[str, str]:
    try:
        d = json.loads((spec.out / SLURM_FOLDER / "jobs.json").read_text())
    except (OSError, ValueError):
        return {}
    return d if isinstance(d, dict) else {}


def run_lock_path(spec: SweepSpec, run: SweepRun) -> Path:
    return spec.out / LOCKS / f"{run.variant}.seed-{run.seed}.lock"


def rebuild_manifest(spec: SweepSpec) -> dict:
    """Rebuild ``OUT/sweep.json`` from the run directories (under the manifest's lock, atomically) and return it."""
    from crosstask_cli.atomic import atomic_write_json
    from crosstask_cli.locks import FileLock, is_locked

    rows, jobs = [], read_jobs(spec)
    for run in spec.runs():
        record, status = read_record(run), run_status(run)
        row = {"variant": run.variant, "seed": run.seed, "run_dir": f"{run.variant}/seed-{run.seed}",
               "status": status}  # fmt: skip
        holder = is_locked(run_lock_path(spec, run)) if status != "done" else None
        if holder is not None:  # a sweep process works on it now
            row.update(status="running", pid=holder)
        job = record.get("job") or jobs.get(f"{run.variant}/seed-{run.seed}")
        if job and status != "done":
            row["job"] = job
        for key in ("recipe", "started", "seconds", "error"):
            if key in record and (key != "error" or status == "failed"):
                row[key] = record[key]
        if status == "done":
            row["metrics"] = record.get("metrics") or _summary_or_none(run.run_dir / EVAL_FILE)
        rows.append(row)
    manifest = {"format": "crosstask-sweep", "spec": str(spec.path.resolve()), "dataset": spec.dataset,
                "seeds": spec.seeds, "variants": list(spec.variants), "runs": rows}  # fmt: skip
    spec.out.mkdir(parents=True, exist_ok=True)
    with FileLock(spec.out / LOCKS / "manifest.lock").acquire(wait=True):
        atomic_write_json(spec.out / MANIFEST, manifest)
    return manifest


def _summary_or_none(path: Path) -> dict | None:
    try:
        return _summary(path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


# --- commands for a scheduler ---------------------------------------------------------------------------------


def _set_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple | list):
        return ",".join(str(v) for v in value)
    return "none" if value is None else str(value)


def train_argv(spec: SweepSpec, run: SweepRun, afresh: bool = False, device: str | None = None) -> list[str] | None:
    """The ``crosstask train …`` arguments that train ``run`` as the sweep would (new runs with the full
    configuration as ``--set``, started ones ``--resume``, ``afresh`` ones ``--force``); None for a trained run,
    which is only evaluated."""
    from crosstask_cli.engine.config import FIELDS

    status = run_status(run)
    if status == "trained" and not afresh:
        return None
    parts = ["crosstask", "train", spec.dataset, "--run-dir", str(run.run_dir)]
    if status in ("running", "failed") and not afresh and (run.run_dir / "config.json").is_file():
        parts.append("--resume")
    else:
        parts += ["--seed", str(run.seed)]
        for key, value in run.options.items():
            if key != "seed":
                parts += ["--set", f"{FIELDS[key].path}={_set_value(value)}"]
        if (run.run_dir / "config.json").is_file():
            parts.append("--force")
    return parts + (["--device", device] if device else [])


def train_command(spec: SweepSpec, run: SweepRun, afresh: bool = False) -> str:
    """One shell line that trains (or resumes) and evaluates ``run`` as the sweep would; a trained run is only
    evaluated. ``afresh`` (its recipe changed, ``--rerun-changed``): trained again with ``--force``."""
    evaluate = " ".join(shlex.quote(p) for p in eval_args(spec, run))
    train = train_argv(spec, run, afresh)
    return evaluate if train is None else f"{' '.join(shlex.quote(p) for p in train)} && {evaluate}"


def eval_args(spec: SweepSpec, run: SweepRun, device: str | None = None) -> list[str]:
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
        "--no-energy",  # as the sweep's own evaluation: the compared metrics only
    ]
    data = spec.eval_data or run.options.get("data")
    if data:
        args += ["--data", str(data)]
    return args + (["--device", device] if device else [])


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
    elsewhere: list[str] = field(default_factory=list)  # runs another process was working on
    seconds: float = 0.0


class RecipeChanged(ConfigError):
    """Runs whose directories were trained with another recipe than the spec's."""


def check_recipes(
    spec: SweepSpec, runs: list[SweepRun], rerun_changed: bool = False
) -> dict[tuple[str, int], list[str]]:
    """The runs (by ``run.key``) whose recipe differs from the spec's, with the differences. Without
    ``rerun_changed`` any such run is a :class:`RecipeChanged` error that lists them (nothing has run yet)."""
    changed = {run.key: diff for run in runs if (diff := changed_recipe(spec, run))}
    if changed and not rerun_changed:
        lines = [f"{v}/seed-{seed}: {'; '.join(d[:6])}{' …' if len(d) > 6 else ''}"
                 for (v, seed), d in list(changed.items())[:5]]  # fmt: skip
        more = f" (and {len(changed) - 5} more)" if len(changed) > 5 else ""
        raise RecipeChanged(
            f"{spec.path}: {len(changed)} run(s) in {spec.out} were trained with another recipe than the spec's, so "
            f"they are neither reused nor resumed{more}: "
            + " | ".join(lines)
            + ". Restore the spec, or pass --rerun-changed to train them afresh"
        )
    return changed


def run_sweep(
    spec: SweepSpec,
    only: list[str] | None = None,
    device: str | None = None,
    on_run: Callable[[SweepRun, str], None] | None = None,
    on_result: Callable[[SweepRun, dict, float], None] | None = None,
    message: Callable[[str], None] = lambda m: None,
    keep_going: bool = False,
    rerun_changed: bool = False,
) -> SweepReport:
    """Train and evaluate every run that is not done, in spec order (see the module docstring).

    ``on_run(run, action)`` is called before a run (action: train, resume, evaluate); ``on_result(run, metrics,
    seconds)`` after it. A failing run stops the sweep (its error propagates) unless ``keep_going``. A run whose
    recipe changed is refused before anything runs (:func:`check_recipes`) unless ``rerun_changed``, which trains it
    afresh. A run another process holds is left to it (``report.elsewhere``).
    """
    from crosstask_cli.locks import FileLock, LockBusy

    runs = spec.runs(only)
    changed = check_recipes(spec, runs, rerun_changed)
    prepare_data(spec, message)
    rebuild_manifest(spec)
    report = SweepReport(
        total=len(runs), done_before=sum(run_status(r) == "done" and r.key not in changed for r in runs)
    )
    start = time.monotonic()
    for run in runs:
        if run_status(run) == "done" and run.key not in changed:
            continue
        lock = FileLock(run_lock_path(spec, run))
        try:
            lock.acquire()
        except LockBusy as busy:
            report.elsewhere.append(f"{run.variant}/seed-{run.seed}")
            message(f"{run.variant}/seed-{run.seed}: another sweep (PID {busy.pid or 'unknown'}) is running it")
            continue
        try:
            if run.key in changed:
                changed[run.key] = changed_recipe(spec, run)  # read again under the lock
            if run_status(run) == "done" and not changed.get(run.key):
                continue
            rebuild_manifest(spec)  # shows the run as running, with this process's PID
            result = _run_one(spec, run, device, bool(changed.get(run.key)), on_run, report, keep_going)
        finally:
            lock.release()
            rebuild_manifest(spec)
        if result is not None and on_result:
            on_result(run, *result)
    report.seconds = time.monotonic() - start
    return report


def _run_one(spec: SweepSpec, run: SweepRun, device: str | None, afresh: bool, on_run, report: SweepReport,
             keep_going: bool) -> tuple[dict, float] | None:  # fmt: skip
    """Train (afresh, or resume a started run), then evaluate one run, recording each step in its directory.
    Returns (metrics, seconds), or None when it failed and ``keep_going``."""
    import crosstask_cli as ct
    from crosstask_cli.engine.config import TrainConfig

    cfg = TrainConfig.for_dataset(spec.dataset, **run.options, **({"device": device} if device else {}))
    status, t0 = run_status(run), time.monotonic()
    if (run.run_dir / RUN_RECORD).is_file():
        write_record(run, status="running", error=None)
    try:
        if status in ("running", "failed") and not afresh and (run.run_dir / "config.json").is_file():
            if on_run:
                on_run(run, "resume")
            overrides = {"device": device} if device else None
            ct.train(cfg, run_dir=run.run_dir, resume=True, resume_overrides=overrides)
        elif status != "trained" or afresh:
            if on_run:
                on_run(run, "train")
            if run.run_dir.is_dir() and not (run.run_dir / "config.json").is_file():
                (run.run_dir / RUN_RECORD).unlink(missing_ok=True)  # a record of a failed start: nothing else
            ct.train(cfg, run_dir=run.run_dir, force=run.run_dir.exists())
        write_record(run, status="trained", recipe=recipe_hash(cfg), error=None)
        if on_run:
            on_run(run, "evaluate")
        metrics = evaluate_run(spec, run, device)
    except KeyboardInterrupt:
        if (run.run_dir / RUN_RECORD).is_file():
            write_record(run, status="running")  # resumable: the next sweep continues it
        raise
    except Exception as exc:  # noqa: BLE001 - recorded, then re-raised unless keep_going
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_record(run, status="failed", recipe=recipe_hash(cfg), error=f"{type(exc).__name__}: {exc}")
        report.failed.append((f"{run.variant}/seed-{run.seed}", str(exc)))
        if not keep_going:
            raise
        return None
    seconds = round(time.monotonic() - t0, 1)
    write_record(run, status="done", metrics=metrics, seconds=seconds)
    report.trained.append(f"{run.variant}/seed-{run.seed}")
    return metrics, seconds


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
    """One line per run: its status (``changed`` where its recipe differs from the spec's), name and folder."""
    for run in spec.runs(only):
        diff = changed_recipe(spec, run)
        status = "changed" if diff else run_status(run)
        detail = f"  ({'; '.join(diff[:4])}{' …' if len(diff) > 4 else ''})" if diff else ""
        write(f"{status:8} {run.variant}/seed-{run.seed}  {run.run_dir}{detail}")
