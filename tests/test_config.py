"""The nested training config: one table behind the CLI, --set, validation in field terms, old files still load."""

from __future__ import annotations

import json

import pytest
import typer
from helpers import TINY, run_cli

from crosstask_cli.engine.config import BY_PATH, FIELDS, PAPER_DEFAULTS, TrainConfig
from crosstask_cli.errors import ConfigError


def test_paper_defaults_per_dataset_and_flat_keywords():
    for name, defaults in PAPER_DEFAULTS.items():
        cfg = TrainConfig.for_dataset(name)
        flat = cfg.flat()
        assert {k: flat[k] for k in defaults} == defaults
        assert cfg.data.name == name
    cfg = TrainConfig.for_dataset("nyu", lr=3e-4, tasks=("seg",))
    assert cfg.optim.lr == 3e-4 and cfg.model.tasks == ("seg",) and cfg.loss.consistency == "none"


def test_config_is_frozen_and_replace_validates():
    cfg = TrainConfig.for_dataset("cityscapes")
    with pytest.raises(AttributeError):
        cfg.optim.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(epochs=3).optim.epochs == 3 and cfg.optim.epochs == 250
    with pytest.raises(ConfigError, match="--epochs must be a positive integer"):
        cfg.replace(epochs=0)
    with pytest.raises(ConfigError, match="unknown config keys: nope"):
        cfg.replace(nope=1)


def test_nested_json_round_trip_and_a_0_1_flat_config_still_loads(tmp_path):
    cfg = TrainConfig.for_dataset("synthetic", weighting="gradnorm", betas=(0.8, 0.95), tasks=("seg", "depth"))
    cfg.save(tmp_path / "config.json")
    stored = json.loads((tmp_path / "config.json").read_text())
    assert set(stored) == {"data", "model", "loss", "optim", "runtime"}
    assert stored["optim"]["betas"] == [0.8, 0.95]
    assert TrainConfig.load(tmp_path / "config.json") == cfg
    # crosstask 0.1.0 wrote every option flat, with an empty "extra"
    old = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.flat().items()}
    old["extra"] = {}
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert TrainConfig.load(tmp_path / "old.json") == cfg
    (tmp_path / "bad.json").write_text(json.dumps({"optim": {"learning_rate": 1}}))
    with pytest.raises(ConfigError, match="unknown config key: optim.learning_rate"):
        TrainConfig.load(tmp_path / "bad.json")


def test_set_assignments_reach_any_field_in_its_type():
    cfg = TrainConfig.for_dataset("synthetic").with_assignments(
        ["optim.lr=3e-4", "optim.betas=0.8,0.9", "model.tasks=depth", "runtime.amp=bf16", "runtime.max_val_batches=2"]
    )
    assert cfg.optim.lr == 3e-4 and cfg.optim.betas == (0.8, 0.9) and cfg.model.tasks == ("depth",)
    assert cfg.runtime.amp == "bf16" and cfg.runtime.max_val_batches == 2
    with pytest.raises(ConfigError, match="expected SECTION.FIELD=VALUE"):
        cfg.with_assignments(["optim.learning_rate=1"])
    with pytest.raises(ConfigError, match="not a valid int"):
        cfg.with_assignments(["optim.epochs=many"])
    with pytest.raises(ConfigError, match="--lr must be positive"):
        cfg.with_assignments(["optim.lr=-1"])


def test_every_field_is_a_train_option_and_nothing_else_is():
    from crosstask_cli.cli.app import app

    train = typer.main.get_command(app).commands["train"]
    params = {p.name for p in train.params}
    fields = {k for k, f in FIELDS.items() if f.flag is not None}
    run_only = {"dataset", "resume", "force", "config", "assignments", "uncertainty_weights", "gradnorm"}
    assert params == fields | run_only
    for p in train.params:
        if p.name in fields:
            assert FIELDS[p.name].flag in p.opts, p.name  # the flag comes from the table
            assert p.help == FIELDS[p.name].help
    assert len(BY_PATH) == len(FIELDS)  # one path per keyword


def test_cli_set_overrides_and_is_refused_on_resume(synthetic_raw, tmp_path):
    run = tmp_path / "run"
    r = run_cli("train", "synthetic", "--data", synthetic_raw, "--run-dir", run, *TINY, "--epochs", "1",
                "--set", "runtime.max_steps_per_epoch=1", "--set", "loss.alpha=0.2")  # fmt: skip
    assert r.exit_code == 0, r.output
    saved = json.loads((run / "config.json").read_text())
    assert saved["runtime"]["max_steps_per_epoch"] == 1 and saved["loss"]["alpha"] == 0.2
    r = run_cli("train", "synthetic", "--run-dir", run, "--resume", "--set", "loss.alpha=0.3")
    assert r.exit_code == 1 and "--set cannot change it" in r.output
    r = run_cli("train", "synthetic", "--run-dir", tmp_path / "x", "--set", "bogus")
    assert r.exit_code == 1 and "expected SECTION.FIELD=VALUE" in r.output and "Traceback" not in r.output
