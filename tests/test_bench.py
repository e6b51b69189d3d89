"""The benchmark on a shared machine: repetitions disturbed by other processes are dropped and repeated, too few
clean ones make a figure "noisy machine" rather than "not met", and --compare times two settings interleaved."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from helpers import run_cli

from crosstask_cli.bench import BenchResult, LoadProbe, time_it


class ScriptedProbe:
    """A load probe that reports the given loads (cores used by others), one per timed repetition (each mark is
    long past, so every repetition closes its own measuring window)."""

    available = True

    def __init__(self, loads: list[float]) -> None:
        self.loads = list(loads)

    def mark(self):
        return (0.0, 0.0, float("-inf"))

    def others_since(self, mark) -> float:
        return self.loads.pop(0)


def test_disturbed_repetitions_are_dropped_and_repeated():
    calls = []
    t = time_it(lambda: calls.append(1), runs=3, warmup=1, device=torch.device("cpu"),
                probe=ScriptedProbe([0.0, 1.2, 0.1, 0.9, 0.2]), max_others=0.3)  # fmt: skip
    assert len(calls) == 1 + 5  # warm-up, then repeated until 3 clean runs
    assert t.kept == [True, False, True, False, True] and not t.noisy
    assert t.to_dict()["kept"] == 3 and len(t.clean) == 3


def test_short_repetitions_are_judged_by_the_window_they_ran_in():
    """/proc/stat counts 10 ms ticks: runs shorter than the window share one load measurement."""
    probe = LoadProbe()
    t = time_it(lambda: time.sleep(0.01), runs=12, warmup=0, device=torch.device("cpu"), probe=probe)
    assert len(t.seconds) == len(t.others) == len(t.kept) >= 12
    assert len(set(t.others)) < len(t.others)  # several runs per measured window


def test_too_few_clean_repetitions_make_the_timing_noisy():
    t = time_it(lambda: None, runs=3, warmup=0, device=torch.device("cpu"), probe=ScriptedProbe([2.0] * 9),
                max_others=0.3)  # fmt: skip
    assert len(t.seconds) == 9 and sum(t.kept) == 0 and t.noisy
    assert t.clean == t.seconds  # statistics fall back to every run, flagged noisy


def test_a_noisy_timing_turns_not_met_into_noisy_machine():
    res = BenchResult(config={}, device="cpu")
    res.ratios.update(train_vs_matmul=0.5, direct_vs_full_forward=3.0, metrics_share_of_eval=0.2)
    assert res.targets()["train_vs_matmul"][2] == "not met"
    res.noisy.append("train_step")
    targets = res.targets()
    assert targets["train_vs_matmul"][2] == "noisy machine"
    assert targets["direct_vs_full_forward"][2] == "met"  # a met target stays met
    assert targets["metrics_share_of_eval"][2] == "not met"  # its timings were clean: an honest miss


@pytest.mark.skipif(not LoadProbe().available, reason="no /proc/stat")
def test_the_probe_sees_other_processes_but_not_this_one():
    """Measured against the load while this process sleeps, so whatever else the machine runs cancels out."""
    probe = LoadProbe()

    def others_during(activity) -> float:
        mark = probe.mark()
        activity()
        return probe.others_since(mark)

    def spin():  # this process's own work is not "others"
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            sum(range(1000))

    idle = others_during(lambda: time.sleep(1.0))
    if idle > (os.cpu_count() or 1) - 1.2:
        pytest.skip(f"the machine is already busy ({idle:.1f} cores used by others): no room to see a hog")
    assert others_during(spin) - idle < 0.5
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert others_during(lambda: time.sleep(1.0)) - idle > 0.6  # about one core more
    finally:
        hog.kill()
        hog.wait()


def test_cli_compare_times_two_settings_interleaved(tmp_path):
    out = tmp_path / "cmp.json"
    r = run_cli("bench", "--enc-layers", "18", "--height", "32", "--width", "64", "--batch-size", "2", "--runs", "2",
                "--warmup", "1", "--quiet-wait", "0", "--compare", "weighting=fixed,pcgrad", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "ratio pcgrad / fixed" in r.output
    c = json.loads(out.read_text())["figures"]["compare"]
    assert c["setting"] == "weighting" and (c["a"], c["b"]) == ("fixed", "pcgrad")
    assert c["attempts"] >= 2 and len(c["others_cores"]) == c["attempts"] and c["ratio_b_over_a"] > 0
    for bad, message in (("weighting=fixed", "SETTING=A,B"), ("speed=1,2", "SETTING=A,B"),
                         ("amp=off,fp8", "fp8 is not one of"), ("amp=bf16,bf16", "the same")):  # fmt: skip
        r = run_cli("bench", "--compare", bad)
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, (bad, r.output)
    r = run_cli("bench", "--compare", "amp=off,bf16", "--part", "model")
    assert r.exit_code == 1 and "--part does not apply" in r.output


def test_cli_weighting_times_each_method_against_fixed_with_its_memory(tmp_path):
    out = tmp_path / "w.json"
    r = run_cli("bench", "--enc-layers", "18", "--height", "32", "--width", "64", "--batch-size", "2", "--runs", "2",
                "--warmup", "1", "--quiet-wait", "0", "--weighting", "rlw,mgda", "--json", out)  # fmt: skip
    assert r.exit_code == 0, r.output
    payload = json.loads(out.read_text())
    methods = payload["figures"]["weightings"]["methods"]
    assert list(methods) == ["fixed", "rlw", "mgda"]
    assert methods["fixed"]["ratio_vs_fixed"] == 1.0
    assert methods["rlw"]["kind"] == "loss" and methods["mgda"]["kind"] == "gradient"
    assert all(m["median_s"] > 0 and m["peak_memory_gb"] > 0.1 for m in methods.values())
    targets = payload["targets"]
    assert targets["weighting_rlw_vs_fixed"]["target"] == 1.05
    assert targets["weighting_mgda_vs_fixed"]["target"] == 1.3
    assert "mgda" in r.output and "× fixed" in r.output
    r = run_cli("bench", "--weighting", "fixed,magic")
    assert r.exit_code == 1 and "magic is not one of" in r.output
    r = run_cli("bench", "--weighting", "famo", "--part", "model")
    assert r.exit_code == 1 and "--part and --compare do not apply" in r.output


def test_energy_part_times_the_report_against_an_eval_batch():
    from crosstask_cli.bench import BenchConfig, run_bench

    cfg = BenchConfig(enc_layers=18, height=32, width=64, batch_size=2, runs=2, warmup=1, quiet_wait_s=0,
                      max_others=64.0, amp="off")  # fmt: skip
    res = run_bench(cfg, ("energy",))
    e = res.figures["energy"]
    assert e["eval_batch"]["median_s"] > 0 and e["energy_update"]["median_s"] > 0
    assert res.ratios["energy_share_of_eval"] == pytest.approx(
        e["energy_update"]["median_s"] / e["eval_batch"]["median_s"]
    )
    value, target, status = res.targets()["energy_share_of_eval"]
    assert target == 0.10 and status in ("met", "not met")


def test_tasks_part_sets_the_third_task_and_its_nets_against_the_two_task_step():
    from crosstask_cli.bench import TASK_SETS, BenchConfig, run_bench

    cfg = BenchConfig(enc_layers=18, height=32, width=64, batch_size=2, runs=1, warmup=1, quiet_wait_s=0,
                      max_others=64.0, amp="off")  # fmt: skip
    res = run_bench(cfg, ("tasks",))
    table = res.figures["tasks"]["settings"]
    two, plain, six = (table[n] for n in TASK_SETS)
    # the third decoder and four more TaskTransferNets add parameters and work to either smaller model
    for key in ("parameters", "train_flops_per_image"):
        assert six[key] > max(two[key], plain[key])
    assert two["ratio_vs_two_tasks"] == 1.0 and all(t["median_s"] > 0 for t in table.values())
    assert res.ratios["third_task_vs_two_tasks"] == plain["ratio_vs_two_tasks"]
    assert res.ratios["three_tasks_six_nets_vs_two_tasks"] == six["ratio_vs_two_tasks"]
    machine = res.figures["machine"]  # figures say where and when they were measured
    assert machine["cpu"] and machine["logical_cores"] >= 1 and machine["date_utc"].endswith("+00:00")


@pytest.mark.slow  # four networks, each with a fresh process for its peak memory: minutes on 2 cores
def test_archs_part_times_every_architecture_against_resnet(tmp_path):
    r = run_cli("bench", "--part", "archs", "--enc-layers", "18", "--height", "32", "--width", "64", "--batch-size",
                "1", "--runs", "1", "--warmup", "1", "--quiet-wait", "0", "--max-others", "64", "--amp", "off",
                "--json", str(tmp_path / "b.json"))  # fmt: skip
    assert r.exit_code == 0, r.output
    import json

    res = json.loads((tmp_path / "b.json").read_text())
    table = res["figures"]["archs"]["settings"]
    assert set(table) == {"resnet", "segnet-mtan", "segnet", "adamt-net"}
    assert table["resnet"]["ratio_vs_resnet"] == 1.0
    # MTAN's attention branches add parameters and work to the split SegNet it is built on
    for key in ("parameters", "train_flops_per_image"):
        assert table["segnet-mtan"][key] > table["segnet"][key]
    assert all(row["peak_memory_gb"] > 0 and row["median_s"] > 0 for row in table.values())
    assert res["ratios"]["arch_segnet-mtan_vs_resnet"] == table["segnet-mtan"]["ratio_vs_resnet"]
    assert "segnet-mtan" in r.output
