"""The training loop: one backward per step, per-epoch validation, atomic checkpoints, exact resume.

Run directory (DESIGN §5): config.json, metrics.csv, checkpoints/{last,best}.pt, plots/.
UI is delegated to a :class:`TrainReporter`, so the loop runs the same from Python and from the CLI.
"""

from __future__ import annotations

import csv
import io
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from crosstask_cli.atomic import atomic_write_text
from crosstask_cli.data.dataset import EpochSampler, PreparedDataset, normalisation
from crosstask_cli.data.prepare import check_compatible, prepare_synthetic, resolve_data
from crosstask_cli.data.prepared import DatasetError, read_meta
from crosstask_cli.engine import distributed as ddp
from crosstask_cli.engine.checkpoint import load_checkpoint, save_checkpoint
from crosstask_cli.engine.config import SELECT_METRICS, TrainConfig
from crosstask_cli.engine.device import amp_dtype, configure_device, memory_format, resolve_device
from crosstask_cli.engine.evaluator import evaluate
from crosstask_cli.errors import ConfigError, NonFiniteLossError, RunDirError
from crosstask_cli.losses import LOSS_NAMES, CrossTaskLoss
from crosstask_cli.models.network import build_model
from crosstask_cli.weighting import build_weighting


class TrainReporter:
    """Receives progress events; the default does nothing. The CLI subclasses it with Rich output."""

    def start(self, info: dict) -> None: ...
    def epoch_start(self, epoch: int, epochs: int, steps: int) -> None: ...
    def step(self, loss: float | None) -> None: ...
    def eval_start(self, split: str, images: int) -> None: ...
    def eval_advance(self, n: int) -> None: ...
    def epoch_end(self, row: dict) -> None: ...
    def message(self, text: str) -> None: ...
    def end(self, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    best_epoch: int | None
    best_score: float | None
    last_row: dict | None


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The model's optimizer: Adam with ``cfg.betas`` (the paper's), or SGD with momentum 0.9 (the original's
    alternative); both at ``cfg.lr``, scheduled by StepLR."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9)
    return torch.optim.Adam(params, lr=cfg.lr, betas=tuple(cfg.betas))


def prepare_training_data(cfg: TrainConfig, reporter: TrainReporter | None = None, progress=None) -> Path:
    """Resolve ``cfg.data`` to a prepared directory (generating the synthetic set when it is missing)."""
    from crosstask_cli.engine.config import PAPER_DEFAULTS

    data = Path(cfg.data or PAPER_DEFAULTS[cfg.dataset]["data"])
    kwargs = {"progress": progress} if progress else {}
    if cfg.dataset == "synthetic" and not data.exists():
        if reporter:
            reporter.message(
                f"generating the synthetic dataset in {data} ({cfg.synthetic_train}+{cfg.synthetic_val} images)"
            )
        prepare_synthetic(
            data, train=cfg.synthetic_train, val=cfg.synthetic_val, height=256, width=512, seed=0, **kwargs
        )
    if not data.exists():
        raise DatasetError(f"{data}: dataset directory not found (pass --data DIR; see `crosstask prepare --help`)")
    prepared = resolve_data(
        cfg.dataset, data, cfg.height, cfg.width, cfg.num_classes, cfg.depth, workers=cfg.workers or 1, **kwargs
    )
    meta = read_meta(prepared)
    check_compatible(meta, cfg.num_classes, None, prepared)
    if (meta["height"], meta["width"]) != (cfg.height, cfg.width):
        raise DatasetError(
            f"{prepared}: prepared at {meta['height']}×{meta['width']}, but training asks for {cfg.height}×{cfg.width}"
        )
    return prepared


def _read_rows(path: Path, max_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [r for r in csv.DictReader(f) if int(float(r["epoch"])) <= max_epoch]


def _write_rows(path: Path, rows: list[dict]) -> None:
    keys: list[str] = []
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _score(row: dict, metric: str) -> float:
    return float(row["val_loss"] if metric == "loss" else row[f"val_{metric}"])


def _better(a: float, b: float | None, metric: str) -> bool:
    if b is None or math.isnan(b):
        return not math.isnan(a)
    return a < b if SELECT_METRICS[metric] == "min" else a > b


class Trainer:
    def __init__(
        self, cfg: TrainConfig, run_dir: Path, reporter: TrainReporter | None = None, dist: ddp.DistInfo | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist or ddp.DistInfo()
        self.reporter = reporter if (reporter is not None and self.dist.is_main) else TrainReporter()
        self.device = resolve_device(ddp.device_for(self.dist, cfg.device))
        configure_device(self.device)
        self.ckpt_dir = self.run_dir / "checkpoints"
        if self.dist.is_main:
            for stale in self.ckpt_dir.glob(".*.tmp"):  # left by a process killed while writing a checkpoint
                stale.unlink(missing_ok=True)

    def _dataset_info(self, meta: dict) -> dict:
        return {
            "name": meta["dataset"],
            "num_classes": meta["num_classes"],
            "class_names": meta["class_names"],
            "palette": meta["palette"],
            "ignore_index": meta.get("ignore_index", 255),
            "depth": meta["depth"],
            "height": meta["height"],
            "width": meta["width"],
            "normalisation": normalisation(),
        }

    def setup(self, prepared: Path) -> None:
        cfg = self.cfg
        seed_everything(cfg.seed)
        self.prepared = prepared
        self.meta = read_meta(prepared)
        self.model = build_model(
            cfg.enc_layers,
            cfg.num_classes,
            cfg.pretrained,
            cfg.ttnet_batch_norm,
            cfg.wider_ttnet,
            cfg.encoder_weights,
            tasks=cfg.tasks,
            transfer=cfg.consistency != "none",
        )
        self.fmt = memory_format(self.device)
        if self.dist.enabled and cfg.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU)")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=self.fmt)
        kwargs = {"gradnorm": {"alpha": cfg.gradnorm_alpha, "params": cfg.gradnorm_params},
                  "dwa": {"temperature": cfg.dwa_temperature},
                  "pcgrad": {"seed": cfg.seed}}.get(cfg.weighting, {})  # fmt: skip
        if cfg.weighting == "pcgrad" and self.dist.enabled:
            raise ConfigError("--weighting pcgrad is not supported with several processes (torchrun)")
        task_names = tuple(f"{t}_task" for t in cfg.tasks)
        self.weighting = build_weighting(cfg.weighting, task_names, **kwargs).to(self.device)
        self.loss_fn = CrossTaskLoss(
            cfg.num_classes,
            cfg.alpha,
            cfg.gamma,
            cfg.lp,
            cfg.tdep_loss,
            cfg.tseg_loss,
            cfg.label_smoothing,
            self.meta.get("ignore_index", 255),
            cfg.consistency,
        )
        params = list(self.model.parameters()) + self.weighting.model_optimizer_parameters()
        self.optimizer = build_optimizer(cfg, params)
        self.weighting_optimizers = self.weighting.configure_optimizers(cfg.lr)  # GradNorm: its own Adam
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, cfg.scheduler_step_size, cfg.scheduler_gamma)
        self.amp = cfg.amp
        self.amp_dtype = amp_dtype(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        self.forward = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile:
            self.forward = torch.compile(self.forward)
        seed_everything(cfg.seed + self.dist.rank)  # per-rank randomness; the weights came from one seed

        self.train_ds = PreparedDataset(prepared, "train", augment=True, seed=cfg.seed)
        self.select_split = "holdout" if "holdout" in self.meta["splits"] else "val"
        self.val_ds = PreparedDataset(prepared, self.select_split, augment=False)
        if len(self.train_ds) == 0:
            raise DatasetError(f"{prepared}: the train split is empty")
        self.sampler = EpochSampler(
            len(self.train_ds), seed=cfg.seed, num_replicas=self.dist.world_size, rank=self.dist.rank
        )
        pin = self.device.type == "cuda"
        self.loader = DataLoader(
            self.train_ds,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.workers,
            pin_memory=pin,
            drop_last=self.sampler.per_rank > cfg.batch_size,
            persistent_workers=cfg.workers > 0,
            prefetch_factor=4 if cfg.workers > 0 else None,
        )
        self.epoch = 0
        self.step_count = 0
        self.best_score: float | None = None
        self.best_epoch: int | None = None
        self.rows: list[dict] = []
        self.nonfinite = 0
        self.partial: dict | None = None  # progress inside the current epoch, from a mid-epoch checkpoint

    # --- checkpoints -------------------------------------------------------------------------------
    def _payload(self, resumable: bool, row: dict | None, partial: dict | None = None) -> dict:
        payload = {
            "model_config": self.model.config.to_dict(),
            "dataset": self._dataset_info(self.meta),
            "train_config": self.cfg.to_dict(),
            "model": {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()},
            "weighting": {
                "name": self.cfg.weighting,
                "state": self.weighting.state_dict(),
                "weights": self.weighting.weights(),
            },
            "epoch": self.epoch,
            "step": self.step_count,
            "metrics": row or {},
        }
        if resumable:
            payload["weighting"]["optimizers"] = [o.state_dict() for o in self.weighting_optimizers]
            payload.update(
                optimizer=self.optimizer.state_dict(),
                scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(),
                rng=_rng_state(),
                best_score=self.best_score,
                best_epoch=self.best_epoch,
                nonfinite=self.nonfinite,
                partial_epoch=partial,
            )
        return payload

    def resume(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        if "optimizer" not in ckpt:
            raise RunDirError(f"{path}: checkpoint is not resumable (no optimizer state)")
        if "decoder_align_corners" not in ckpt["model_config"]:
            raise RunDirError(
                f"{path}: written by crosstask 0.1.0, whose decoders upsampled with align_corners=False; this version "
                "trains the original's align_corners=True decoders, so the run cannot continue the same model. Its "
                "checkpoints still load for eval/predict/export; start a new run to train further."
            )
        self.model.load_state_dict(ckpt["model"])
        self.weighting.load_state_dict(ckpt["weighting"]["state"])
        own = ckpt["weighting"].get("optimizers", [])
        if len(own) != len(self.weighting_optimizers):
            raise RunDirError(
                f"{path}: written by a version whose {self.cfg.weighting} weighting kept its parameters in the model's "
                "optimizer; it cannot be resumed exactly. Start a new run (--force) or keep using the older version."
            )
        for opt, state in zip(self.weighting_optimizers, own, strict=True):
            opt.load_state_dict(state)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        self.epoch, self.step_count = int(ckpt["epoch"]), int(ckpt["step"])
        self.best_score, self.best_epoch = ckpt.get("best_score"), ckpt.get("best_epoch")
        self.nonfinite = int(ckpt.get("nonfinite", 0))
        self.partial = ckpt.get("partial_epoch")
        self.rows = _read_rows(self.run_dir / "metrics.csv", self.epoch)

    # --- loop -------------------------------------------------------------------------------------
    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for opt in self.weighting_optimizers:
            opt.zero_grad(set_to_none=True)

    def _train_step(self, images, seg_t, depth_t, ids) -> dict[str, torch.Tensor] | None:
        self._zero_grad()
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp):
            pred = self.forward(images)
        losses = self.loss_fn(pred, seg_t, depth_t)
        total = self.weighting.combine({k: losses[k] for k in self.weighting.tasks}, self.model)
        # Every process must take the same decision, or DDP's collective calls would hang.
        if not ddp.all_true(bool(torch.isfinite(total)), self.device, self.dist):
            bad = [k for k, v in losses.items() if not torch.isfinite(v)] or (
                ["total (weighting)"] if not torch.isfinite(total) else ["(on another process)"]
            )
            names = [self.train_ds.files[int(i)] for i in ids]
            self.nonfinite += 1
            msg = (
                f"non-finite loss at epoch {self.epoch + 1} step {self.step_count + 1}: component(s) "
                f"{', '.join(bad)}; batch samples {', '.join(names[:8])}"
            )
            if self.nonfinite > self.cfg.skip_nonfinite:
                raise NonFiniteLossError(
                    msg + f". Stopped; the last good checkpoint is kept in {self.ckpt_dir}. "
                    "Lower --lr, or allow skips with --skip-nonfinite N."
                )
            self.reporter.message(msg + f" (skipped, {self.nonfinite}/{self.cfg.skip_nonfinite})")
            self._zero_grad()
            return None
        self.weighting.backward(total, {k: losses[k] for k in self.weighting.tasks}, self.model, self.scaler)
        ddp.average_gradients_(self.weighting.parameters(), self.dist)
        if self.step_count == 0:  # state a weighting took from this first batch becomes that of the global batch
            ddp.average_buffers_(self.weighting, self.dist)
        self.scaler.step(self.optimizer)
        for opt in self.weighting_optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        self.weighting.after_step()
        self.step_count += 1
        return {**{k: v.detach() for k, v in losses.items()}, "total": total.detach()}

    def run_epoch(self) -> dict:
        cfg = self.cfg
        self.model.train()
        per_rank = self.sampler.per_rank
        full = per_rank // cfg.batch_size if self.loader.drop_last else -(-per_rank // cfg.batch_size)
        steps = full if cfg.max_steps_per_epoch is None else min(full, cfg.max_steps_per_epoch)
        first = 0
        sums = torch.zeros(len(LOSS_NAMES) + 1, device=self.device)
        done = 0
        if self.partial is not None:  # resuming inside this epoch
            first = int(self.partial["batches"])
            if self.dist.is_main:  # the checkpoint holds every process's sums; the others restart theirs at 0
                done, sums = int(self.partial["done"]), self.partial["sums"].to(self.device)
            self.partial = None
        self.sampler.set_epoch(self.epoch, start=first * cfg.batch_size)
        self.reporter.epoch_start(self.epoch + 1, cfg.epochs, steps)
        for _ in range(first):
            self.reporter.step(None)
        start = time.perf_counter()
        for i, (images, seg_t, depth_t, ids) in enumerate(self.loader, start=first):
            if i >= steps:
                break
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
            seg_t = seg_t.to(self.device, non_blocking=True)
            depth_t = depth_t.to(self.device, non_blocking=True)
            out = self._train_step(images, seg_t, depth_t, ids)
            if out is not None:
                sums += torch.stack([out[k] for k in (*LOSS_NAMES, "total")]).float()
                done += 1
            show = out is not None and (i % 5 == 0 or i == steps - 1)
            self.reporter.step(float(out["total"]) if show else None)
            if cfg.save_every_steps and (i + 1) % cfg.save_every_steps == 0 and i + 1 < steps:
                part_sums, part_done = sums.detach(), done
                if self.dist.enabled:  # every process reaches this step together: keep all of their sums
                    packed = torch.cat([part_sums, torch.tensor([float(done)], device=self.device)])
                    packed = ddp.all_reduce_sum_(packed, self.dist)
                    part_sums, part_done = packed[:-1], int(packed[-1].item())
                if self.dist.is_main:
                    partial = {"batches": i + 1, "done": part_done, "sums": part_sums.cpu()}
                    save_checkpoint(
                        self.ckpt_dir / "last.pt", self._payload(True, self.rows[-1] if self.rows else None, partial)
                    )
        train_seconds = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        if self.dist.enabled:  # mean over every process's batches
            packed = ddp.all_reduce_sum_(torch.cat([sums, torch.tensor([float(done)], device=self.device)]), self.dist)
            sums, done = packed[:-1], int(packed[-1].item())
        means = (sums / max(done, 1)).tolist()
        row: dict = {"epoch": self.epoch, "step": self.step_count, "lr": lr}
        row.update({f"train_{k}": v for k, v in zip((*LOSS_NAMES, "total"), means, strict=True)})
        row.update({f"weight_{k}": v for k, v in self.weighting.weights().items()})
        self.weighting.epoch_end({t: row[f"train_{t}"] for t in self.weighting.tasks})  # DWA: next epoch's weights

        n_val = (
            len(self.val_ds)
            if cfg.max_val_batches is None
            else min(len(self.val_ds), cfg.max_val_batches * cfg.eval_batch_size)
        )
        self.reporter.eval_start(self.select_split, n_val)
        ev = evaluate(
            self.model,
            self.val_ds,
            dist=self.dist,
            batch_size=cfg.eval_batch_size,
            device=self.device,
            loss_fn=self.loss_fn,
            max_batches=cfg.max_val_batches,
            amp=self.amp,
            progress=self.reporter.eval_advance,
        )
        row["val_split"] = self.select_split
        row["val_loss"] = sum(ev["loss"][t] for t in self.weighting.tasks)
        row.update({f"val_{k}": v for k, v in ev["loss"].items()})
        row.update({f"val_{k}": ev["segmentation"][k] for k in ("miou", "pixel_acc")})
        row.update({f"val_{k}": ev["depth"][k] for k in ("abs_err", "rel_err", "rmse", "delta1")})
        row.update({f"val_{k}": v for k, v in ev.get("consistency", {}).items()})
        row["seconds"] = time.perf_counter() - start
        row["train_seconds"] = train_seconds
        return row

    def fit(self) -> TrainResult:
        cfg = self.cfg
        self.reporter.start(
            {
                "run_dir": str(self.run_dir),
                "device": str(self.device),
                "data": str(self.prepared),
                "train": len(self.train_ds),
                "select_split": self.select_split,
                "val": len(self.val_ds),
                "params": sum(p.numel() for p in self.model.parameters()),
                "start_epoch": self.epoch,
            }
        )
        row = self.rows[-1] if self.rows else None
        while self.epoch < cfg.epochs:
            row = self.run_epoch()
            score = _score(row, cfg.select_metric)
            improved = _better(score, self.best_score, cfg.select_metric)
            if improved:
                self.best_score, self.best_epoch = score, self.epoch
            row["best"] = int(improved)
            self.rows.append(row)
            if not self.dist.is_main:
                continue
            if improved:
                save_checkpoint(self.ckpt_dir / "best.pt", self._payload(False, row))
            save_checkpoint(self.ckpt_dir / "last.pt", self._payload(True, row))
            _write_rows(self.run_dir / "metrics.csv", self.rows)
            try:
                from crosstask_cli.visualize import plot_training_curves

                plot_training_curves(self.rows, self.run_dir / "plots")
            except Exception as exc:  # noqa: BLE001 - a plotting failure must not stop training
                self.reporter.message(f"could not draw training curves: {exc}")
            self.reporter.epoch_end(row)
        ddp.barrier(self.dist)
        result = TrainResult(self.run_dir, self.epoch, self.best_epoch, self.best_score, row)
        self.reporter.end(result)
        return result


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def train(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    resume: bool = False,
    force: bool = False,
    reporter: TrainReporter | None = None,
    data_progress=None,
    resume_overrides: dict | None = None,
) -> TrainResult:
    """Train a CrossTaskNet as configured; returns where the run went and its best score.

    ``resume`` continues ``run_dir`` from ``checkpoints/last.pt`` with the config saved there (``cfg`` is
    ignored); ``resume_overrides`` may change ``epochs``, ``device`` and ``workers``. Without ``resume``, an existing run in
    ``run_dir`` is an error unless ``force``, which replaces it.
    """
    dist = ddp.init_distributed(cfg.device)
    try:
        return _train(cfg, run_dir, resume, force, reporter, data_progress, resume_overrides, dist)
    finally:
        ddp.cleanup(dist)


def _train(cfg, run_dir, resume, force, reporter, data_progress, resume_overrides, dist: ddp.DistInfo) -> TrainResult:
    if run_dir is None and cfg.run_dir is None and dist.enabled:
        raise RunDirError("distributed training needs --run-dir (every process must agree on it)")
    run_dir = Path(run_dir or cfg.run_dir or default_run_dir(cfg))
    last = run_dir / "checkpoints" / "last.pt"
    fresh_resume = False
    if resume:
        if not last.is_file() and not (run_dir / "config.json").is_file():
            raise RunDirError(f"--resume: {run_dir} holds no checkpoint (expected {last})")
        # A run killed before its first checkpoint restarts from scratch with its saved config.
        fresh_resume = not last.is_file()
        saved = TrainConfig.load(run_dir / "config.json")
        if saved.dataset != cfg.dataset:
            raise RunDirError(f"{run_dir} is a {saved.dataset} run, not {cfg.dataset}")
        overrides = dict(resume_overrides or {})
        unknown = set(overrides) - {"epochs", "device", "workers"}
        if unknown:
            raise RunDirError(f"--resume continues the saved config; cannot change {', '.join(sorted(unknown))}")
        cfg = saved.replace(**overrides)
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise RunDirError(f"{run_dir} already holds a run; use --resume to continue it or --force to replace it")
        if run_dir.is_file():
            raise RunDirError(f"{run_dir} is a file, expected a run directory")
        ddp.barrier(dist)  # every process has checked before the main one deletes
        if dist.is_main:
            shutil.rmtree(run_dir)
    cfg = cfg.replace(run_dir=str(run_dir))
    reporter = (reporter or TrainReporter()) if dist.is_main else TrainReporter()
    if dist.is_main:  # prepares (and may write a cache) once; the others then find it
        prepared = prepare_training_data(cfg, reporter, data_progress)
    ddp.barrier(dist)
    if not dist.is_main:
        prepared = prepare_training_data(cfg)
    trainer = Trainer(cfg, run_dir, reporter, dist)
    trainer.setup(prepared)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume and not fresh_resume:
        trainer.resume(last)
    elif fresh_resume:
        reporter.message(f"{run_dir} has no checkpoint yet: starting its saved config from the beginning")
    elif dist.is_main:
        cfg.save(run_dir / "config.json")
    ddp.barrier(dist)
    return trainer.fit()
