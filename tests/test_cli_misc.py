from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from helpers import run_cli

from crosstask_cli.bench import reference_metric_loop
from crosstask_cli.metrics import DepthMetrics, OriginalProtocolMetrics


def test_every_command_is_registered_and_answers_help():
    import typer

    from crosstask_cli.cli.app import app

    root = typer.main.get_command(app)
    expected = {"prepare", "train", "eval", "predict", "visualize", "export", "compare", "bench", "demo", "info",
                "sweep", "import-weights"}  # fmt: skip
    assert set(root.commands) == expected
    for name in sorted(expected):
        r = run_cli(name, "--help")
        assert r.exit_code == 0 and "Usage: crosstask " + name in " ".join(r.output.split()), name


def test_the_version_is_the_packages_and_checkpoints_record_it(tiny_run):
    from pathlib import Path

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    import torch

    from crosstask_cli import __version__

    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    assert __version__ == project["version"] != "0.1.0"  # 0.1.0's runs cannot be resumed by this version
    r = run_cli("--version")
    assert r.exit_code == 0 and r.output.strip() == f"crosstask {__version__}"
    ckpt = torch.load(tiny_run / "checkpoints/last.pt", weights_only=True)
    assert ckpt["created_by"] == f"crosstask {__version__}"


def test_bench_cli_small(synthetic_prepared, tmp_path):
    r = run_cli("bench", "--enc-layers", "18", "--height", "32", "--width", "64", "--batch-size", "2", "--runs", "1",
                "--warmup", "0", "--matmul-size", "256", "--data", synthetic_prepared, "--raw-samples", "0",
                "--quiet-wait", "0", "--json", tmp_path / "b.json")  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads((tmp_path / "b.json").read_text())
    fl = res["figures"]["flops_per_image"]
    assert fl["forward_direct"] < fl["forward_full"] < fl["train_step"]
    assert res["figures"]["images_per_s"]["predict_direct"] > 0
    assert {"train_vs_matmul", "direct_vs_full_forward", "metrics_vs_loop", "metrics_original_vs_loop",
            "loader_vs_train_step"} <= set(res["ratios"])  # fmt: skip
    m = res["figures"]["metrics_update"]
    assert m["standard"]["kept"] >= 30 or m["standard"]["noisy"]  # 30 clean runs, or said to be noisy
    assert m["per_image_loop"]["runs"] >= 30 and len(m["standard"]["others_cores"]) == m["standard"]["runs"]
    for name, value in res["ratios"].items():  # the printed table shows the measured ratios, not just headings
        if name in ("train_vs_matmul", "direct_vs_full_forward"):
            assert f"{value:.3g}" in r.output, name


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


@pytest.mark.slow  # about 30 s on 2 cores: a rehearsal of the GPU check script, run before a device session
@pytest.mark.integration
def test_the_prepared_gpu_check_script_rehearses_on_cpu(tmp_path):
    """scripts/gpu_check.sh is what a session with a GPU runs in one go; its CPU rehearsal keeps its flags in
    step with the CLI, so that run is not wasted on a typo."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    env = {**os.environ, "CHECK_DEVICE": "cpu", "CHECK_QUICK": "1", "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "training loss decreased" in r.stdout
    for prec in ("fp32", "amp"):
        res = json.loads((tmp_path / "out" / f"bench-32x64-b2-{prec}.json").read_text())
        assert res["config"]["amp"] == ("auto" if prec == "amp" else "off") and res["device"] == "cpu"
        assert res["config"]["precision"] in (("off", "bf16") if prec == "amp" else ("off",))
        assert {"train_vs_matmul", "metrics_vs_loop", "loader_vs_train_step"} <= set(res["ratios"])
    assert (tmp_path / "out" / "log.txt").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.integration
def test_the_prepared_predict_gpu_check_rehearses_on_cpu(tmp_path):
    """scripts/gpu_predict_check.sh (and the predict_throughput.sh it calls) on a CPU with three small JPEGs: every
    step runs, the ratio is printed, and the device-vs-CPU comparison passes (trivially, both on the CPU)."""
    import cv2
    import numpy as np

    scripts = Path(__file__).resolve().parents[1] / "scripts"
    jpegs = tmp_path / "jpegs"
    jpegs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(jpegs / f"{i}.jpg"), rng.integers(0, 255, (96, 160, 3), dtype=np.uint8))
    env = {**os.environ, "CHECK_DEVICE": "cpu", "JPEGS": str(jpegs), "WORKERS": "2", "TMPDIR": str(tmp_path)}
    r = subprocess.run(["bash", str(scripts / "gpu_predict_check.sh"), str(tmp_path / "out")], env=env,
                       capture_output=True, text=True, timeout=600, cwd=scripts.parent)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "predict --workers 2:" in r.stdout and "ratio" in r.stdout
    assert "second pass:" in r.stdout and "GPU and CPU predictions agree" in r.stdout
    assert json.loads((tmp_path / "out" / "predict-bench-model.json").read_text())["device"] == "cpu"


def test_help_shows_flags_without_a_value_and_keeps_bracketed_extras():
    r = run_cli("export", "--help")
    assert r.exit_code == 0
    assert "<bool>" not in r.output  # --verify/--force/--help take no value
    assert "crosstask-cli[onnx]" in " ".join(r.output.split())
    r = run_cli("train", "--help")
    assert "<bool>" not in r.output and "<int>" in r.output  # options with values keep their type


def test_help_reads_whole_at_80_columns_and_the_command_list_has_no_stranded_words(monkeypatch):
    """At 80 columns Rich's option tables cut 20 of train's option names ('--ttnet-batch-no…'); the plain layout
    shows every one whole. In the wide layout, the source's line breaks left single words on lines of their own in
    the command list (demo, bench, compare)."""
    import re

    from crosstask_cli.engine.config import FIELDS

    monkeypatch.setenv("COLUMNS", "80")
    for args in (["train", "--help"], ["export", "--help"], ["sweep", "--help"], ["--help"]):
        r = run_cli(*args)
        assert r.exit_code == 0 and "runs/<dataset>-…" not in r.output, args
        assert max(len(line) for line in r.output.splitlines()) <= 80
    text = run_cli("train", "--help").output
    flags = {f.flag for f in FIELDS.values() if f.flag}
    assert len(flags) > 60 and all(re.search(rf"(^|\s){re.escape(flag)}[\s/,]", text, re.M) for flag in flags)
    assert 'pip install "crosstask-cli[onnx]"' in " ".join(run_cli("export", "--help").output.split())

    monkeypatch.setenv("COLUMNS", "160")
    panel = run_cli("--help").output.split("Commands")[1]
    rows = [line.strip("│ ").split() for line in panel.splitlines() if line.startswith("│")]
    assert rows and all(len(words) > 2 for words in rows), [r for r in rows if len(r) <= 2]
