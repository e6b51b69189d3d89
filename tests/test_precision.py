"""--amp auto|off|bf16|fp16: which precision a run gets, that it is recorded, and that losses stay fp32."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli

import crosstask_cli as ct
from crosstask_cli.engine.callbacks import TrainReporter
from crosstask_cli.engine.device import resolve_amp
from crosstask_cli.errors import ConfigError

CPU, MPS = torch.device("cpu"), torch.device("mps")


def test_auto_is_bf16_only_where_the_hardware_has_it(monkeypatch):
    assert resolve_amp("auto", CPU, native_bf16=True) == "bf16"
    assert resolve_amp("auto", CPU, native_bf16=False) == "off"
    assert resolve_amp("auto", MPS) == "off"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_amp("auto", torch.device("cuda")) == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_amp("auto", torch.device("cuda")) == "off"  # fp16 only when asked for: it needs loss scaling
    for forced in ("off", "bf16", "fp16"):
        assert resolve_amp(forced, CPU, native_bf16=False) == forced
    assert resolve_amp(True, CPU, native_bf16=False) == "off" and resolve_amp(False, CPU, native_bf16=True) == "off"
    with pytest.raises(ConfigError, match="--amp must be one of auto, off, bf16, fp16"):
        resolve_amp("fp8", CPU)


def test_a_run_records_the_precision_it_used_and_computes_losses_in_fp32(tmp_path, synthetic_prepared, monkeypatch):
    import crosstask_cli.engine.trainer as trainer_module

    seen = []
    real_loss = trainer_module.CrossTaskLoss.__call__

    def spy(self, pred, *args, **kwargs):
        seen.append({t.dtype for t in pred if t is not None})
        return real_loss(self, pred, *args, **kwargs)

    monkeypatch.setattr(trainer_module.CrossTaskLoss, "__call__", spy)
    modes, real_autocast = [], trainer_module.autocast
    monkeypatch.setattr(
        trainer_module, "autocast", lambda device, mode: modes.append(mode) or real_autocast(device, mode)
    )
    starts = []

    class Reporter(TrainReporter):
        def start(self, info):
            starts.append(info)

    cfg = ct.TrainConfig.for_dataset("synthetic", data=str(synthetic_prepared), height=32, width=64, epochs=1,
                                     enc_layers=18, batch_size=4, workers=0, max_steps_per_epoch=1, amp="bf16")  # fmt: skip
    ct.train(cfg, run_dir=tmp_path / "run", reporter=Reporter())
    assert modes and set(modes) == {"bf16"}  # the forward ran under bf16 autocast…
    assert seen and all(dtypes == {torch.float32} for dtypes in seen)  # …and the losses saw fp32
    assert starts[0]["precision"] == "bf16 autocast"
    assert json.loads((tmp_path / "run/config.json").read_text())["runtime"]["amp"] == "bf16"
    # auto is written down as what it resolved to, so --resume and --config reproduce the same precision
    ct.train(cfg.replace(amp="auto"), run_dir=tmp_path / "auto")
    saved = json.loads((tmp_path / "auto/config.json").read_text())["runtime"]["amp"]
    assert saved == resolve_amp("auto", CPU)
    r = run_cli("eval", "--ckpt", tmp_path / "run/checkpoints/best.pt", "--amp", "off", "--json", tmp_path / "e.json")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "e.json").read_text())["precision"] == "off" and "fp32" in r.output
