"""Rich rendering of training progress, shared by `crosstask train` and `crosstask demo`."""

from __future__ import annotations

from rich.table import Table

from crosstask_cli.cli.common import err, esc, fmt_sig


def epoch_columns(record) -> list[tuple[str, float | None, float | None]]:
    """The columns of the per-epoch table as (heading, train value, validation value): each task's direct loss,
    the transferred losses (each, for up to two; their sum ``transfer`` beyond), the total loss, and two compared
    metrics of each trained task. For seg and depth: seg, depth, tseg, tdepth, loss, mIoU, pixacc, abs, absrel."""
    from crosstask_cli.tasks import all_specs, get_task, is_transfer_loss

    tasks = [s.name for s in all_specs() if s.name in record.train]
    transfers = [k for k in record.train if is_transfer_loss(k)]
    cols = [(t, record.train.get(t), record.val.get(t)) for t in tasks]
    if len(transfers) <= 2:
        cols += [(k, record.train.get(k), record.val.get(k)) for k in transfers]
    else:
        cols.append(
            ("transfer", sum(record.train[k] for k in transfers), sum(record.val.get(k, 0.0) for k in transfers))
        )
    cols.append(("loss", record.train.get("total"), record.val.get("loss")))
    short = {"miou": "mIoU", "pixel_acc": "pixacc", "abs_err": "abs", "rel_err": "absrel"}
    for t in tasks:
        for m in get_task(t).compared[:2]:
            cols.append((short.get(m, get_task(t).titles.get(m, m)), None, record.val.get(m)))
    return cols


def rich_train_reporter():
    """A TrainReporter that draws Rich progress bars and a table per epoch on stderr (train and demo)."""
    from rich.progress import Progress

    from crosstask_cli.cli.common import progress_columns
    from crosstask_cli.engine.trainer import TrainReporter

    class RichReporter(TrainReporter):
        def __init__(self) -> None:
            self.progress = Progress(*progress_columns(), console=err, transient=True)
            self.task = None
            self.run_dir: str | None = None

        def start(self, info: dict) -> None:
            self.run_dir = info["run_dir"]  # for the resume hint after Ctrl-C
            resumed = f", resuming after epoch {info['start_epoch']}" if info["start_epoch"] else ""
            err.print(
                f"[bold]training[/] on {info['device']} ({info.get('precision', 'fp32')}): {info['train']} train images, model selection on "
                f"'{info['select_split']}' ({info['val']} images), {info['params']:,} parameters{resumed}\n"
                f"run directory: [bold]{esc(info['run_dir'])}[/]"
            )
            self.progress.start()

        def epoch_start(self, epoch: int, epochs: int, steps: int) -> None:
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {epoch}/{epochs}", total=steps, info="")

        def step(self, loss: float | None) -> None:
            if loss is not None:
                self.progress.update(self.task, advance=1, info=f"loss {loss:.4f}")
            else:
                self.progress.advance(self.task)

        def eval_start(self, split: str, images: int) -> None:
            self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"validate ({split})", total=images, info="")

        def eval_advance(self, n: int) -> None:
            self.progress.advance(self.task, n)

        def epoch_end(self, record) -> None:
            from rich import box

            weights = " ".join(f"{k.removesuffix('_task')} {fmt_sig(float(v))}" for k, v in record.weights.items())
            title = f"epoch {record.epoch} · {record.seconds:.0f} s · lr {record.lr:.2g} · task weights {weights}" + (
                " · [bold green]★ best[/]" if record.best else ""
            )
            t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1))
            columns = epoch_columns(record)
            for name in ("", *(c[0] for c in columns)):
                t.add_column(name, justify="right" if name else "left", no_wrap=True)
            t.add_row("train", *(fmt_sig(float(c[1])) if c[1] is not None else "" for c in columns))
            t.add_row(record.val_split, *(fmt_sig(float(c[2])) if c[2] is not None else "" for c in columns))
            self.progress.console.print(t)

        def message(self, text: str) -> None:
            self.progress.console.print(f"[yellow]{esc(text)}[/]")

        def end(self, result) -> None:
            self.progress.stop()

    return RichReporter()
