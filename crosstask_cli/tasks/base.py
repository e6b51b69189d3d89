"""What a task is: :class:`TaskSpec`, the one place that knows a task's tensors, losses, metrics, files and colours.

Conventions every spec follows (B = batch, H×W = image size):

- a prediction is B×C×H×W (C = :meth:`TaskSpec.channels`), already through the head's activation
  (:meth:`TaskSpec.activate`); a target is what :meth:`TaskSpec.target_tensor` makes of the prepared array;
- :meth:`TaskSpec.valid` says which target pixels count (B×H×W bool);
- losses are scalar fp32 tensors; metrics accumulate on the batches' device and are read once, in ``compute()``.

Importing this module (and the spec modules) imports neither torch nor NumPy: the command line reads the specs'
options to build its flags, and ``crosstask --help`` must answer at once. Methods import what they use.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from crosstask_cli.errors import ConfigError
from crosstask_cli.options import HyperParameter

if TYPE_CHECKING:
    import numpy as np
    import torch


@dataclass(frozen=True)
class TaskContext:
    """What a spec needs to know about the dataset: segmentation classes (count, ignore id, names, palette) and the
    depth encoding (``inverse`` or ``metric``). Tasks read the parts that concern them."""

    num_classes: int = 0
    ignore_index: int = 255
    class_names: tuple[str, ...] = ()
    palette: tuple[tuple[int, int, int], ...] = ()
    depth_kind: str = "metric"

    @classmethod
    def from_meta(cls, meta: Any) -> TaskContext:
        """From a prepared dataset's :class:`~crosstask_cli.data.prepared.DatasetMeta`."""
        return cls(meta.num_classes, meta.ignore_index, tuple(meta.class_names),
                   tuple(tuple(c) for c in meta.palette), meta.depth_kind)  # fmt: skip

    @classmethod
    def from_dataset_info(cls, ds: Mapping[str, Any]) -> TaskContext:
        """From a checkpoint's ``dataset`` entry."""
        return cls(int(ds["num_classes"]), int(ds.get("ignore_index", 255)), tuple(ds.get("class_names", ())),
                   tuple(tuple(c) for c in ds.get("palette", ())), ds["depth"]["kind"])  # fmt: skip


def protocols_of(protocols: str | tuple[str, ...]) -> tuple[str, ...]:
    """``"standard"`` or a tuple of protocols → the tuple, checked (ConfigError naming the bad one)."""
    from crosstask_cli.metrics import PROTOCOLS

    chosen = (protocols,) if isinstance(protocols, str) else tuple(protocols)
    unknown = [p for p in chosen if p not in PROTOCOLS]
    if unknown or not chosen:
        raise ConfigError(f"protocol must be one of {PROTOCOLS}, got {sorted(unknown) or chosen}")
    return chosen


class TaskMetrics:
    """Streaming metrics of one task, for one protocol or several (each kept only when asked for). ``update(pred,
    target)`` with the spec's tensors (on any device, never read back); ``compute(protocol)`` → {metric: value}
    (default: the first protocol asked for); ``state()`` lists the tensors that add up over the shards of a
    distributed evaluation and ``load_state`` puts the sums back."""

    protocols: tuple[str, ...] = ("standard",)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self, protocol: str | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def _protocol(self, protocol: str | None) -> str:
        protocol = protocol or self.protocols[0]
        if protocol not in self.protocols:
            raise ConfigError(f"protocol must be one of {self.protocols} (those these metrics kept), got {protocol!r}")
        return protocol

    def state(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def load_state(self, tensors: list[torch.Tensor]) -> None:
        raise NotImplementedError


class TaskSpec:
    """A task. Subclasses fill in the class attributes and the methods; one instance per task is registered in
    :mod:`crosstask_cli.tasks`.

    Attributes:
        name: short name used in flags, files and keys (``seg``).
        title: what reports call it (``segmentation``).
        result_key: its section in ``eval --json`` (``segmentation``); onnx_output: its output's name in an
            exported ONNX graph (``seg_logits``).
        array: the prepared array file ``{split}/{array}.npy`` (N×H×W, or N×H×W×``array_channels``); ``dtype``:
            its dtype name; ``invalid``: how an invalid pixel is marked there (recorded in ``meta.json``).
        options: the training options the task owns (:class:`~crosstask_cli.options.HyperParameter`); ``direct_option`` / ``transfer_option``
            name the ones that choose its direct loss and the loss of a prediction transferred into it.
        directions: every scalar metric it reports → +1 when higher is better, −1 when lower is (Δm and model
            selection read these); ``titles``: short column names of metrics in tables, ``report_titles`` the rows
            of ``eval``'s table (in order); ``compared``: the metrics
            of comparison tables and Δm; ``logged``: those logged per epoch in ``metrics.csv``.
        agreement: the name of its direct-vs-transferred agreement figure (``consistency`` in eval).
        image_error / pixel_error: the names of its per-image and per-pixel errors in the energy report.
        transfer_input: what a TaskTransferNet fed by this task applies to the prediction first (``log_softmax``
            or ``identity``); transfer_output: the activation of a TaskTransferNet predicting it (``log_softmax``,
            ``identity`` or ``l2``).
    """

    name: str = ""
    title: str = ""
    result_key: str = ""
    onnx_output: str = ""
    array: str = ""
    array_channels: int = 0  # 0: N×H×W prepared arrays; C: N×H×W×C (vector targets)
    dtype: str = "float32"
    invalid: Any = 0
    options: tuple[HyperParameter, ...] = ()
    direct_option: str | None = None
    transfer_option: str | None = None
    directions: dict[str, int] = {}
    titles: dict[str, str] = {}
    report_titles: dict[str, str] = {}
    agreement_title: str = ""
    compared: tuple[str, ...] = ()
    logged: tuple[str, ...] = ()
    agreement: str = ""
    image_error: str = ""
    pixel_error: str = ""
    transfer_input: str = "identity"
    transfer_output: str = "identity"
    file_dtypes: tuple[str, ...] = ()  # dtypes its .npy prediction files may be written in (first: the default)

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # --- the network ---------------------------------------------------------------------------------------
    def channels(self, ctx: TaskContext) -> int:
        """Output channels of its head."""
        raise NotImplementedError

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """The head's activation, applied to the decoder's raw output (identity unless said otherwise)."""
        return raw

    # --- targets -------------------------------------------------------------------------------------------
    def target_tensor(self, array: np.ndarray) -> torch.Tensor:
        """One sample's prepared array (H×W… as stored) → its target tensor (without the batch dimension)."""
        raise NotImplementedError

    def valid(self, target: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        """B×H×W bool: the target pixels that count."""
        raise NotImplementedError

    def flip(self, array: np.ndarray) -> np.ndarray:
        """A horizontally flipped H×W… sample array (a flip that changes the values, e.g. normals, overrides)."""
        return array[:, ::-1]

    def rescale(self, array: np.ndarray, scale: float, ctx: TaskContext) -> np.ndarray:
        """Values of a sample after the scale augmentation (the object appears ``scale`` times closer)."""
        return array

    def check_array(self, array: np.ndarray, ctx: TaskContext) -> tuple[int, str] | None:
        """The first sample of a chunk of prepared values (N×H×W…) that is wrong and what is wrong with it
        ("holds …"), or None (the checks of ``--verify``)."""
        return None

    # --- losses --------------------------------------------------------------------------------------------
    def option_value(self, options: Mapping[str, Any] | None, name: str | None) -> Any:
        """The value of one of the task's options in ``options`` (keyword → value), else its default."""
        if name is None:
            return None
        default = next(o.default for o in self.options if o.name == name)
        return default if options is None else options.get(name, default)

    def loss(self, pred: torch.Tensor, target: torch.Tensor, kind: str | None = None,
             ctx: TaskContext | None = None) -> torch.Tensor:  # fmt: skip
        """The direct loss of a prediction against its ground truth (``kind``: the choice of ``direct_option``)."""
        raise NotImplementedError

    def transferred_loss(self, transferred: torch.Tensor, direct: torch.Tensor, target: torch.Tensor,
                         consistency: str, options: Mapping[str, Any] | None = None,
                         ctx: TaskContext | None = None) -> torch.Tensor:  # fmt: skip
        """The loss of a prediction of this task transferred from another task: against the **detached** direct
        prediction ``direct`` (``xtsc``) or the ground truth (``xtc``: the direct loss)."""
        raise NotImplementedError

    # --- metrics -------------------------------------------------------------------------------------------
    def metrics(self, protocol: str | tuple[str, ...] = "standard", ctx: TaskContext | None = None,
                original: Any = None) -> TaskMetrics:  # fmt: skip
        """Fresh streaming metrics for ``protocol`` (``standard``, ``original``, or both as a tuple). ``original``:
        an :class:`~crosstask_cli.metrics.OriginalProtocolMetrics` that seg and depth share in one evaluation."""
        raise NotImplementedError

    def empty_metrics(self, protocol: str = "standard", ctx: TaskContext | None = None) -> dict[str, Any]:
        """What ``compute()`` gives before any update (every value NaN): a task the model does not predict."""
        return self.metrics(protocol, ctx).compute()

    def agreement_sums(self, direct: torch.Tensor, transferred: torch.Tensor, target: torch.Tensor,
                       ctx: TaskContext) -> torch.Tensor:  # fmt: skip
        """[numerator, count] (float64) of the agreement figure of one batch; the figure is their ratio."""
        raise NotImplementedError

    def energy(self, direct: torch.Tensor, transferred: torch.Tensor) -> torch.Tensor:
        """B×H×W per-pixel disagreement of a direct prediction and a transferred one (fp32, ≥ 0)."""
        raise NotImplementedError

    def image_errors(self, pred: torch.Tensor, target: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        """Per image of a batch (B, float): its error (higher = worse; NaN without valid pixels)."""
        raise NotImplementedError

    def image_scores(self, pred: torch.Tensor, target: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        """Per image, the score the energy report lists (mIoU for segmentation, else the error itself)."""
        return self.image_errors(pred, target, ctx)

    def pixel_errors(self, pred: torch.Tensor, target: torch.Tensor, ctx: TaskContext) -> torch.Tensor:
        """B×H×W per-pixel error (meaningful where :meth:`valid`)."""
        raise NotImplementedError

    def error_of_score(self, score):
        """The per-image error given the per-image score of :meth:`image_scores` (the same, unless overridden)."""
        return score

    # --- files and pictures --------------------------------------------------------------------------------
    def file_suffixes(self, tag: str = "") -> tuple[str, ...]:
        """The suffixes of the files one prediction of this task writes (``tag``: '' or ``_transfer``)."""
        raise NotImplementedError

    def full_size(self, pred: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
        """One image's C×h×w prediction → the array written at the input's ``size`` (H, W)."""
        raise NotImplementedError

    def encode(self, array: np.ndarray, ctx: TaskContext, tag: str = "", dtype: str | None = None) -> dict[str, bytes]:
        """A full-size prediction array → {suffix: file bytes}; ``dtype``: one of :attr:`file_dtypes` for its
        .npy file (None: the first)."""
        raise NotImplementedError

    def read_prediction(self, path: Any, height: int | None = None, width: int | None = None) -> np.ndarray:
        """A prediction file of this task → its array, resized to ``height``×``width`` when given (eval
        --predictions; by the nearest pixel centre); one-line errors name the file."""
        raise NotImplementedError

    def prediction_file(self, rel: str, tag: str = "") -> str:
        """The file ``eval --predictions`` and panels read for one prediction (``rel`` = REL/STEM)."""
        return f"{rel}{self.file_suffixes(tag)[0]}"

    def colorize(self, array: np.ndarray, ctx: TaskContext, vrange: Any = None) -> np.ndarray:
        """A prediction or target array (H×W…) → H×W×3 uint8 RGB for figures."""
        raise NotImplementedError

    def as_array(self, pred: torch.Tensor) -> np.ndarray:
        """One image's C×h×w prediction → the array its files and figures hold, at the model's size (H×W for one
        channel, else H×W×C)."""
        p = pred.detach().float()
        return (p[0] if p.shape[0] == 1 else p.permute(1, 2, 0)).cpu().numpy()


def first_bad(bad: np.ndarray) -> int:
    """The index of the first sample of an N×… boolean array with any True."""
    import numpy as np

    return int(np.argwhere(bad.reshape(len(bad), -1).any(1))[0, 0])
