"""Where a command may write: output paths checked before any work starts, and what ``--force`` may replace.

``--force`` replaces only a folder crosstask made, recognised by the file it always writes there (its *marker*):
a prepared dataset (``meta.json`` of the prepared format), a run directory (``config.json``), a predictions folder
(``predictions.json``) or rendered synthetic scenes (``synthetic.json``). A folder that is, or contains, one of the
command's inputs is refused whatever the flags.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from crosstask_cli.errors import ConfigError

# kind → (marker file, a key its JSON object must hold ("" for none), the value that key must have (None: any))
MARKERS: dict[str, tuple[str, str, str | None]] = {
    "prepared dataset": ("meta.json", "format", "crosstask-prepared"),  # data.prepared.FORMAT
    "run directory": ("config.json", "", None),
    "predictions folder": ("predictions.json", "inputs", None),
    "synthetic scene folder": ("synthetic.json", "generator", None),
    "demo folder": ("demo.json", "generator", None),
}

# In a folder a command is still writing (predict): {"kind": one of MARKERS, "pid": …}. A folder holding it was
# made by crosstask, so a rerun may complete it and --force replace it, even where the run died before its marker.
PARTIAL = ".crosstask-partial.json"

Inputs = Mapping[str, "str | Path | None"]  # the input's option name (e.g. "--data") → its path


def is_partial(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` holds the partial marker of an unfinished ``kind`` output (:data:`PARTIAL`)."""
    try:
        content = json.loads((Path(folder) / PARTIAL).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.get("kind") == kind


def mark_partial(folder: str | Path, kind: str) -> None:
    """Write the partial marker into ``folder`` (created if missing) before a command writes its outputs there."""
    from crosstask_cli.atomic import atomic_write_json

    atomic_write_json(Path(folder) / PARTIAL, {"kind": kind, "pid": os.getpid(), "created_by": "crosstask"})


def made_by_crosstask(folder: Path, kind: str) -> bool:
    """Whether ``folder`` holds the marker of ``kind`` (see :data:`MARKERS`) or its partial marker (an
    interrupted command's, :data:`PARTIAL`), so ``--force`` may replace it."""
    if is_partial(folder, kind):
        return True
    name, key, value = MARKERS[kind]
    marker = Path(folder) / name
    if not marker.is_file():
        return False
    try:
        content = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(content, dict) or (key and key not in content):
        return False
    return value is None or content[key] == value


def clear_folder(folder: Path, keep: tuple[str, ...] = ()) -> None:
    """Remove everything in ``folder`` except the entries named in ``keep`` (a folder crosstask made, after
    :func:`check_output_dir` or :func:`made_by_crosstask` said so); symlinks are removed, not followed."""
    import shutil

    for entry in Path(folder).iterdir():
        if entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _resolved(path: str | Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))  # no symlink resolution needed to compare lexically…


def _real(path: str | Path) -> Path:
    return Path(path).expanduser().resolve()  # …but symlinks can alias folders, so compare both ways


def contains(folder: str | Path, path: str | Path) -> bool:
    """``path`` is ``folder`` itself or lies inside it (lexically or after resolving symlinks)."""
    for f, p in ((_resolved(folder), _resolved(path)), (_real(folder), _real(path))):
        if f == p or f in p.parents:
            return True
    return False


CACHE_FOLDER = ".crosstask"  # inside a raw dataset: crosstask's prepared copies of it (data.prepare.CACHE_FOLDER)


def check_not_an_input(out: str | Path, flag: str, inputs: Inputs, inside_ok: bool = False) -> None:
    """Refuse an output folder that is an input, contains one, or lies inside an input folder (``--force`` or
    not). Allowed inside: a raw dataset's cache folder (:data:`CACHE_FOLDER`), which crosstask itself owns, and,
    with ``inside_ok``, any folder (figures added beside the predictions or run they draw)."""
    for name, inp in inputs.items():
        if inp is None:
            continue
        if contains(out, inp):
            what = "is" if _real(out) == _real(inp) or _resolved(out) == _resolved(inp) else "contains"
            raise ConfigError(
                f"{flag} {out} {what} the input {name} {inp}; crosstask never writes over its inputs, choose another "
                f"{flag}"
            )
        if not inside_ok and Path(inp).is_dir() and contains(inp, out) and not _in_cache(inp, out):
            raise ConfigError(
                f"{flag} {out} lies inside the input {name} {inp}; crosstask never writes into its inputs, choose a "
                "folder outside it"
            )


def _in_cache(folder: str | Path, path: str | Path) -> bool:
    try:
        rel = _resolved(path).relative_to(_resolved(folder))
    except ValueError:
        return False
    return bool(rel.parts) and rel.parts[0] == CACHE_FOLDER


def check_output_dir(out: str | Path, kind: str, flag: str, force: bool, inputs: Inputs | None = None) -> Path:
    """Check an output folder before the work starts; returns it as an absolute path.

    Absent or empty: fine. A file: refused. Non-empty: refused without ``force``; with it, only a ``kind`` folder
    that crosstask made (its marker, :data:`MARKERS`) may be replaced. A folder that is or contains one of
    ``inputs`` is refused whatever ``force`` says.
    """
    out = _resolved(out)
    check_not_an_input(out, flag, inputs or {})
    if not out.exists():
        _check_creatable(out, flag)
        return out
    if not out.is_dir():
        raise ConfigError(f"{flag} {out} is a file, expected a folder for the {kind}")
    if not any(out.iterdir()):
        return out
    marker = MARKERS[kind][0]
    if not force:
        raise FileExistsError(f"{flag} {out} already exists and is not empty; pass --force to replace it")
    if not made_by_crosstask(out, kind):
        raise ConfigError(
            f"{flag} {out} is not a {kind} made by crosstask (no {marker} of its own); --force replaces only what "
            "crosstask made: remove it yourself or choose another folder"
        )
    return out


def _check_creatable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a writable folder."""
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {path}: permission denied, cannot create it in {parent}")


def check_output_file(path: str | Path | None, flag: str, inputs: Inputs | None = None) -> Path | None:
    """Check a file to be written (``--json``, ``--csv``, ``--onnx``, …) before the work starts: not a folder,
    its folder creatable and writable, not one of ``inputs`` and not inside an input folder. Returns it (absolute)
    or None."""
    if path is None:
        return None
    p = _resolved(path)
    if str(path).endswith(("/", os.sep)) or p.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give the path of the file to write")
    for name, inp in (inputs or {}).items():
        if inp is None:
            continue
        if _resolved(inp) == p or _real(inp) == _real(p):
            raise ConfigError(f"{flag} {path} is the input {name}; crosstask never writes over its inputs")
        if Path(inp).is_dir() and contains(inp, p):  # a dataset's meta.json, a run's metrics.csv
            raise ConfigError(f"{flag} {path} lies inside the input {name} {inp}; crosstask never writes into its "
                              f"inputs, choose a file outside it")  # fmt: skip
    if p.exists() and not os.access(p, os.W_OK):
        raise PermissionError(f"{flag} {path}: permission denied, cannot replace it")
    _check_creatable(p, flag)
    return p


def check_output_folder(path: str | Path, flag: str, inputs: Inputs | None = None) -> Path:
    """Check a folder that a command adds files to (figures) before the work starts: a folder or creatable, and
    writable, neither one of ``inputs`` nor holding one (inside one is fine: panels go to PRED_DIR/panels, curves to
    RUN/plots by default). Nothing in it is removed, so no ``--force`` rule applies."""
    check_not_an_input(path, flag, inputs or {}, inside_ok=True)
    p = _resolved(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path} is a file, expected a folder")
    if p.exists():
        if not os.access(p, os.W_OK | os.X_OK):
            raise PermissionError(f"{flag} {path}: permission denied, cannot write there")
    else:
        _check_creatable(p, flag)
    return p
