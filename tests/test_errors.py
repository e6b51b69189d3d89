"""The CLI's error policy: the user's errors are one line, bugs keep their traceback, --debug shows everything."""

from __future__ import annotations

import pytest
from helpers import run_cli

import crosstask_cli.errors as errors


def test_every_user_error_derives_from_the_base_and_its_builtin():
    from crosstask_cli.cli.common import CLIError
    from crosstask_cli.data.prepared import DatasetError
    from crosstask_cli.engine.checkpoint import CheckpointError
    from crosstask_cli.engine.trainer import NonFiniteLossError, RunDirError
    from crosstask_cli.models.encoder import PretrainedWeightsMissing

    for cls, builtin in [
        (DatasetError, ValueError),
        (CheckpointError, ValueError),
        (RunDirError, ValueError),
        (NonFiniteLossError, RuntimeError),
        (PretrainedWeightsMissing, FileNotFoundError),
        (errors.ConfigError, ValueError),
        (errors.MissingDependencyError, ImportError),
        (CLIError, Exception),
    ]:
        assert issubclass(cls, errors.CrosstaskError) and issubclass(cls, builtin), cls


def test_user_error_is_one_line_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    missing = tmp_path / "missing.pt"
    r = run_cli("info", str(missing))
    assert r.exit_code == 1 and "no such checkpoint" in r.output and "Traceback" not in r.output
    r = run_cli("--debug", "info", str(missing))
    assert r.exit_code == 1 and "no such checkpoint" in r.output and "Traceback" in r.output
    monkeypatch.setenv("CROSSTASK_DEBUG", "1")
    r = run_cli("info", str(missing))
    assert r.exit_code == 1 and "Traceback" in r.output


def test_a_bug_surfaces_with_its_traceback_and_exit_code_2(tmp_path, monkeypatch):
    import crosstask_cli.engine.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise KeyError("model_config")  # what a bug looks like: not a CrosstaskError

    monkeypatch.setattr(checkpoint, "load_checkpoint", broken)
    r = run_cli("info", str(tmp_path / "x.pt"))
    assert r.exit_code == 2
    assert "Traceback" in r.output and "internal error" in r.output and "KeyError" in r.output


@pytest.mark.parametrize("exc", [ValueError("shape mismatch"), RuntimeError("CUDA out of memory")])
def test_plain_value_and_runtime_errors_are_not_mistaken_for_user_errors(tmp_path, monkeypatch, exc):
    import crosstask_cli.engine.checkpoint as checkpoint

    def broken(*args, **kwargs):
        raise exc

    monkeypatch.setattr(checkpoint, "load_checkpoint", broken)
    r = run_cli("info", str(tmp_path / "x.pt"))
    assert r.exit_code == 2 and "Traceback" in r.output
