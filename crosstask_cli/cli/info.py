"""``crosstask info CKPT``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from crosstask_cli.cli.common import esc, fmt, handle_errors, out

HELP = "Show what a checkpoint holds: model, dataset, training config, epoch and metrics."


def _network(mc: dict) -> str:
    from crosstask_cli.architectures import ARCHITECTURES

    arch = mc.get("arch", "resnet")
    if arch == "resnet" or arch not in ARCHITECTURES:
        return f"ResNet-{mc.get('enc_layers')}"
    size = mc.get("input_size")
    return ARCHITECTURES[arch].title + (f" (built for {size[0]}×{size[1]})" if size else "")


@handle_errors
def info_command(ckpt: Path = typer.Argument(..., help="A crosstask checkpoint (.pt).")) -> None:
    from crosstask_cli.engine.checkpoint import load_checkpoint

    c = load_checkpoint(ckpt)
    table = Table(title=esc(ckpt), show_header=False)
    mc, ds = c["model_config"], c["dataset"]
    table.add_row(
        "model",
        f"CrossTaskNet {_network(mc)}, {mc['num_classes']} classes"
        + (", TTNet BN" if mc["ttnet_batch_norm"] else "")
        + (", wider TTNet" if mc["wider_ttnet"] else ""),
    )
    from crosstask_cli.errors import CrosstaskError
    from crosstask_cli.models.network import ModelConfig

    try:
        config = ModelConfig(**{k: v for k, v in mc.items() if k in ModelConfig.__dataclass_fields__})
        table.add_row("tasks", ", ".join(config.tasks))
        nets = ", ".join(f"{s}→{t}" for s, t in config.pairs) or "none"
        table.add_row("TaskTransferNets", nets)
    except (CrosstaskError, TypeError, ValueError):
        pass  # the description does not build; `eval`/`predict` say why
    table.add_row(
        "parameters",
        f"{sum(v.numel() for k, v in c['model'].items() if 'running' not in k and 'num_batches' not in k):,}",
    )
    table.add_row(
        "dataset",
        f"{ds['name']} {ds['height']}×{ds['width']}, depth {ds['depth']['kind']} ({ds['depth'].get('unit', '')})",
    )
    table.add_row("classes", ", ".join(ds["class_names"]))
    table.add_row("epoch / step", f"{c.get('epoch')} / {c.get('step')}")
    table.add_row("resumable", "yes" if "optimizer" in c else "no")
    from crosstask_cli.engine.config import flat_config

    tc = flat_config(c.get("train_config", {}))
    if tc:
        table.add_row(
            "training",
            (f"method {tc.get('method')}, " if tc.get("method", "standard") != "standard" else "")
            + f"weighting {tc.get('weighting')}, lp {tc.get('lp')}, tdep {tc.get('tdep_loss')}, "
            f"tseg {tc.get('tseg_loss')}, α {tc.get('alpha')}, γ {tc.get('gamma')}, lr {tc.get('lr')}",
        )
    for k in ("val_miou", "val_pixel_acc", "val_abs_err", "val_rel_err"):
        if k in c.get("metrics", {}):
            table.add_row(k, fmt(float(c["metrics"][k])))
    out.print(table)
