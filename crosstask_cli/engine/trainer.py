"""The training loop: one backward per step, per-epoch validation, exact resume.

The loop trains and validates; what happens around it is elsewhere: the run directory's rules
(:mod:`~crosstask_cli.engine.rundir`), checkpoint contents and RNG (:mod:`~crosstask_cli.engine.state`), and
best-epoch selection, checkpoints, the metrics log and curves as callbacks on its events
(:mod:`~crosstask_cli.engine.callbacks`). Progress goes to a :class:`TrainReporter`, so the loop runs the same
from Python and from the CLI.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from crosstask_cli.architectures import get_arch
from crosstask_cli.data.dataset import EpochSampler, PreparedDataset, normalisation
from crosstask_cli.data.prepare import TrainingData, prepare_training_data
from crosstask_cli.data.prepared import read_meta
from crosstask_cli.engine import distributed as ddp
from crosstask_cli.engine import rundir
from crosstask_cli.engine.callbacks import (
    BestEpochSelection,
    Callback,
    Checkpointing,
    MetricsLog,
    TensorBoardLog,
    TrainingCurves,
    TrainReporter,
    TrainResult,
)
from crosstask_cli.engine.checkpoint import load_checkpoint, save_checkpoint, state_dict_mismatch
from crosstask_cli.engine.config import PAPER_DEFAULTS, TrainConfig
from crosstask_cli.engine.device import (
    PRECISION_LABELS,
    amp_dtype,
    autocast,
    configure_device,
    memory_format,
    resolve_amp,
    resolve_device,
)
from crosstask_cli.engine.evaluator import evaluate
from crosstask_cli.engine.records import VAL_METRICS, EpochRecord
from crosstask_cli.engine.state import checkpoint_payload, seed_everything, set_rng_state
from crosstask_cli.errors import ConfigError, DatasetError, NonFiniteLossError, RunDirError
from crosstask_cli.models.network import build_model
from crosstask_cli.objective import CrossTaskLoss
from crosstask_cli.tasks import get_task, task_loss_name
from crosstask_cli.weighting import weighting_class

__all__ = ["Trainer", "TrainReporter", "TrainResult", "NonFiniteLossError", "RunDirError", "train"]


def build_optimizer(cfg: TrainConfig, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The model's optimizer: Adam with ``cfg.optim.betas`` (the paper's), or SGD with momentum 0.9 (the original's
    alternative); both at ``cfg.optim.lr``, scheduled by StepLR."""
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.optim.lr, momentum=0.9)
    return torch.optim.Adam(params, lr=cfg.optim.lr, betas=tuple(cfg.optim.betas))


def resolve_training_data(
    cfg: TrainConfig, reporter: TrainReporter | None = None, progress=None, resuming: bool = False
) -> Path:
    """The prepared directory for ``cfg`` (its data, or the dataset's default folder). Synthetic scenes are rendered
    only into the documented default folder (``data/synthetic``) of a new run; any other folder, and a resumed
    run's, must exist."""
    d = cfg.data
    default = Path(PAPER_DEFAULTS[d.name]["data"])
    root = Path(d.root or default)
    request = TrainingData(d.name, root, d.height, d.width, cfg.model.num_classes, d.depth, cfg.model.tasks,
                           (d.synthetic_train, d.synthetic_val), generate=root == default and not resuming)  # fmt: skip
    return prepare_training_data(request, d.workers, reporter.message if reporter else None, progress)


def build_loss(cfg: TrainConfig, ignore_index: int, pairs) -> CrossTaskLoss:
    """The objective of a run: its tasks, the model's TaskTransferNets (``pairs``), the consistency, the consistency
    weights λ and every task's loss options."""
    m, lo = cfg.model, cfg.loss
    return CrossTaskLoss(  # the original's loss options by name as well as among every task's options
        m.num_classes, lo.alpha, lo.gamma, lo.lp, lo.tdep_loss, lo.tseg_loss, lo.label_smoothing, ignore_index,
        lo.consistency, tasks=m.tasks, pairs=tuple(pairs) or None, weights=cfg.consistency_weights(),
        options=cfg.task_options(),
    )  # fmt: skip


class Trainer:
    def __init__(
        self, cfg: TrainConfig, run_dir: Path, reporter: TrainReporter | None = None, dist: ddp.DistInfo | None = None
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.dist = dist or ddp.DistInfo()
        self.reporter = reporter if (reporter is not None and self.dist.is_main) else TrainReporter()
        self.device = resolve_device(ddp.device_for(self.dist, cfg.runtime.device))
        configure_device(self.device)
        # "auto" becomes the precision actually used, so config.json, checkpoints and --resume record it
        self.cfg = cfg = cfg.replace(amp=resolve_amp(cfg.runtime.amp, self.device))
        self.ckpt_dir = self.run_dir / rundir.LAST.parent
        if self.dist.is_main:
            for stale in self.ckpt_dir.glob(".*.tmp"):  # left by a process killed while writing a checkpoint
                stale.unlink(missing_ok=True)
        self.selection = BestEpochSelection(cfg.runtime.select_metric)
        self.log = MetricsLog(self.run_dir / rundir.METRICS)
        self.callbacks: list[Callback] = [
            self.selection,
            Checkpointing(self.run_dir),
            self.log,
            TrainingCurves(self.run_dir, self.log),
        ]
        if cfg.runtime.tensorboard and self.dist.is_main:
            self.callbacks.append(TensorBoardLog(self.run_dir))

    @property
    def dataset_info(self) -> dict:
        """The checkpoint's description of the data (what eval/predict/export need to use the model)."""
        meta = self.meta
        return {
            "name": meta.dataset,
            "num_classes": meta.num_classes,
            "class_names": meta.class_names,
            "palette": meta.palette,
            "ignore_index": meta.ignore_index,
            "depth": meta.depth,
            "height": meta.height,
            "width": meta.width,
            "normalisation": normalisation(),
        }

    def setup(self, prepared: Path) -> None:
        cfg = self.cfg
        seed_everything(cfg.runtime.seed)
        self.prepared = prepared
        self.meta = read_meta(prepared)
        m = cfg.model
        pairs = cfg.transfer_pairs() if m.transfer_pairs else None  # None: every ordered pair (stored as such)
        self.model = build_model(
            m.enc_layers, m.num_classes, m.pretrained, m.ttnet_batch_norm, m.wider_ttnet, m.encoder_weights,
            tasks=m.tasks, transfer=cfg.loss.consistency != "none", transfer_pairs=pairs, arch=m.arch,
            input_size=(cfg.data.height, cfg.data.width) if get_arch(m.arch).needs_input_size else None,
        )  # fmt: skip
        self.fmt = memory_format(self.device)
        if self.dist.enabled and cfg.runtime.sync_bn:
            if self.device.type != "cuda":
                raise ConfigError("--sync-bn needs CUDA (PyTorch's SyncBatchNorm does not run on CPU)")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(self.device, memory_format=self.fmt)
        method = weighting_class(cfg.optim.weighting)
        if self.dist.enabled and not method.supports_distributed:
            raise ConfigError(f"--weighting {cfg.optim.weighting} is not supported with several processes (torchrun)")
        task_names = tuple(task_loss_name(t) for t in m.tasks)
        self.weighting = method.from_options(task_names, cfg.optim, seed=cfg.runtime.seed).to(self.device)
        self.weighting.attach(self.model)
        if self.dist.enabled:
            self.weighting.use_process_group(lambda t: ddp.all_reduce_mean_(t, self.dist))
        self.loss_fn = build_loss(cfg, self.meta.ignore_index, self.model.config.pairs)
        self.kd = None  # KD4MTL's teachers and adaptors
        if cfg.loss.method == "kd4mtl":
            from crosstask_cli.engine.distillation import Distillation, parse_teachers

            teachers = parse_teachers(cfg.loss.teachers, m.tasks)
            self.kd = Distillation.load(teachers, self.model, self.dataset_info, self.device, self.fmt)
        self.loss_names = (*self.loss_fn.names, *(("distill",) if self.kd else ()))
        params = list(self.model.parameters()) + self.weighting.model_optimizer_parameters()
        self.optimizer = build_optimizer(cfg, params)
        self.weighting_optimizers = self.weighting.configure_optimizers(cfg.optim.lr)  # GradNorm: its own Adam
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, cfg.optim.scheduler_step_size, cfg.optim.scheduler_gamma
        )
        self.amp = cfg.runtime.amp  # resolved: off, bf16 or fp16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp_dtype(self.amp) == torch.float16)
        self.forward = self.model
        self.ddp = None
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = self.ddp = DistributedDataParallel(self.model, device_ids=ids)
        if cfg.runtime.compile:
            self.forward = torch.compile(self.forward)
        seed_everything(cfg.runtime.seed + self.dist.rank)  # per-rank randomness; the weights came from one seed

        verify, tasks = cfg.runtime.verify, m.tasks
        self.train_ds = PreparedDataset(prepared, "train", augment=True, seed=cfg.runtime.seed, verify=verify,
                                        tasks=tasks)  # fmt: skip
        self.select_split = "holdout" if "holdout" in self.meta.splits else "val"
        self.val_ds = PreparedDataset(prepared, self.select_split, augment=False, verify=verify, tasks=tasks)
        if len(self.train_ds) == 0:
            raise DatasetError(f"{prepared}: the train split is empty")
        self.sampler = EpochSampler(
            len(self.train_ds), seed=cfg.runtime.seed, num_replicas=self.dist.world_size, rank=self.dist.rank
        )
        workers = cfg.data.workers
        self.loader = DataLoader(
            self.train_ds,
            batch_size=cfg.optim.batch_size,
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=self.sampler.per_rank > cfg.optim.batch_size,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )
        self.epoch = 0
        self.step_count = 0
        self.nonfinite = 0
        self.partial: dict | None = None  # progress inside the current epoch, from a mid-epoch checkpoint
        self.resumed_row: dict | None = None  # the metrics row a resumed checkpoint holds

    def resume(self, path: Path) -> None:
        """Restore everything a resumable checkpoint holds (see :func:`~crosstask_cli.engine.state.checkpoint_payload`)."""
        ckpt = load_checkpoint(path, map_location=self.device)
        if "optimizer" not in ckpt:
            raise RunDirError(f"{path}: checkpoint is not resumable (no optimizer state)")
        if "decoder_align_corners" not in ckpt["model_config"]:
            raise RunDirError(
                f"{path}: written by crosstask 0.1.0, whose decoders upsampled with align_corners=False; this version "
                "trains the original's align_corners=True decoders, so the run cannot continue the same model. Its "
                "checkpoints still load for eval/predict/export; start a new run to train further."
            )
        mismatch = state_dict_mismatch(self.model.state_dict(), ckpt["model"])
        if mismatch:
            raise RunDirError(f"{path}: its weights do not match the run's model ({mismatch})")
        self.model.load_state_dict(ckpt["model"])
        self.weighting.load_state_dict(ckpt["weighting"]["state"])
        own = ckpt["weighting"].get("optimizers", [])
        if len(own) != len(self.weighting_optimizers):
            raise RunDirError(
                f"{path}: written by a version whose {self.cfg.optim.weighting} weighting kept its parameters in the "
                "model's optimizer; it cannot be resumed exactly. Start a new run (--force) or keep using the older "
                "version."
            )
        for opt, state in zip(self.weighting_optimizers, own, strict=True):
            opt.load_state_dict(state)
        if self.kd is not None:
            if "distillation" not in ckpt:
                raise RunDirError(f"{path}: has no KD4MTL adaptors to resume (not written by a --method kd4mtl run)")
            self.kd.load_state_dict(ckpt["distillation"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.epoch, self.step_count = int(ckpt["epoch"]), int(ckpt["step"])
        self.selection.best_score, self.selection.best_epoch = ckpt.get("best_score"), ckpt.get("best_epoch")
        self.nonfinite = int(ckpt.get("nonfinite", 0))
        self.partial = ckpt.get("partial_epoch")
        self.resumed_row = ckpt.get("metrics") or None  # the row of the epoch the checkpoint ends
        for cb in self.callbacks:
            cb.on_resume(self)

    # --- loop -------------------------------------------------------------------------------------
    def _zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        for opt in self.weighting_optimizers:
            opt.zero_grad(set_to_none=True)
        if self.kd is not None:
            self.kd.optimizer.zero_grad(set_to_none=True)

    def _train_step(self, images, targets, ids) -> dict[str, torch.Tensor] | None:
        """One step on a batch: images B×3×H×W, targets {task: B×…}, the samples' indices."""
        # A weighting that sets the gradients itself (the per-task gradient methods) runs outside DDP's reducer and
        # averages them over the processes itself; every other step is DDP's usual backward pass.
        own_sync = self.ddp is not None and self.weighting.sets_gradients
        with self.ddp.no_sync() if own_sync else contextlib.nullcontext():
            return self._train_step_local(images, targets, ids)

    def _train_step_local(self, images, targets, ids) -> dict[str, torch.Tensor] | None:
        self._zero_grad()
        with autocast(self.device, self.amp):
            if self.kd is None:
                pred = self.forward(images)
            else:
                pred, maps = self.forward(images, task_features=True)
                distill = self.kd.loss(images, maps)
        if self.amp != "off":  # the losses (and the weighting) in fp32
            pred = pred.map(lambda t: t.float())
        losses = self.loss_fn(pred, targets)
        total = self.weighting.combine({k: losses[k] for k in self.weighting.tasks}, self.model)
        if self.kd is not None:  # KD4MTL: Σ_t distill_t, weight 1, added to the combined task losses
            losses["distill"] = distill.float()
            total = total + losses["distill"]
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
            if self.nonfinite > self.cfg.runtime.skip_nonfinite:
                last = self.ckpt_dir / "last.pt"
                kept = (
                    f"the last good checkpoint is kept: {last}"
                    if last.is_file()
                    else "no checkpoint had been written yet"
                )
                raise NonFiniteLossError(
                    msg + f". Stopped; {kept}. Lower --lr, allow skips with --skip-nonfinite N, or check the data "
                    "for NaN/inf with --verify."
                )
            self.reporter.message(msg + f" (skipped, {self.nonfinite}/{self.cfg.runtime.skip_nonfinite})")
            self._zero_grad()
            return None
        self.weighting.backward(total, {k: losses[k] for k in self.weighting.tasks}, self.model, self.scaler)
        if self.dist.enabled:  # the weighting knows its own state; state from the first batch becomes the global one
            self.weighting.distributed_sync_(lambda t: ddp.all_reduce_mean_(t, self.dist), self.step_count == 0)
        if self.kd is not None:
            if self.dist.enabled:  # the adaptors are outside DDP's module: average their gradients here
                for p in self.kd.adaptors.parameters():
                    if p.grad is not None:
                        ddp.all_reduce_mean_(p.grad, self.dist)
            self.scaler.step(self.kd.optimizer)
        self.scaler.step(self.optimizer)
        for opt in self.weighting_optimizers:
            self.scaler.step(opt)
        self.scaler.update()
        self.weighting.after_step()
        self.step_count += 1
        return {**{k: v.detach() for k, v in losses.items()}, "total": total.detach()}

    def check_weights_finite(self, when: str) -> None:
        """Before a checkpoint is written: every weight finite (one reduction on the device, one read), else stop
        with the last checkpoint on disk untouched. A finite loss can still give a non-finite update (an fp32
        overflow in Adam's step, a NaN learning-rate factor); such weights must never become "the last good"."""
        params = list(self.model.parameters())
        if self.kd is not None:
            params += list(self.kd.adaptors.parameters())
        finite = torch.stack([torch.isfinite(p).all() for p in params]).all()
        if ddp.all_true(bool(finite), self.device, self.dist):
            return
        bad = "(on another process)"
        if not bool(finite):
            bad = next((n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())), "adaptors")
        last = self.ckpt_dir / "last.pt"
        kept = f"the last finite checkpoint is kept: {last}" if last.is_file() else "no checkpoint had been written yet"
        raise NonFiniteLossError(f"non-finite weights {when} (first: {bad}); stopped, {kept}. Lower --lr or check the "
                                 "data with --verify.")  # fmt: skip

    def run_epoch(self) -> EpochRecord:
        """Train one epoch (resuming inside it after a mid-epoch checkpoint), step the LR, validate."""
        cfg = self.cfg
        self.model.train()
        per_rank = self.sampler.per_rank
        full = per_rank // cfg.optim.batch_size if self.loader.drop_last else -(-per_rank // cfg.optim.batch_size)
        steps = full if cfg.runtime.max_steps_per_epoch is None else min(full, cfg.runtime.max_steps_per_epoch)
        first = 0
        names = self.loss_names
        sums = torch.zeros(len(names) + 1, device=self.device)
        done = 0
        if self.partial is not None:  # resuming inside this epoch
            first = int(self.partial["batches"])
            if self.dist.is_main:  # the checkpoint holds every process's sums; the others restart theirs at 0
                done, sums = int(self.partial["done"]), self.partial["sums"].to(self.device)
            self.partial = None
        self.sampler.set_epoch(self.epoch, start=first * cfg.optim.batch_size)
        self.reporter.epoch_start(self.epoch + 1, cfg.optim.epochs, steps)
        for _ in range(first):
            self.reporter.step(None)
        start = time.perf_counter()
        for i, (images, targets, ids) in enumerate(self.loader, start=first):
            if i >= steps:
                break
            images = images.to(self.device, non_blocking=True).contiguous(memory_format=self.fmt)
            targets = {t: v.to(self.device, non_blocking=True) for t, v in targets.items()}
            out = self._train_step(images, targets, ids)
            if out is not None:
                sums += torch.stack([out[k] for k in (*names, "total")]).float()
                done += 1
            show = out is not None and (i % 5 == 0 or i == steps - 1)
            self.reporter.step(float(out["total"]) if show else None)
            if cfg.runtime.save_every_steps and (i + 1) % cfg.runtime.save_every_steps == 0 and i + 1 < steps:
                part_sums, part_done = sums.detach(), done
                if self.dist.enabled:  # every process reaches this step together: keep all of their sums
                    packed = torch.cat([part_sums, torch.tensor([float(done)], device=self.device)])
                    packed = ddp.all_reduce_sum_(packed, self.dist)
                    part_sums, part_done = packed[:-1], int(packed[-1].item())
                self.check_weights_finite(f"at epoch {self.epoch + 1} step {self.step_count}")
                if self.dist.is_main:
                    partial = {"batches": i + 1, "done": part_done, "sums": part_sums.cpu()}
                    last_row = self.log.records[-1].to_row() if self.log.records else None
                    save_checkpoint(self.run_dir / rundir.LAST, checkpoint_payload(self, last_row, partial))
        train_seconds = time.perf_counter() - start
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        self.epoch += 1
        if self.dist.enabled:  # mean over every process's batches
            packed = ddp.all_reduce_sum_(torch.cat([sums, torch.tensor([float(done)], device=self.device)]), self.dist)
            sums, done = packed[:-1], int(packed[-1].item())
        means = (sums / max(done, 1)).tolist()
        record = EpochRecord(epoch=self.epoch, step=self.step_count, lr=lr)
        record.train = dict(zip((*names, "total"), means, strict=True))
        record.weights = self.weighting.weights()
        self.weighting.epoch_end({t: record.train[t] for t in self.weighting.tasks})  # DWA: next epoch's weights

        n_val = (
            len(self.val_ds)
            if cfg.runtime.max_val_batches is None
            else min(len(self.val_ds), cfg.runtime.max_val_batches * cfg.runtime.eval_batch_size)
        )
        self.reporter.eval_start(self.select_split, n_val)
        ev = evaluate(
            self.model,
            self.val_ds,
            dist=self.dist,
            batch_size=cfg.runtime.eval_batch_size,
            device=self.device,
            loss_fn=self.loss_fn,
            max_batches=cfg.runtime.max_val_batches,
            amp=self.amp,
            progress=self.reporter.eval_advance,
        )
        record.val_split = self.select_split
        record.val = {"loss": sum(ev.loss[t] for t in self.weighting.tasks), **ev.loss}
        for t in self.cfg.model.tasks:  # in the order of VAL_METRICS, for the trained tasks
            values = ev.metrics.get(t, {})
            record.val.update({k: values[k] for k in VAL_METRICS if k in get_task(t).logged})
        record.val.update(ev.consistency or {})
        record.seconds = time.perf_counter() - start
        record.train_seconds = train_seconds
        return record

    def fit(self) -> TrainResult:
        self.reporter.start(
            {
                "run_dir": str(self.run_dir),
                "device": str(self.device),
                "precision": PRECISION_LABELS[self.amp],
                "data": str(self.prepared),
                "train": len(self.train_ds),
                "select_split": self.select_split,
                "val": len(self.val_ds),
                "params": sum(p.numel() for p in self.model.parameters()),
                "start_epoch": self.epoch,
            }
        )
        record = self.log.records[-1] if self.log.records else None
        while self.epoch < self.cfg.optim.epochs:
            record = self.run_epoch()
            self.check_weights_finite(f"after epoch {self.epoch}")
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            self.reporter.epoch_end(record)
        ddp.barrier(self.dist)
        result = TrainResult(self.run_dir, self.epoch, self.selection.best_epoch, self.selection.best_score, record)
        self.reporter.end(result)
        return result


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
    dist = ddp.init_distributed(cfg.runtime.device)
    try:
        return _train(cfg, run_dir, resume, force, reporter, data_progress, resume_overrides, dist)
    finally:
        ddp.cleanup(dist)


def _train(cfg, run_dir, resume, force, reporter, data_progress, resume_overrides, dist: ddp.DistInfo) -> TrainResult:
    opened = rundir.open_run_dir(cfg, run_dir, resume, force, resume_overrides, dist)
    try:
        return _train_opened(opened, reporter, data_progress, dist)
    finally:
        if opened.lock is not None:
            opened.lock.release()


def _train_opened(opened: rundir.OpenedRun, reporter, data_progress, dist: ddp.DistInfo) -> TrainResult:
    cfg, run_dir = opened.cfg, opened.run_dir
    reporter = (reporter or TrainReporter()) if dist.is_main else TrainReporter()
    if opened.lock is not None and opened.lock.stale_pid:
        reporter.message(f"{run_dir}: took over the lock left by process {opened.lock.stale_pid}, which has ended")
    resuming = opened.resume_from is not None
    if dist.is_main:  # prepares (and may write a cache) once; the others then find it
        prepared = resolve_training_data(cfg, reporter, data_progress, resuming)
    ddp.barrier(dist)
    if not dist.is_main:
        prepared = resolve_training_data(cfg, resuming=resuming)
    trainer = Trainer(cfg, run_dir, reporter, dist)
    cfg = trainer.cfg  # with the precision resolved
    trainer.setup(prepared)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if opened.resume_from is not None:
        trainer.resume(opened.resume_from)
    elif opened.restarted:
        reporter.message(f"{run_dir} has no checkpoint yet: starting its saved config from the beginning")
    elif dist.is_main:
        cfg.save(run_dir / rundir.CONFIG)
    ddp.barrier(dist)
    return trainer.fit()
