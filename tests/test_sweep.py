"""Sweeps (spec, resume after an interruption, manifest), grouped comparison over seeds, TensorBoard logging."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import pytest
from helpers import run_cli

import crosstask_cli as ct
from crosstask_cli.compare import SeededRun, compare_grouped, load_result, runs_from_paths
from crosstask_cli.errors import ConfigError, InputError
from crosstask_cli.sweep import load_spec, run_status, run_sweep

TINY_BASE = """
[base]
data = "{data}"
height = 32
width = 64
enc_layers = 18
epochs = {epochs}
batch_size = 4
workers = 0
max_steps_per_epoch = 1
max_val_batches = 1
"""


def write_spec(tmp_path: Path, data: Path, epochs: int = 2, variants: str | None = None, seeds=(0, 1)) -> Path:
    variants = variants or '[variants.seg-only]\ntasks = "seg"\n[variants.mtl]\nconsistency = "none"\n'
    text = (f'[sweep]\ndataset = "synthetic"\nout = "{tmp_path / "out"}"\nseeds = {list(seeds)}\n'
            + TINY_BASE.format(data=data, epochs=epochs) + '[eval]\nsplit = "val"\n' + variants)  # fmt: skip
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('[sweep]\ndataset = "synthetic"\nout = "o"\n', "needs 'seeds'"),
        ('[sweep]\ndataset = "mnist"\nout = "o"\nseeds = [0]\n[variants.a]\n', "dataset must be one of"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0, 0]\n[variants.a]\n', "seeds repeat"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = []\n[variants.a]\n', "non-empty list of integers"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n', "at least one variant"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n[variants.a]\nlearning_rate = 1\n',
         r"\[variants.a\] 'learning_rate' is not a train option"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n[variants.a]\nseed = 3\n', "the sweep chooses it"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n[variants.a]\nweighting = "magic"\n',
         "variant 'a': --weighting must be one of"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n[variants.a]\ntasks = "seg"\nconsistency = "xtsc"\n',
         "variant 'a': --consistency xtsc needs two tasks or more"),
        ('[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n[evaluation]\n[variants.a]\n', "unknown table"),
        ("[sweep\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_spec_errors_name_the_file_and_the_problem(tmp_path, text, match):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_spec(path)
    assert str(path) in str(info.value)


def test_spec_values_take_their_option_types(tmp_path, synthetic_prepared):
    path = write_spec(
        tmp_path, synthetic_prepared, variants='[variants.a]\ntasks = "seg"\nlr = 1\nbetas = [0.8, 0.9]\n'
    )
    spec = load_spec(path)
    (run, _) = spec.runs()
    assert run.options["tasks"] == ("seg",) and run.options["lr"] == 1.0 and isinstance(run.options["lr"], float)
    assert run.options["betas"] == (0.8, 0.9) and run.run_dir == tmp_path / "out" / "a" / "seed-0"
    with pytest.raises(ConfigError, match="--only b: not a variant"):
        spec.runs(["b"])


def test_sweep_trains_evaluates_and_resumes_an_interrupted_run(tmp_path, synthetic_prepared):
    """Run 1 finishes; run 2 is 'killed' after its first epoch (trained by hand to epoch 1 of 2, as a SIGKILL after
    the epoch's checkpoint leaves it). The next sweep skips run 1 untouched, resumes run 2 from its checkpoint
    (its first epoch is not trained again) and evaluates it; the manifest records both."""
    spec = load_spec(write_spec(tmp_path, synthetic_prepared, seeds=(0,)))
    first, second = spec.runs()
    run_sweep(spec, only=["seg-only"])
    assert run_status(first) == "done" and run_status(second) == "pending"
    stamp = (first.run_dir / "checkpoints/last.pt").stat().st_mtime_ns
    killed = ct.TrainConfig.for_dataset("synthetic", **{**second.options, "epochs": 1})
    ct.train(killed, run_dir=second.run_dir)  # what an interrupted 2-epoch run leaves: epoch 1 checkpointed
    (second.run_dir / "config.json").write_text(json.dumps(
        ct.TrainConfig.for_dataset("synthetic", **second.options).replace(run_dir=str(second.run_dir)).to_dict()))  # fmt: skip
    epoch1 = (second.run_dir / "metrics.csv").read_text().splitlines()[1]
    assert run_status(second) == "running"

    report = run_sweep(spec)
    assert report.trained == ["mtl/seed-0"] and report.done_before == 1
    assert (first.run_dir / "checkpoints/last.pt").stat().st_mtime_ns == stamp  # not trained again
    rows = (second.run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[1] == epoch1  # epoch 1 kept, epoch 2 trained
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())
    by_variant = {r["variant"]: r for r in manifest["runs"]}
    assert {r["status"] for r in manifest["runs"]} == {"done"}
    assert by_variant["mtl"]["metrics"]["abs_err"] > 0 and "abs_err" not in by_variant["seg-only"]["metrics"]
    ev = json.loads((second.run_dir / "eval.json").read_text())
    assert ev["split"] == "val" and by_variant["mtl"]["metrics"]["miou"] == ev["segmentation"]["miou"]
    assert run_sweep(spec).trained == []  # nothing left to do


def test_the_manifest_is_replaced_atomically(tmp_path, synthetic_prepared, monkeypatch):
    """A failure while writing the manifest leaves the previous one whole (and no temporary file)."""
    import crosstask_cli.atomic as atomic

    spec = load_spec(write_spec(tmp_path, synthetic_prepared, seeds=(0,)))
    run_sweep(spec, only=["seg-only"])
    before = (tmp_path / "out" / "sweep.json").read_text()

    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="no space left on device; the previous file is unchanged"):
        run_sweep(spec)
    monkeypatch.undo()
    assert (tmp_path / "out" / "sweep.json").read_text() == before
    assert not list((tmp_path / "out").glob(".sweep.json.*"))


def test_cli_dry_run_and_printed_commands_reproduce_the_sweeps_config(tmp_path, synthetic_prepared):
    path = write_spec(tmp_path, synthetic_prepared, epochs=1, seeds=(3,),
                      variants='[variants.famo]\nconsistency = "none"\nweighting = "famo"\nlr = 3e-4\n')  # fmt: skip
    r = run_cli("sweep", path, "--dry-run")
    assert r.exit_code == 0 and "1 runs (1 variants × 1 seeds)" in r.output and "pending" in r.output
    r = run_cli("sweep", path, "--print-commands")
    (line,) = r.output.strip().splitlines()
    train_part, eval_part = line.split(" && ")
    args = shlex.split(train_part)[1:]
    assert run_cli(*args).exit_code == 0
    assert run_cli(*shlex.split(eval_part)[1:]).exit_code == 0
    spec = load_spec(path)
    (run,) = spec.runs()
    made = ct.TrainConfig.load(run.run_dir / "config.json").flat()
    expected = ct.TrainConfig.for_dataset("synthetic", **run.options).flat()
    assert {k: v for k, v in made.items() if k not in ("run_dir", "amp")} == {
        k: v for k, v in expected.items() if k not in ("run_dir", "amp")
    }
    assert run_status(run) == "done"  # the scheduler's run counts for the sweep
    r = run_cli("sweep", path)
    assert r.exit_code == 0 and "0 run(s) trained" in r.output and "1 already done" in r.output


def _eval_json(path: Path, miou, acc, abs_err, rel) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    seg = {} if miou is None else {"miou": miou, "pixel_acc": acc, "per_class_iou": {}}
    dep = {} if abs_err is None else {"abs_err": abs_err, "rel_err": rel}
    path.write_text(json.dumps({"protocol": "standard", "split": "val", "num_images": 1, "segmentation": seg,
                                "depth": dep}))  # fmt: skip
    return path


def test_grouped_statistics_by_hand(tmp_path):
    """Two seeds; baselines per seed; mean, sample std, Δm per seed and the paired comparison."""
    runs = []
    table = {  # variant: per seed (miou, acc, abs, rel)
        "seg-only": [(0.50, 0.80, None, None), (0.40, 0.80, None, None)],
        "depth-only": [(None, None, 0.10, 0.20), (None, None, 0.20, 0.20)],
        "a": [(0.55, 0.80, 0.09, 0.20), (0.40, 0.80, 0.20, 0.22)],
        "b": [(0.50, 0.80, 0.10, 0.20), (0.44, 0.80, 0.20, 0.20)],
        "c": [(0.60, 0.80, None, None), (0.50, 0.80, None, None)],  # segmentation only: Δm over other metrics
    }
    for variant, rows in table.items():
        for seed, row in enumerate(rows):
            runs.append(
                SeededRun(variant, seed, load_result(_eval_json(tmp_path / variant / f"seed-{seed}/eval.json", *row)))
            )
    cmp = compare_grouped(runs, "seg-only", "depth-only", reference="b")
    a = next(v for v in cmp.variants if v.variant == "a")
    # seed 0: +10 % mIoU, 0, +10 % (abs lower), 0 → flat 5 %; seed 1: 0, 0, 0, −10 % → flat −2.5 %
    assert a.values["delta_m_flat"] == pytest.approx([5.0, -2.5])
    assert a.values["delta_m_per_task"] == pytest.approx([5.0, -2.5])
    assert a.mean_std("miou") == pytest.approx((0.475, math.sqrt(2 * 0.075**2)))
    assert a.mean_std("delta_m_flat") == pytest.approx((1.25, math.sqrt((3.75**2) * 2)))
    b = next(v for v in cmp.variants if v.variant == "b")
    assert b.values["delta_m_flat"] == pytest.approx([0.0, 2.5])  # seed 1: +10 % mIoU over seg-only's 0.40
    assert a.vs_reference == pytest.approx(
        {"pairs": 2, "mean_diff": 0.0, "std_diff": math.sqrt(50.0), "better": 1, "consistent": False}  # diffs +5, −5
    )
    c = next(v for v in cmp.variants if v.variant == "c")
    assert c.values["delta_m_flat"] == pytest.approx([10.0, 12.5])
    assert c.vs_reference == {"pairs": 0, "same_metrics": False}  # not paired with b, whose Δm has depth too
    base = next(v for v in cmp.variants if v.variant == "seg-only")
    assert all(math.isnan(x) for x in base.values["delta_m_flat"]) and base.vs_reference is None  # not vs itself
    md = cmp.to_markdown()
    assert "| a | 2 | 0.4750 ± 0.1061 |" in md and "(1/2 seeds better, mixed)" in md and "other metrics" in md
    with pytest.raises(InputError, match="--reference 'z' is not among the variants"):
        compare_grouped(runs, reference="z")


def test_cli_compare_groups_run_paths_and_sweeps(tmp_path):
    for variant, mious in (("x", (0.5, 0.6, 0.7)), ("y", (0.4, 0.5, 0.6))):
        for seed, m in enumerate(mious):
            _eval_json(tmp_path / "out" / variant / f"seed-{seed}" / "eval.json", m, 0.9, 0.1, 0.2)
    paths = sorted((tmp_path / "out").glob("*/seed-*"))
    seeded = runs_from_paths(paths)
    assert sorted((r.variant, r.seed) for r in seeded) == [(v, s) for v in "xy" for s in range(3)]
    r = run_cli("compare", *paths, "--group-by", "sweep", "--reference", "y", "--markdown", tmp_path / "m.md",
                "--csv", tmp_path / "m.csv", "--plot", tmp_path / "m.png")  # fmt: skip
    assert r.exit_code == 0, r.output
    md = (tmp_path / "m.md").read_text()
    assert "| x | 3 | 0.6000 ± 0.1000 |" in md
    header = (tmp_path / "m.csv").read_text().splitlines()[0]
    assert header.startswith("variant,seeds,miou_mean,miou_std") and (tmp_path / "m.png").stat().st_size > 5000
    manifest = {"runs": [{"variant": p.parent.name, "seed": int(p.name.split("-")[1]), "run_dir": str(p),
                          "status": "done"} for p in paths]}  # fmt: skip
    (tmp_path / "out" / "sweep.json").write_text(json.dumps(manifest))
    r = run_cli("compare", "--sweep", tmp_path / "out", "--baseline-seg", "y")
    assert r.exit_code == 0 and "comparison over seeds (6 runs)" in r.output, r.output
    r = run_cli("compare", *paths, "--reference", "y")
    assert r.exit_code == 1 and "apply to grouped runs" in r.output


def test_tensorboard_logs_the_metrics_log_and_panels(tmp_path, synthetic_prepared):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_prepared), height=32, width=64, epochs=2,
                                     enc_layers=18, batch_size=4, workers=0, max_steps_per_epoch=1,
                                     weighting="uncertainty", tensorboard=True)  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "run")
    acc = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {
        "lr",
        "train/total",
        "weight/seg_task",
        "weight/depth_task",
        "val/miou",
        "val/loss",
        "time/train_s",
    } <= scalars
    assert [e.step for e in acc.Scalars("val/miou")] == [1, 2]
    log = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    header, last = log[0].split(","), log[-1].split(",")
    assert acc.Scalars("val/miou")[-1].value == pytest.approx(float(last[header.index("val_miou")]), rel=1e-5)
    assert len([t for t in acc.Tags()["images"] if t.startswith("val/panel_")]) == 3


@pytest.mark.parametrize(
    ("name", "runs"),
    [("synthetic-quick", 30), ("synthetic-methods", 93), ("methods-cityscapes", 60), ("methods-nyu", 60),
     ("ablation-cityscapes", 27), ("synthetic-three-tasks", 18)],
)  # fmt: skip
def test_shipped_specs_load_and_build_every_configuration(name, runs):
    spec = load_spec(Path(__file__).parent.parent / "experiments" / f"{name}.toml")
    assert len(spec.runs()) == runs and spec.seeds == [0, 1, 2]
    assert {"seg-only", "depth-only"} <= set(spec.variants) or name.startswith("ablation")


@pytest.mark.integration
def test_a_sweep_killed_mid_run_continues_where_it_stopped(tmp_path, synthetic_prepared):
    """SIGKILL the `crosstask sweep` process once the second run has checkpointed an epoch: the manifest is whole
    JSON, the first run is done, and the next sweep resumes the second run from its checkpoint (the epochs it had
    are kept, not retrained) and evaluates it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    path = write_spec(tmp_path, synthetic_prepared, epochs=6, seeds=(0,))
    spec = load_spec(path)
    first, second = spec.runs()
    proc = subprocess.Popen([sys.executable, "-m", "crosstask_cli", "sweep", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})  # fmt: skip
    log = second.run_dir / "metrics.csv"
    deadline = time.time() + 240
    while (
        proc.poll() is None
        and time.time() < deadline
        and not (log.is_file() and len(log.read_text().splitlines()) >= 2)
    ):
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((tmp_path / "out" / "sweep.json").read_text())  # whole JSON, whatever the moment
    status = {r["variant"]: r["status"] for r in manifest["runs"]}
    assert status["seg-only"] == "done" and status["mtl"] in ("running", "trained")
    assert run_status(second) == "running" and not (second.run_dir / "eval.json").exists()
    kept = log.read_text().splitlines()[1:]  # epochs finished before the kill
    report = run_sweep(spec)
    assert report.trained == ["mtl/seed-0"]
    rows = log.read_text().splitlines()[1:]
    assert len(rows) == 6 and rows[: len(kept)] == kept  # resumed: the epochs it had are not trained again
    assert {r["status"] for r in json.loads((tmp_path / "out" / "sweep.json").read_text())["runs"]} == {"done"}


_HEAD = '[sweep]\ndataset = "synthetic"\nout = "o"\nseeds = [0]\n'
_A = "[variants.a]\n"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("sweep = 5\n[variants.a]\n", r"\[sweep\] must be a table of keys and values, got 5"),
        ('[sweep]\ndataset = "synthetic"\nout = 5\nseeds = [0]\n[variants.a]\n', r"\[sweep\] out = 5: expected"),
        (_A + _HEAD + "[prepare.synthetic]\ntrain = 4\n", r"\[prepare.synthetic\] needs 'out'"),
        (_A + _HEAD + '[prepare.synthetic]\nout = "x"\ntrian = 4\n', r"\[prepare.synthetic\] knows .* not trian"),
        (_A + _HEAD + '[prepare.cityscapes]\nout = "x"\n', r"\[prepare.cityscapes\] needs 'src'"),
        (_A + _HEAD + "[prepare]\nsynthetic = 5\n", r"\[prepare.synthetic\] must be a table"),
        (_A + _HEAD + '[prepare.synthetic]\nout = "x"\ntrain = "many"\n', r"\[prepare.synthetic\] train = \"many\": expected an"),
        (_A + _HEAD + '[prepare.synthetic]\nout = "x"\ntrain = 0\n', r"\[prepare.synthetic\] --train must be"),
        (_HEAD + '[base]\nepochs = "five"\n[variants.a]\n', r"\[base\] epochs = \"five\": expected an integer"),
        (_HEAD + "[base]\nepochs = 1.5\n[variants.a]\n", r"\[base\] epochs = 1.5: expected an integer"),
        (_HEAD + '[variants.a]\nbetas = ["a", 1]\n', r"\[variants.a\] betas = \[\"a\", 1\]: expected a list of numbers"),
        (_HEAD + "[variants]\na = 3\n", r"\[variants.a\] must be a table"),
        (_HEAD + '[eval]\nsplit = "vall"\n[variants.a]\n', r"\[eval\] split must be one of val, train, holdout"),
        (_HEAD + "[eval]\ncheckpoint = 3\n[variants.a]\n", r"\[eval\] checkpoint = 3: expected a string"),
        (_HEAD + "extra = 1\n[variants.a]\n", r"\[sweep\] knows dataset, out and seeds, not extra"),
    ],
)  # fmt: skip
def test_every_part_of_a_spec_is_checked_before_anything_runs(tmp_path, text, match):
    """Wrong tables, keys and value types anywhere in a spec are one ConfigError naming the file and the table
    (tracebacks or a `--set` message before)."""
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_spec(path)
    assert str(path) in str(info.value)
    assert not (tmp_path / "o").exists() and not (tmp_path / "x").exists()


def test_a_spec_that_is_not_utf8_or_whose_eval_split_the_data_lacks_is_refused(tmp_path, synthetic_prepared):
    path = tmp_path / "latin1.toml"
    path.write_bytes('[sweep]\ndataset = "synthétique"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1.toml: not UTF-8 text \(byte 24\)"):
        load_spec(path)
    spec = write_spec(tmp_path, synthetic_prepared)
    spec.write_text(spec.read_text().replace('split = "val"', 'split = "holdout"'))
    with pytest.raises(ConfigError, match=r"\[eval\] split 'holdout' is not a split of .*prepared \(train, val\)"):
        load_spec(spec)


def test_a_manifest_whose_entries_are_not_run_records_is_one_line(tmp_path):
    (tmp_path / "sweep.json").write_text(json.dumps({"runs": [{"variant": "a", "seed": 0, "run_dir": "a/seed-0"}, 5]}))
    with pytest.raises(InputError, match=r"sweep.json: entry 2 of 'runs' is not a run record"):
        ct_compare_sweep(tmp_path)
    r = run_cli("compare", "--sweep", tmp_path / "sweep.json")
    assert r.exit_code == 1 and "entry 2 of 'runs' is not a run record" in r.output


def ct_compare_sweep(where):
    from crosstask_cli.compare import runs_from_sweep

    return runs_from_sweep(where)


def test_an_edited_spec_neither_reuses_nor_resumes_runs_of_the_old_recipe(tmp_path, synthetic_prepared):
    """After a finished run and an interrupted one, the spec changes a variant's weighting: the sweep refuses both
    runs with the difference (nothing trains), --dry-run marks them changed, --print-commands refuses too; with
    rerun_changed both are trained afresh with the new recipe and the unchanged variant is left alone."""
    variants = '[variants.seg-only]\ntasks = "seg"\n[variants.mtl]\nconsistency = "none"\nweighting = "fixed"\n'
    path = write_spec(tmp_path, synthetic_prepared, epochs=1, seeds=(0, 1), variants=variants)
    spec = load_spec(path)
    run_sweep(spec, only=["seg-only", "mtl"])
    (mtl0, mtl1) = [r for r in spec.runs() if r.variant == "mtl"]
    (mtl1.run_dir / "eval.json").unlink()  # seed 1 as an interrupted run
    (mtl1.run_dir / "sweep-run.json").unlink()
    assert run_status(mtl1) == "running"
    stamp = (spec.runs()[0].run_dir / "checkpoints/last.pt").stat().st_mtime_ns

    path.write_text(path.read_text().replace('weighting = "fixed"', 'weighting = "dwa"'))
    edited = load_spec(path)
    with pytest.raises(ConfigError, match=r"2 run\(s\) .* trained with another recipe .* mtl/seed-0: weighting: "
                       r"\"fixed\" → \"dwa\" \| mtl/seed-1: weighting: \"fixed\" → \"dwa\".*--rerun-changed"):  # fmt: skip
        run_sweep(edited)
    assert json.loads((mtl0.run_dir / "config.json").read_text())["optim"]["weighting"] == "fixed"
    r = run_cli("sweep", path, "--dry-run")
    assert r.exit_code == 0 and "changed  mtl/seed-0" in r.output and "changed  mtl/seed-1" in r.output
    r = run_cli("sweep", path, "--print-commands")
    assert r.exit_code == 1 and "trained with another recipe" in r.output
    r = run_cli("sweep", path, "--print-commands", "--rerun-changed")
    lines = r.output.strip().splitlines()
    assert r.exit_code == 0 and len(lines) == 2 and all("--force" in x and "--resume" not in x for x in lines)

    report = run_sweep(edited, rerun_changed=True)
    assert report.trained == ["mtl/seed-0", "mtl/seed-1"] and report.done_before == 2
    for run in (mtl0, mtl1):
        assert json.loads((run.run_dir / "config.json").read_text())["optim"]["weighting"] == "dwa"
        assert len((run.run_dir / "metrics.csv").read_text().splitlines()) == 2  # trained afresh: one epoch
    assert (spec.runs()[0].run_dir / "checkpoints/last.pt").stat().st_mtime_ns == stamp
    assert run_sweep(edited).trained == []


def test_the_manifest_is_built_from_run_directories_and_read_relative_to_itself(tmp_path, synthetic_prepared,
                                                                                monkeypatch):  # fmt: skip
    """A run that another process holds is left to it (and shown running with its PID); a finished run stays
    done whatever an earlier manifest said; compare --sweep from another directory reads the sweep's runs."""
    from crosstask_cli.locks import FileLock
    from crosstask_cli.sweep import LOCKS, MANIFEST, read_record

    spec = load_spec(write_spec(tmp_path, synthetic_prepared, epochs=1, seeds=(0,)))
    first, second = spec.runs()
    run_sweep(spec, only=["seg-only"])
    manifest = spec.out / MANIFEST
    stale = json.loads(manifest.read_text())
    for row in stale["runs"]:
        row["status"] = "failed"  # as a second sweep writing its own view would have left it before
    manifest.write_text(json.dumps(stale))
    with FileLock(spec.out / LOCKS / "mtl.seed-0.lock"):  # another sweep works on the second run
        report = run_sweep(spec)
        rows = {r["variant"]: r for r in json.loads(manifest.read_text())["runs"]}
    assert report.trained == [] and report.elsewhere == ["mtl/seed-0"]
    assert rows["seg-only"]["status"] == "done" and rows["mtl"]["status"] == "running" and rows["mtl"]["pid"] > 0
    assert rows["seg-only"]["run_dir"] == "seg-only/seed-0"  # relative to the manifest
    assert read_record(first)["status"] == "done" and read_record(first)["recipe"]
    assert run_sweep(spec).trained == ["mtl/seed-0"]

    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "seg-only" / "seed-0").mkdir(parents=True)  # a decoy where a cwd-relative reading would look
    monkeypatch.chdir(elsewhere)
    r = run_cli("compare", "--sweep", manifest)
    assert r.exit_code == 0, r.output  # the decoy has no eval.json: reading it would have failed
    assert "seg-only" in r.output and "elsewhere" not in r.output
