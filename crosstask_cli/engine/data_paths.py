"""Which dataset a checkpoint is evaluated on: the one given, else the one it was trained on, prepared as needed."""

from __future__ import annotations

from pathlib import Path

from crosstask_cli.errors import InputError


def default_data(ckpt: dict) -> Path:
    from crosstask_cli.engine.config import flat_config

    data_str = flat_config(ckpt.get("train_config", {})).get("data") or ckpt.get("imported", {}).get("data")
    if not data_str:
        raise InputError("the checkpoint records no dataset path; pass --data DIR")
    return Path(data_str)


def resolve_eval_data(ckpt: dict, data: Path | None) -> Path:
    from crosstask_cli.data.datasets import known_or_default
    from crosstask_cli.data.prepare import check_compatible, resolve_data
    from crosstask_cli.data.prepared import read_meta

    ds = ckpt["dataset"]
    if data is None:
        data = default_data(ckpt)
    name = known_or_default(ds["name"])
    prepared = resolve_data(name, data, ds["height"], ds["width"], ds["num_classes"], ds["depth"]["kind"])
    check_compatible(read_meta(prepared), ds["num_classes"], ds["depth"]["kind"], prepared, ds.get("class_names"))
    return prepared
