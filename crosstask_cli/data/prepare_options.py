"""The options of ``crosstask prepare``: :class:`PrepareOptions` (cityscapes, nyu) and :class:`SyntheticOptions`
(synthetic), each field with its flag and help. Imports nothing heavy: the command line draws ``--help`` from
here (the work is in :mod:`crosstask_cli.data.prepare`)."""

from __future__ import annotations

from dataclasses import dataclass

from crosstask_cli.options import check_choice, check_positive_int, field_table, option

CATEGORY_MAPPINGS = ("original", "official")  # how the 7-class setting treats labels the official evaluation ignores


@dataclass
class PrepareOptions:
    """How a dataset is prepared (the options of ``crosstask prepare cityscapes|nyu``; the defaults are
    Cityscapes', the nyu command takes its own size and classes from the dataset registry)."""

    height: int = option(128, "Output height in pixels (the paper: 128 for Cityscapes, 288 for NYUv2).")
    width: int = option(256, "Output width in pixels (the paper: 256 for Cityscapes, 384 for NYUv2).")
    num_classes: int = option(7, "7 (Cityscapes categories) or 19 (official train classes); NYUv2 has 13.")
    depth: str = option(
        "inverse",
        "inverse: (p−1)/65536 clipped at 0.4922, as the original and MTAN; metric: metres from the camera json.",
    )
    val_from_train: int = option(
        0,
        "Also hold out N training images as a 'holdout' split for model selection (the official val split stays the "
        "evaluation split).",
    )
    seed: int = option(0, "Seed for --val-from-train's choice of held-out images.")
    workers: int = option(2, "Threads decoding files in parallel.")
    force: bool = option(
        False, "Replace an existing output directory (it is only removed once the new one is complete)."
    )
    categories: str = option(
        "original",
        "7 classes only: original (default; every label to its category, as the original method and MTAN) or official "
        "(the labels the official evaluation ignores, e.g. parking, guard rail, caravan, become 255). Needs the "
        "official raw layout.",
    )

    def __post_init__(self) -> None:
        for flag, value in (("--height", self.height), ("--width", self.width)):
            check_positive_int(value, flag)
        check_positive_int(self.val_from_train, "--val-from-train", minimum=0)
        check_positive_int(self.workers, "--workers", minimum=0)  # 0: one thread
        check_choice(self.depth, "--depth", ("inverse", "metric"))
        check_choice(self.categories, "--categories", CATEGORY_MAPPINGS)


PREPARE_FIELDS = field_table(PrepareOptions)


@dataclass
class SyntheticOptions:
    """The scenes ``crosstask prepare synthetic`` renders."""

    train: int = option(400, "Number of training scenes.")
    val: int = option(100, "Number of validation scenes.")
    height: int = option(256, "Rendered image height.")
    width: int = option(512, "Rendered image width.")
    seed: int = option(0, "Scene seed: the same seed renders the same scenes.")
    force: bool = option(
        False, "Replace an existing output directory (it is only removed once the new one is complete)."
    )

    def __post_init__(self) -> None:
        for flag, value in (("--train", self.train), ("--val", self.val)):
            check_positive_int(value, flag)
        for flag, value in (("--height", self.height), ("--width", self.width)):
            check_positive_int(value, flag, minimum=16)


SYNTHETIC_FIELDS = field_table(SyntheticOptions)
