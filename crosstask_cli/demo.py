"""``crosstask demo``: the whole lifecycle on generated street scenes, sized for a laptop CPU (minutes; the README gives a measured run)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DemoSettings:
    """Defaults: ResNet-18 at 64×128, 240 training scenes, 7 epochs, Adam lr 1e-3 (10× the paper's, to learn
    within minutes), uncertainty-free fixed weighting and the paper's α = γ = 0.01. ``holdout`` further training
    scenes are rendered and held out to pick the best epoch, so the val figures the demo reports played no part
    in choosing the checkpoint."""

    train: int = 240
    val: int = 40
    holdout: int = 40
    render_height: int = 128
    render_width: int = 256
    height: int = 64
    width: int = 128
    epochs: int = 7
    batch_size: int = 8
    lr: float = 1e-3
    enc_layers: int = 18
    predict_count: int = 4
    workers: int = 1
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # bf16 on CPUs with native bf16 and on bf16 GPUs, else fp32 (see engine.device.resolve_amp)


@dataclass
class DemoResult:
    out: Path
    artefacts: dict[str, Path] = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)


def run_demo(
    out: str | Path, settings: DemoSettings | None = None, force: bool = False, reporter=None, progress=None
) -> DemoResult:
    from dataclasses import asdict

    from crosstask_cli.atomic import atomic_write_text
    from crosstask_cli.data.prepare import PrepareOptions, prepare_cityscapes, prepare_synthetic
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from crosstask_cli.engine.config import TrainConfig
    from crosstask_cli.engine.device import resolve_device
    from crosstask_cli.engine.evaluator import evaluate
    from crosstask_cli.engine.trainer import train
    from crosstask_cli.outputs import check_output_dir, clear_folder
    from crosstask_cli.predict import predict
    from crosstask_cli.visualize import prediction_panels, sample_grid

    s = settings or DemoSettings()
    out = Path(out)
    check_output_dir(out, "demo folder", "--out", force)
    if out.exists():
        clear_folder(out)  # a demo folder of crosstask's own (checked above): replace its content
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "demo.json", json.dumps({"generator": "crosstask demo", "settings": asdict(s)}, indent=2))
    res = DemoResult(out)
    data = out / "data" / "synthetic"
    kw = {"progress": progress} if progress else {}
    prepare_synthetic(data, s.train + s.holdout, s.val, s.render_height, s.render_width, seed=s.seed, **kw)
    res.artefacts["dataset (Cityscapes raw layout)"] = data
    prepared = out / "data" / f"synthetic-{s.height}x{s.width}"
    opts = PrepareOptions(s.height, s.width, 7, val_from_train=s.holdout, seed=s.seed, workers=s.workers)
    prepare_cityscapes(data, prepared, opts, dataset="synthetic", **kw)
    res.artefacts["prepared dataset (train / holdout / val)"] = prepared

    cfg = TrainConfig.for_dataset(
        "synthetic",
        data=str(prepared),
        height=s.height,
        width=s.width,
        epochs=s.epochs,
        batch_size=s.batch_size,
        lr=s.lr,
        enc_layers=s.enc_layers,
        workers=s.workers,
        seed=s.seed,
        device=s.device,
        amp=s.amp,
        scheduler_step_size=max(1, (s.epochs * 2) // 3),
        select_metric="miou",
    )
    run = train(cfg, run_dir=out / "run", reporter=reporter, data_progress=progress)
    best = run.run_dir / "checkpoints" / "best.pt"
    res.artefacts["run directory"] = run.run_dir
    res.artefacts["best checkpoint"] = best
    res.artefacts["training curves"] = run.run_dir / "plots"

    ckpt = load_checkpoint(best)
    dev = resolve_device(s.device)
    metrics = evaluate(
        model_from_checkpoint(ckpt, best).to(dev), prepared, "val", batch_size=8, device=dev, amp=s.amp
    ).to_dict()
    atomic_write_text(out / "eval.json", json.dumps(metrics, indent=2, default=float))
    res.metrics = metrics
    res.artefacts["evaluation (JSON)"] = out / "eval.json"

    val_images = sorted((data / "leftImg8bit" / "val").rglob("*_leftImg8bit.png"))[: s.predict_count]
    pred_dir = out / "predictions"
    predict(val_images, best, pred_dir, transfer=True, device=s.device, amp=s.amp)
    res.artefacts["predictions"] = pred_dir
    prediction_panels(pred_dir, out / "panels")
    res.artefacts["prediction panels"] = out / "panels"
    res.artefacts["sample grid"] = sample_grid(prepared, out / "samples.png", "val", 4, best)
    return res
