"""KD4MTL (Li & Bilen 2020, "Knowledge Distillation for Multi-task Learning"): single-task teachers, frozen, and per
task two bias-free 1×1 adaptors that map the student's task-specific features onto the teacher's.

The two levels are the task's deepest and last task-specific maps (each decoder's ``features``): for SegNet-MTAN, as
the original, the last encoder attention output a[4] (512 channels, H/32) and the last decoder attention output
b[4] (64, H); for ResNet the first decoder block's output (128, H/16) and the last block's convolutions (128, H/2);
for AdaMT-Net the first and last decoder blocks' outputs (512 at H/8, 64 at H). They are the same places: where
the task's own path starts to differ from the shared features, and where its head reads.

    distill_t = Σ_levels mean over batch and pixels of ‖a/‖a‖ − b/‖b‖‖²     (norms over channels, √(Σ x² + 1e-6))

with a the adapted student map and b the teacher's; the objective adds Σ_t distill_t (weight 1 per task) to the
combined task losses. The adaptors have their own Adam (lr 0.1, weight decay 5e-4), stepped with the model's.

Teachers run in eval mode, without gradients: their BatchNorm layers use the running statistics they were
evaluated with, so the targets do not depend on the student's batch and the teacher checkpoints are not altered
(the original runs them in training mode, so its targets use batch statistics and its teachers' statistics drift).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint
from crosstask_cli.engine.config import METHODS, parse_teachers

__all__ = ["METHODS", "Adaptors", "Distillation", "normalised_distance", "parse_teachers"]
from crosstask_cli.errors import CheckpointError, ConfigError

ADAPTOR_LR = 0.1
ADAPTOR_WEIGHT_DECAY = 5e-4
EPS = 1e-6


def normalised_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over batch and pixels of the squared distance of the per-pixel channel-normalised maps (B×C×H×W each)."""
    s = student.float()
    t = teacher.float()
    s = s / torch.sqrt(s.square().sum(1, keepdim=True) + EPS)
    t = t / torch.sqrt(t.square().sum(1, keepdim=True) + EPS)
    return (s - t).square().sum(1).mean()


class Adaptors(nn.Module):
    """Per task, one bias-free 1×1 convolution per level (``task.0``, ``task.1``)."""

    def __init__(self, channels: dict[str, tuple[int, int]]) -> None:
        super().__init__()
        self.per_task = nn.ModuleDict(
            {t: nn.ModuleList(nn.Conv2d(c, c, 1, bias=False) for c in cs) for t, cs in channels.items()}
        )

    def forward(self, task: str, maps: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
        return [conv(m) for conv, m in zip(self.per_task[task], maps, strict=True)]


class Distillation:
    """The teachers, the adaptors and their optimizer of a KD4MTL run on ``device``."""

    def __init__(self, teachers: dict[str, nn.Module], adaptors: Adaptors) -> None:
        self.teachers = teachers
        self.adaptors = adaptors
        self.optimizer = torch.optim.Adam(adaptors.parameters(), lr=ADAPTOR_LR, weight_decay=ADAPTOR_WEIGHT_DECAY)

    @classmethod
    def load(
        cls, teachers: dict[str, str], student, dataset: dict, device: torch.device, memory_format
    ) -> Distillation:
        """Load and check the teacher checkpoints ({task: path}) for ``student`` (a CrossTaskNet) trained on
        ``dataset`` (the run's checkpoint description of its data)."""
        missing = [t for t in student.task_order if t not in teachers]
        if missing:
            raise ConfigError(f"--method kd4mtl distils every task: give --teacher {missing[0]}=CHECKPOINT")
        loaded = {}
        for task, path in teachers.items():
            ckpt = load_checkpoint(path)
            _check_teacher(Path(path), ckpt, task, student, dataset)
            teacher = model_from_checkpoint(ckpt, path).to(device, memory_format=memory_format).eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            loaded[task] = teacher
        channels = {t: tuple(student.decoders[t].feature_channels) for t in student.task_order}
        return cls(loaded, Adaptors(channels).to(device, memory_format=memory_format))

    def loss(self, images: torch.Tensor, student_maps: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Σ_t distill_t (module doc) for a batch: the students' maps from ``CrossTaskNet(x, task_features=True)``."""
        total = None
        for task, teacher in self.teachers.items():
            with torch.no_grad():
                _, maps = teacher(images, direct_only=True, task_features=True)
            adapted = self.adaptors(task, student_maps[task])
            for a, b in zip(adapted, maps[task], strict=True):
                d = normalised_distance(a, b)
                total = d if total is None else total + d
        return total

    def state_dict(self) -> dict:
        return {"adaptors": {k: v.detach().cpu() for k, v in self.adaptors.state_dict().items()},
                "optimizer": self.optimizer.state_dict()}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        self.adaptors.load_state_dict(state["adaptors"])
        self.optimizer.load_state_dict(state["optimizer"])


def _check_teacher(path: Path, ckpt: dict, task: str, student, dataset: dict) -> None:
    mc, sc = ckpt["model_config"], student.config
    tasks = tuple(mc.get("tasks", ("seg", "depth")))
    problems = []
    if tasks != (task,):
        problems.append(f"it was trained on {','.join(tasks)}, not {task} alone")
    if mc.get("arch", "resnet") != sc.arch:
        problems.append(f"its architecture is {mc.get('arch', 'resnet')}, the student's {sc.arch}")
    elif sc.arch == "resnet" and mc.get("enc_layers") != sc.enc_layers:
        problems.append(f"its encoder is ResNet-{mc.get('enc_layers')}, the student's ResNet-{sc.enc_layers}")
    d = ckpt.get("dataset", {})
    for key in ("name", "height", "width"):
        if d.get(key) != dataset.get(key):
            problems.append(f"its data {key} is {d.get(key)!r}, the run's {dataset.get(key)!r}")
    if task == "seg" and d.get("num_classes") != dataset.get("num_classes"):
        problems.append(f"it has {d.get('num_classes')} classes, the run {dataset.get('num_classes')}")
    if problems:
        raise CheckpointError(f"--teacher {task}={path}: not a single-task teacher for this run: {problems[0]}")
