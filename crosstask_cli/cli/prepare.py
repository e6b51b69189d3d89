"""``crosstask prepare {cityscapes,nyu,synthetic}``."""

from __future__ import annotations

import inspect
from pathlib import Path

import typer

from crosstask_cli.cli.common import CLIError, err, esc, handle_errors, out, progress_factory
from crosstask_cli.cli.options import UNSET, parameter, signature, values
from crosstask_cli.data.datasets import dataset_info
from crosstask_cli.data.prepare_options import PREPARE_FIELDS, SYNTHETIC_FIELDS, SyntheticOptions

app = typer.Typer(
    help="Convert a dataset into crosstask's prepared format (memory-mapped arrays + meta.json), or render "
    "the synthetic street scenes.",
    no_args_is_help=True,
)


def _report(path: Path) -> None:
    from crosstask_cli.data.prepared import read_meta

    meta = read_meta(path)
    splits = ", ".join(f"{k}: {v}" for k, v in meta.splits.items())
    out.print(
        f"[green]prepared[/] {meta.dataset} → [bold]{esc(path)}[/] ({meta.height}×{meta.width}, "
        f"{meta.num_classes} classes{f' ({meta.categories} categories)' if meta.categories else ''}, depth "
        f"{meta.depth_kind}; {splits})"
    )


def _require_src(src: Path | None) -> Path:
    if src is None:
        raise CLIError("missing --src: the dataset directory to convert")
    return src


def _command(name: str, run, fields: dict, head: list[inspect.Parameter], include, defaults=None, doc: str = ""):
    """Register ``prepare NAME`` with the parameters ``head`` and the ``include``d options of ``fields`` (their
    defaults, or ``defaults``); ``run(**options)`` does the work."""
    chosen = [fields[k] for k in include]
    params = [*head, *(parameter(f, (defaults or {}).get(f.name, UNSET)) for f in chosen)]
    command = handle_errors(run)
    command.__signature__ = signature(params)
    command.__doc__ = doc
    app.command(name)(command)


SRC = {
    "cityscapes": "Cityscapes in the official layout (leftImg8bit/, gtFine/, disparity/, optional camera/) or MTAN's "
    "preprocessed layout ({train,val}/{image,label_7,label_19,depth}/).",
    "nyu": "MTAN's preprocessed NYUv2: {train,val}/{image,label,depth,normal}/<i>.npy (normal/ kept as the normal task).",
}


def _head(kind: str) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter("src", kw, annotation=Path, default=typer.Option(None, "--src", help=SRC[kind])),
        inspect.Parameter("out_dir", kw, annotation=Path,
                          default=typer.Option(..., "--out", help="Output directory of the prepared dataset.")),
    ]  # fmt: skip


def _cityscapes(src: Path | None, out_dir: Path, **options) -> None:
    from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes

    opts = PrepareOptions(**values(PREPARE_FIELDS, options))
    with progress_factory() as progress:
        path = prepare_cityscapes(_require_src(src), out_dir, opts, progress)
    _report(path)


def _nyu(src: Path | None, out_dir: Path, **options) -> None:
    from crosstask_cli.data.prepare import PrepareOptions, prepare_nyu

    opts = PrepareOptions(**values(PREPARE_FIELDS, options), num_classes=13, depth="metric")
    with progress_factory() as progress:
        path = prepare_nyu(_require_src(src), out_dir, opts, progress)
    _report(path)


def _synthetic(out_dir: Path, **options) -> None:
    from crosstask_cli.data.prepare import prepare_synthetic

    o = SyntheticOptions(**values(SYNTHETIC_FIELDS, options))
    with progress_factory() as progress:
        path = prepare_synthetic(out_dir, o.train, o.val, o.height, o.width, o.seed, o.force, progress)
    out.print(
        f"[green]rendered[/] {o.train} train + {o.val} val scenes ({o.height}×{o.width}) → [bold]{esc(path)}[/] "
        "(Cityscapes raw layout, plus normal/; use it with `--data` or `crosstask prepare cityscapes --src`)"
    )
    err.print("", end="")


_command("cityscapes", _cityscapes, PREPARE_FIELDS, _head("cityscapes"),
         ("height", "width", "num_classes", "depth", "categories", "val_from_train", "seed", "workers", "force"),
         doc="Prepare Cityscapes (official raw or MTAN layout, detected automatically).")  # fmt: skip
_command("nyu", _nyu, PREPARE_FIELDS, _head("nyu"), ("height", "width", "val_from_train", "seed", "workers", "force"),
         defaults=dict(zip(("height", "width"), dataset_info("nyu").size, strict=True)),
         doc="Prepare NYUv2 (13 classes, metric depth, surface normals) from MTAN's preprocessed arrays.")  # fmt: skip
_command("synthetic", _synthetic, SYNTHETIC_FIELDS, [inspect.Parameter(
    "out_dir", inspect.Parameter.KEYWORD_ONLY, annotation=Path, default=typer.Option(
        Path("data/synthetic"), "--out", help="Where to write the scenes (official Cityscapes raw layout)."))],
    tuple(SYNTHETIC_FIELDS), doc="Render procedural street scenes with exact labels, depth and surface normals, "
    "written as Cityscapes raw files (and normal/).")  # fmt: skip
