from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pytest
import torch
from helpers import run_cli
from PIL import Image

from crosstask_cli.colormaps import colorize_depth
from crosstask_cli.errors import InputError
from crosstask_cli.images import read_image
from crosstask_cli.predict import predict

HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory) -> Path:
    """A folder of real and odd image files: a photograph, grayscale, RGBA, 16-bit, EXIF-rotated, broken ones."""
    d = tmp_path_factory.mktemp("inputs")
    photo = cv2.imread(str(HOPPER))
    cv2.imwrite(str(d / "hopper.jpg"), photo)
    cv2.imwrite(str(d / "gray.png"), np.tile(np.arange(50, dtype=np.uint8), (30, 1)))
    rgba = np.zeros((21, 33, 4), np.uint8)
    rgba[..., 2], rgba[..., 3] = 200, 128
    cv2.imwrite(str(d / "rgba.png"), rgba)
    cv2.imwrite(str(d / "deep.png"), (np.arange(40 * 24, dtype=np.uint16).reshape(24, 40) * 60))
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display: 40×20 stored, 20×40 shown
    img.save(d / "rotated.jpg", exif=exif.tobytes())
    cv2.imwrite(str(d / "sub_dir_image.bmp"), photo[:50, :70])
    (d / "nested").mkdir()
    cv2.imwrite(str(d / "nested" / "small.webp"), photo[:40, :60])
    data = HOPPER.read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.png").write_text("this is not an image")
    (d / "empty.png").write_bytes(b"")
    return d


SIZES = {"hopper": (600, 512), "gray": (30, 50), "rgba": (21, 33), "deep": (24, 40), "rotated": (40, 20),
         "sub_dir_image": (50, 70), "nested/small": (40, 60)}  # fmt: skip


def test_read_image_handles_odd_formats(odd_images):
    assert read_image(odd_images / "gray.png").shape == (30, 50, 3)
    rgba = read_image(odd_images / "rgba.png")
    assert rgba.shape == (21, 33, 3) and rgba[0, 0].tolist() == [200, 0, 0]
    deep = read_image(odd_images / "deep.png")
    assert deep.dtype == np.uint8 and deep.max() > 200
    rotated = read_image(odd_images / "rotated.jpg")
    assert rotated.shape == (40, 20, 3)  # EXIF orientation applied
    for bad in ("truncated.jpg", "notes.png", "empty.png"):
        with pytest.raises(ValueError):
            read_image(odd_images / bad)


def test_predict_writes_outputs_at_original_size_and_skips_bad_files(odd_images, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints/best.pt"
    res = predict([odd_images], ckpt, tmp_path / "out", batch_size=3, recursive=True, transfer=True, device="cpu")
    assert sorted(res.written) == sorted(SIZES)
    assert sorted(Path(p).name for p, _ in res.skipped) == ["empty.png", "notes.png", "truncated.jpg"]
    for rel, (h, w) in SIZES.items():
        seg = cv2.imread(str(tmp_path / "out" / f"{rel}_seg.png"), cv2.IMREAD_UNCHANGED)
        assert seg.shape == (h, w) and seg.dtype == np.uint8 and seg.max() < 7
        depth = np.load(tmp_path / "out" / f"{rel}_depth.npy")
        assert depth.shape == (h, w) and depth.dtype == np.float32 and np.isfinite(depth).all()
        # the colour renderings are the written ids and depth in the palette / magma (indexed-colour PNGs)
        palette = np.zeros((256, 3), np.uint8)
        palette[:7] = json.loads((tmp_path / "out/predictions.json").read_text())["palette"]
        assert np.array_equal(cv2.imread(str(tmp_path / "out" / f"{rel}_seg_color.png"))[..., ::-1], palette[seg])
        assert np.array_equal(
            cv2.imread(str(tmp_path / "out" / f"{rel}_depth_color.png"))[..., ::-1],
            colorize_depth(depth, "inverse", mark_invalid=False),
        )
        assert np.load(tmp_path / "out" / f"{rel}_depth_transfer.npy").shape == (h, w)
        assert cv2.imread(str(tmp_path / "out" / f"{rel}_seg_transfer.png"), cv2.IMREAD_UNCHANGED).shape == (h, w)
    manifest = json.loads((tmp_path / "out/predictions.json").read_text())
    assert manifest["inputs"]["nested/small"].endswith("small.webp")


def test_direct_predictions_do_not_depend_on_the_transfer_flag(tiny_run, tmp_path):
    a = predict([HOPPER], tiny_run / "checkpoints/best.pt", tmp_path / "a", device="cpu")
    b = predict([HOPPER], tiny_run / "checkpoints/best.pt", tmp_path / "b", transfer=True, device="cpu")
    assert a.written == b.written == ["grace_hopper"]
    assert np.array_equal(
        np.load(tmp_path / "a/grace_hopper_depth.npy"), np.load(tmp_path / "b/grace_hopper_depth.npy")
    )
    assert not (tmp_path / "a/grace_hopper_depth_transfer.npy").exists()


def test_predict_protects_inputs_and_existing_outputs(odd_images, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints/best.pt"
    with pytest.raises(ValueError, match="inside the input folder"):
        predict([odd_images], ckpt, odd_images / "preds")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="--force"):
        predict([HOPPER], ckpt, tmp_path / "out")
    with pytest.raises(ValueError, match="not a predictions folder made by crosstask"):
        predict([HOPPER], ckpt, tmp_path / "out", force=True)
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep"
    predict([HOPPER], ckpt, tmp_path / "preds")
    (tmp_path / "preds" / "mine.txt").write_text("keep")
    predict([HOPPER], ckpt, tmp_path / "preds", force=True)  # its own folder: written into, other files kept
    assert (tmp_path / "preds" / "mine.txt").read_text() == "keep"


def test_cli_predict_exit_codes_and_foreign_checkpoint(odd_images, tiny_run, tmp_path):
    ckpt = tiny_run / "checkpoints/best.pt"
    r = run_cli("predict", odd_images / "gray.png", odd_images / "notes.png", "--ckpt", ckpt, "--out", tmp_path / "o1")
    assert r.exit_code == 0 and "skipped" in r.output and "images/s" in r.output
    r = run_cli("predict", odd_images / "notes.png", odd_images / "empty.png", "--ckpt", ckpt, "--out", tmp_path / "o2")
    assert r.exit_code == 1 and "no image could be processed" in r.output
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    r = run_cli("predict", HOPPER, "--ckpt", foreign, "--out", tmp_path / "o3")
    assert r.exit_code == 1 and "not a crosstask checkpoint" in r.output


def _png_size(path: Path) -> tuple[int, int]:
    img = cv2.imread(str(path))
    assert img is not None, f"{path} is not a valid PNG"
    return img.shape[:2]


def test_visualize_outputs_are_readable_pngs(odd_images, tiny_run, synthetic_prepared, tmp_path):
    ckpt = tiny_run / "checkpoints/best.pt"
    predict([odd_images / "hopper.jpg", odd_images / "gray.png"], ckpt, tmp_path / "p", transfer=True)
    r = run_cli("visualize", "predictions", tmp_path / "p", "--out", tmp_path / "panels")
    assert r.exit_code == 0, r.output
    h, w = _png_size(tmp_path / "panels/hopper_panel.png")
    assert w > 1000 and 300 < h < 1200  # five panels side by side
    r = run_cli(
        "visualize", "samples", "--data", synthetic_prepared, "--ckpt", ckpt, "-n", "3", "--out", tmp_path / "grid.png"
    )
    assert r.exit_code == 0, r.output
    gh, gw = _png_size(tmp_path / "grid.png")
    assert gw > 1.5 * gh and gh > 200
    r = run_cli("visualize", "samples", "--data", synthetic_prepared, "--out", tmp_path / "gt.png")
    assert r.exit_code == 0 and _png_size(tmp_path / "gt.png")[0] > 200
    r = run_cli("visualize", "curves", tiny_run, "--out", tmp_path / "curves")
    assert r.exit_code == 0
    assert _png_size(tmp_path / "curves/losses.png")[1] > 800 and _png_size(tmp_path / "curves/metrics.png")[1] > 800
    r = run_cli("visualize", "curves", tmp_path)
    assert r.exit_code == 1 and "no metrics.csv" in r.output


def test_onnx_export_matches_pytorch(tiny_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'crosstask-cli[onnx]')")
    pytest.importorskip("onnxscript", reason="onnxscript not installed (pip install 'crosstask-cli[onnx]')")
    from crosstask_cli.export import export_onnx

    res = export_onnx(tiny_run / "checkpoints/best.pt", tmp_path / "m.onnx")
    assert res.max_abs_diff_seg <= 1e-4 and res.max_abs_diff_depth <= 1e-4
    assert len(res.checked_shapes) == 2 and res.checked_shapes[0][0] != res.checked_shapes[1][0]
    r = run_cli("export", "--ckpt", tiny_run / "checkpoints/best.pt", "--onnx", tmp_path / "m.onnx")
    assert r.exit_code == 1 and "already exists" in r.output


def test_export_without_onnx_says_what_to_install(tiny_run, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_onnx(name, *args, **kwargs):
        if name.split(".")[0] in ("onnx", "onnxscript", "onnxruntime"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    r = run_cli("export", "--ckpt", tiny_run / "checkpoints/best.pt", "--onnx", tmp_path / "x.onnx")
    assert r.exit_code == 1 and "crosstask-cli[onnx]" in r.output
    assert not os.path.exists(tmp_path / "x.onnx")


def test_pipelined_predict_keeps_input_order_and_matches_one_image_at_a_time(
    odd_images, tiny_run, tmp_path, monkeypatch
):
    """Decoding and writing run in worker threads while the model runs: with decode times that finish out of
    order, the outputs, the manifest and ``written`` keep the inputs' order, and every output equals a plain
    one-image-at-a-time computation."""
    import random
    import time

    import torch.nn.functional as F

    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.data.resize import resize_image
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    files = [odd_images / n for n in ("hopper.jpg", "gray.png", "rgba.png", "deep.png", "rotated.jpg",
                                      "sub_dir_image.bmp", "nested/small.webp", "notes.png")]  # fmt: skip
    delays = random.Random(0)
    import crosstask_cli.images as images_module

    real_read = images_module.read_image

    def slow_read(path, *args):
        time.sleep(delays.uniform(0, 0.05) if "hopper" not in str(path) else 0.2)  # the first one is slowest
        return real_read(path, *args)

    monkeypatch.setattr(images_module, "read_image", slow_read)
    ckpt = tiny_run / "checkpoints/best.pt"
    res = predict(files, ckpt, tmp_path / "out", batch_size=3, transfer=True, workers=3)
    expected = [f.stem for f in files if f.name != "notes.png"]
    assert res.written == expected and [Path(s).name for s, _ in res.skipped] == ["notes.png"]
    manifest = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert list(manifest["inputs"]) == expected

    c = load_checkpoint(ckpt)
    model, (h, w) = model_from_checkpoint(c, ckpt), (c["dataset"]["height"], c["dataset"]["width"])
    for f in files[:-1]:
        img = real_read(f)
        x = normalise(torch.from_numpy(resize_image(img, h, w)[None]))
        with torch.inference_mode():
            pred = model(x)
        for tag, seg_t, dep_t in (("", pred.seg, pred.depth), ("_transfer", pred.seg_from_depth, pred.depth_from_seg)):
            seg = F.interpolate(seg_t, size=img.shape[:2], mode="bilinear", align_corners=False).argmax(1)[0].numpy()
            dep = F.interpolate(dep_t, size=img.shape[:2], mode="bilinear", align_corners=False)[0, 0].clamp(min=0)
            written_seg = cv2.imread(str(tmp_path / "out" / f"{f.stem}_seg{tag}.png"), cv2.IMREAD_UNCHANGED)
            assert (written_seg == seg).mean() > 0.999, f  # batched vs single forward: float rounding only
            np.testing.assert_allclose(np.load(tmp_path / "out" / f"{f.stem}_depth{tag}.npy"), dep.numpy(), atol=1e-4)


def _reference_ids(logits: torch.Tensor, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """torch's bilinear resize + first-maximum argmax, and each pixel's gap between its two best scores."""
    import torch.nn.functional as F

    up = F.interpolate(logits[None].double(), size=size, mode="bilinear", align_corners=False)[0]
    top2 = up.topk(2, 0).values
    return up.argmax(0).numpy(), (top2[0] - top2[1]).numpy()


@pytest.mark.parametrize(
    "classes,low,size",
    [(7, (32, 64), (256, 512)), (19, (24, 40), (250, 501)), (7, (40, 60), (30, 50)), (3, (5, 7), (64, 96)),
     (7, (1, 1), (10, 10)), (2, (3, 2), (3, 2)), (19, (16, 32), (1024, 2048))],
)  # fmt: skip
def test_upsampled_class_ids_equals_torch_bilinear_argmax(classes, low, size):
    """Region-like logits (few class boundaries: the boundary-cell path) and pure noise (the full resize): the
    class of every pixel is torch's, except where the two best interpolated scores are within float rounding;
    up- and downsampling, integer and fractional factors, 1×1 and 2-class maps."""
    import torch.nn.functional as F

    from crosstask_cli.ops import class_labels, upsampled_class_ids

    g = torch.Generator().manual_seed(classes * 100 + low[0])
    coarse = torch.randn(1, classes, max(low[0] // 12, 1), max(low[1] // 12, 1), generator=g) * 4
    regions = F.interpolate(coarse, size=low, mode="bicubic", align_corners=False)[0]
    if min(low) >= 16:  # regions: a minority of 2×2 cells straddle a boundary, so those alone are interpolated
        edge = np.pad(class_labels(regions[None])[0].numpy(), ((0, 1), (0, 1)), mode="edge")
        mixed = (edge[:-1, :-1] != edge[1:, :-1]) | (edge[:-1, :-1] != edge[:-1, 1:]) | (edge[:-1, :-1] != edge[1:, 1:])
        assert 0.02 < mixed.mean() < 0.2
    for logits in (regions, torch.randn(classes, *low, generator=g)):
        ours = upsampled_class_ids(logits, size)
        ref, gap = _reference_ids(logits, size)
        assert ours.shape == size and ours.dtype == np.uint8
        differ = ours != ref
        assert not differ.any() or gap[differ].max() < 1e-5, gap[differ].max()


def test_upsampled_class_ids_breaks_exact_ties_towards_the_first_class():
    """Class 3's scores are class 1's: wherever they win, between source pixels too, argmax (and we) say 1."""
    import torch.nn.functional as F

    from crosstask_cli.ops import upsampled_class_ids

    g = torch.Generator().manual_seed(1)
    coarse = torch.randn(1, 5, 3, 4, generator=g) * 4
    logits = F.interpolate(coarse, size=(36, 48), mode="bicubic", align_corners=False)[0]
    logits[3] = logits[1]
    ours = upsampled_class_ids(logits, (288, 384))
    ref, _ = _reference_ids(logits, (288, 384))
    assert np.array_equal(ours, ref)
    assert (ours == 1).any() and not (ours == 3).any()


def test_depth_colours_equal_matplotlib_and_large_maps_use_a_sampled_range():
    """The depth colours are matplotlib's magma of the display values (a table lookup), and the display range of
    a full-size map (percentiles of a strided sample) stays within a hair of the exact percentiles."""
    from crosstask_cli.colormaps import RANGE_SAMPLE, depth_display, depth_range

    g = torch.Generator().manual_seed(0)
    depth = torch.rand(60, 80, generator=g).numpy() * 0.3
    depth[0, :4] = 0
    for kind, mark in (("inverse", True), ("metric", False), ("inverse", False)):
        if mark:
            d = depth
        else:  # as colorize_depth treats a prediction
            d = np.maximum(depth, 1e-6) if kind == "inverse" else np.where(depth > 0, depth, np.inf)
        lo, hi = depth_range(d, kind)
        norm = np.clip((depth_display(d, kind) - lo) / (hi - lo), 0, 1)
        expected = (matplotlib.colormaps["magma"](norm)[..., :3] * 255 + 0.5).astype(np.uint8)
        if mark:
            expected[d <= 0] = (40, 40, 40)
        assert np.array_equal(colorize_depth(depth, kind, mark_invalid=mark), expected), kind
    big = torch.rand(1024, 2048, generator=g).numpy() ** 2
    assert big.size > 4 * RANGE_SAMPLE
    exact = np.percentile(big, [2, 98])
    assert np.allclose(depth_range(big, "inverse"), exact, atol=2e-3)


def test_indexed_colour_png_shows_the_palette_and_keeps_the_ids():
    from crosstask_cli.images import encode_png, with_palette

    ids = np.random.default_rng(0).integers(0, 9, (37, 53)).astype(np.uint8)
    ids[0, :5] = 255  # beyond the palette: black
    palette = np.random.default_rng(1).integers(0, 256, (9, 3)).astype(np.uint8)
    table = np.zeros((256, 3), np.uint8)
    table[:9] = palette
    data = with_palette(encode_png(ids), palette)
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(bgr[..., ::-1], table[ids])
    import io

    img = Image.open(io.BytesIO(data))
    assert img.mode == "P" and np.array_equal(np.asarray(img), ids)
    assert np.array_equal(np.asarray(img.convert("RGB")), table[ids])
    with pytest.raises(ValueError, match="8-bit greyscale"):
        with_palette(encode_png(np.zeros((4, 4, 3), np.uint8)), palette)
    with pytest.raises(ValueError, match="at most 256"):
        with_palette(encode_png(ids), np.zeros((257, 3), np.uint8))


def test_eval_predictions_reads_predicts_own_output_and_scores_the_tasks_present(
    tiny_run, synthetic_raw, synthetic_prepared, tmp_path
):
    """predict writes <city>/<stem>_leftImg8bit_seg.png; eval --predictions finds each sample by the official
    city_seq_frame key, and scores only the tasks whose files exist."""
    from crosstask_cli.engine.evaluator import evaluate_predictions

    ckpt = tiny_run / "checkpoints/best.pt"
    out = tmp_path / "preds"
    predict([synthetic_raw / "leftImg8bit" / "val"], ckpt, out, recursive=True, amp="off")
    assert next(out.rglob("*_leftImg8bit_seg.png")).parent.name == "synthburg"
    both = evaluate_predictions(out, synthetic_prepared)
    assert both.tasks is None and both.num_images == 4
    assert 0 <= both.segmentation["miou"] <= 1 and both.depth["abs_err"] > 0
    for f in out.rglob("*_depth*.npy"):
        f.unlink()
    seg_only = evaluate_predictions(out, synthetic_prepared)
    assert seg_only.tasks == ["seg"] and seg_only.depth == {}
    assert seg_only.segmentation == both.segmentation
    r = run_cli("eval", "--predictions", out, "--data", synthetic_prepared)
    assert r.exit_code == 0 and "seg only" in r.output, r.output


def test_predict_cityscapes_format_refusals(tiny_run, synthetic_raw, tmp_path):
    ckpt = tiny_run / "checkpoints/best.pt"
    image = next((synthetic_raw / "leftImg8bit" / "val").rglob("*.png"))
    with pytest.raises(InputError, match="--transfer needs the crosstask format"):
        predict([image], ckpt, tmp_path / "a", transfer=True, fmt="cityscapes")
    predict([image], ckpt, tmp_path / "b")
    # a crosstask-format folder would give the official matcher several files per image
    with pytest.raises(InputError, match="holds predictions in the crosstask format"):
        predict([image], ckpt, tmp_path / "b", force=True, fmt="cityscapes")
    assert not list((tmp_path / "b").rglob("*_labelIds.png"))
    r = run_cli("visualize", "predictions", tmp_path / "b", "--out", tmp_path / "v")
    assert r.exit_code == 0, r.output
    predict([image], ckpt, tmp_path / "c", fmt="cityscapes", amp="off")
    r = run_cli("visualize", "predictions", tmp_path / "c", "--out", tmp_path / "w")
    assert r.exit_code == 1 and "panels need the crosstask format" in r.output


def test_predict_energy_maps_manifest_ranking_and_panels(tiny_run, synthetic_raw, tmp_path):
    """--energy writes a float32 map at each input's size whose mean at the model's size is the manifest value,
    lists the least reliable images, and visualize predictions shows it."""
    from crosstask_cli.data.dataset import normalise
    from crosstask_cli.data.resize import resize_image
    from crosstask_cli.energy import energy_maps
    from crosstask_cli.engine.checkpoint import load_checkpoint, model_from_checkpoint

    ckpt = tiny_run / "checkpoints/best.pt"
    images = sorted((synthetic_raw / "leftImg8bit" / "val").rglob("*.png"))[:3]
    out = tmp_path / "preds"
    r = run_cli("predict", *images, "--ckpt", ckpt, "--out", out, "--energy", "--amp", "off")
    assert r.exit_code == 0, r.output
    assert "least reliable images" in r.output
    manifest = json.loads((out / "predictions.json").read_text())
    assert set(manifest["energy"]) == {p.stem for p in images}
    # the manifest value is the mean combined energy of a full forward pass at the model's size
    model = model_from_checkpoint(load_checkpoint(ckpt), ckpt).eval()
    x = normalise(torch.from_numpy(np.stack([resize_image(read_image(p), 32, 64) for p in images])))
    with torch.no_grad():
        expected = energy_maps(model(x)).combined.flatten(1).mean(1).tolist()
    assert [manifest["energy"][p.stem] for p in images] == pytest.approx(expected, rel=1e-4)
    for p in images:
        e = np.load(out / f"{p.stem}_energy.npy")
        assert e.dtype == np.float32 and e.shape == read_image(p).shape[:2] and (e >= 0).all()
        assert cv2.imread(str(out / f"{p.stem}_energy_color.png")).shape[:2] == e.shape
    worst = max(manifest["energy"], key=manifest["energy"].get)
    listed = [line.split()[-1] for line in r.output.splitlines() if line.startswith("  ")]
    assert listed[0] == worst and len(listed) == 3
    from crosstask_cli.visualize import prediction_panels

    assert len(prediction_panels(out, tmp_path / "panels")) == 3
    with pytest.raises(InputError, match="--energy needs the crosstask format"):
        predict(images, ckpt, tmp_path / "cs", fmt="cityscapes", energy=True)
