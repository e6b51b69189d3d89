"""The errors crosstask raises for problems in the user's input (options, files, datasets, checkpoints, runs).

Every one derives from :class:`CrosstaskError`; the CLI prints those (and ``OSError``) as one line and exits 1.
Anything else is a bug and surfaces with its traceback. Each class also derives from the builtin that callers
of the Python API would expect (``ValueError``, ``FileNotFoundError``, …), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class CrosstaskError(Exception):
    """Base class: the user's input cannot be used as given; the message says what and where."""


class ConfigError(CrosstaskError, ValueError):
    """An option or configuration value is invalid, or options contradict each other."""


class InputError(CrosstaskError, ValueError):
    """An input file or folder (images, predictions, logs, JSON) is not what the command expects."""


class DatasetError(CrosstaskError, ValueError):
    """A dataset directory is missing, malformed, or incompatible with the request (message names the path)."""


class CheckpointError(CrosstaskError, ValueError):
    """A file is not a usable crosstask checkpoint (message names the file and why)."""


class RunDirError(CrosstaskError, ValueError):
    """The run directory cannot be used as asked (existing run without --resume/--force, nothing to resume)."""


class NonFiniteLossError(CrosstaskError, RuntimeError):
    """A training loss became NaN/inf more often than ``skip_nonfinite`` allows."""


class DeviceUnavailableError(CrosstaskError, RuntimeError):
    """The requested device (CUDA, MPS) is not available on this machine."""


class PretrainedWeightsMissing(CrosstaskError, FileNotFoundError):
    """ImageNet weights were asked for but are not on disk (this toolkit never downloads)."""


class MissingDependencyError(CrosstaskError, ImportError):
    """An optional dependency (e.g. the onnx extra) is needed for this command but not installed."""
