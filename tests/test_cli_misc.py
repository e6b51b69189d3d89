from __future__ import annotations

import json

import pytest
import torch
from conftest import run_cli

from crosstask_cli.bench import reference_metric_loop
from crosstask_cli.metrics import DepthMetrics, OriginalProtocolMetrics


def test_help_lists_every_command():
    r = run_cli("--help")
    assert r.exit_code == 0
    for cmd in ("prepare", "train", "eval", "predict", "visualize", "export", "bench", "demo", "info"):
        assert cmd in r.output


def test_bench_cli_small(synthetic_prepared, tmp_path):
    r = run_cli("bench", "--enc-layers", "18", "--height", "32", "--width", "64", "--batch-size", "2", "--runs", "1",
                "--warmup", "0", "--matmul-size", "256", "--data", synthetic_prepared, "--raw-samples", "0",
                "--json", tmp_path / "b.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "b.json").read_text())
    fl = res["figures"]["flops_per_image"]
    assert fl["forward_direct"] < fl["forward_full"] < fl["train_step"]
    assert res["figures"]["images_per_s"]["predict_direct"] > 0
    assert {"train_vs_matmul", "direct_vs_full_forward", "metrics_vs_loop", "metrics_original_vs_loop",
            "loader_vs_train_step"} <= set(res["ratios"])  # fmt: skip
    m = res["figures"]["metrics_update"]
    assert m["standard"]["runs"] >= 30 and m["per_image_loop"]["runs"] == m["standard"]["runs"]
    assert "targets" in r.output


def test_the_benchmark_reference_loop_computes_the_same_metrics():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 16, 20, generator=g)
    target = torch.randint(0, 4, (3, 16, 20), generator=g)
    target[:, :2] = 255
    dp, dt = torch.rand(3, 1, 16, 20, generator=g), torch.rand(3, 1, 16, 20, generator=g)
    dt[dt < 0.2] = 0
    ref = reference_metric_loop(logits, target, dp, dt)
    orig = OriginalProtocolMetrics(4)
    orig.update(logits, target, dp, dt)
    o = orig.compute()
    assert abs(ref["miou"] - o["miou"]) < 1e-6 and abs(ref["pixel_acc"] - o["pixel_acc"]) < 1e-6
    dm = DepthMetrics()
    dm.update(dp, dt)
    assert abs(ref["abs_err"] - dm.compute()["abs_err"]) < 1e-6


def test_the_metric_benchmark_refuses_to_time_metrics_that_disagree_with_the_loop(monkeypatch):
    from crosstask_cli import bench

    real = bench.reference_metric_loop
    monkeypatch.setattr(bench, "reference_metric_loop", lambda *a: {**real(*a), "miou": 0.0})
    cfg = bench.BenchConfig(height=16, width=32, batch_size=2, runs=1)
    res = bench.BenchResult(config={}, device="cpu")
    with pytest.raises(RuntimeError, match="miou"):
        bench.bench_metrics(cfg, res, torch.device("cpu"))
    assert "metrics_update" not in res.figures
