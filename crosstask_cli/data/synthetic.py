"""Procedural street scenes rendered by vectorised ray casting, written in the official Cityscapes raw layout.

World frame: x right, y up, z forward (metres); a pinhole camera at car height looks down +z with a small
pitch. Each primitive (ground plane, boxes, spheres) is intersected only with the rays inside its projected
screen rectangle, and a z-buffer keeps the nearest hit, so classes and depth are exact and consistent:
objects occlude what is behind them and the road's depth grows towards the horizon. Depth is z-depth
(distance along the optical axis), the quantity the stereo disparity encodes. Surface normals are the exact
normals of the surfaces hit, turned into the camera frame in NYUv2's convention (x right, y down, z towards the
camera); sky has none (the zero vector).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from crosstask_cli.data.cityscapes import BASELINE_M, FOCAL_PX
from crosstask_cli.data.labels import CITYSCAPES_ID as ID

FULL_WIDTH = 2048  # the renderer's camera has the Cityscapes field of view at any output size
SPLIT_CITIES = {"train": "synthtown", "val": "synthburg"}


@dataclass
class Camera:
    height: int
    width: int
    cam_height: float
    pitch: float  # radians, positive = looking down
    lateral: float  # camera x position

    @property
    def f(self) -> float:
        return FOCAL_PX * self.width / FULL_WIDTH

    def rays(self) -> np.ndarray:
        """H×W×3 world-frame ray directions with camera-frame z component 1 (so t is z-depth)."""
        v, u = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        x = (u + 0.5 - self.width / 2) / self.f
        y = -(v + 0.5 - self.height / 2) / self.f
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        return np.stack([x, y * c - s, y * s + c], axis=-1).astype(np.float32)

    @property
    def origin(self) -> np.ndarray:
        return np.array([self.lateral, self.cam_height, 0.0], dtype=np.float32)

    def to_camera_normals(self, normals: np.ndarray) -> np.ndarray:
        """H×W×3 world-frame unit normals → the camera frame in NYUv2's convention: x right, y down, z towards the
        camera (the camera's axes in the world: right (1, 0, 0), up (0, cos p, sin p), forward (0, −sin p,
        cos p) for pitch p). Zero vectors stay zero."""
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        right = normals[..., 0]
        up = normals[..., 1] * c + normals[..., 2] * s
        forward = -normals[..., 1] * s + normals[..., 2] * c
        return np.stack([right, -up, -forward], axis=-1).astype(np.float32)

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World points N×3 → (u, v, camera z)."""
        p = pts - self.origin
        c, s = np.cos(self.pitch), np.sin(self.pitch)
        yc = p[:, 1] * c + p[:, 2] * s
        zc = -p[:, 1] * s + p[:, 2] * c
        zc_safe = np.maximum(zc, 1e-6)
        return p[:, 0] / zc_safe * self.f + self.width / 2, -yc / zc_safe * self.f + self.height / 2, zc


@dataclass
class Frame:
    """Render target: z-buffer, Cityscapes label ids, instance ids (Cityscapes convention: labelId·1000 + k for
    objects of classes with instances, the labelId elsewhere), unlit albedo and surface normals."""

    height: int
    width: int
    depth: np.ndarray = field(init=False)
    ids: np.ndarray = field(init=False)
    instances: np.ndarray = field(init=False)
    albedo: np.ndarray = field(init=False)
    normal: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.depth = np.full((self.height, self.width), np.inf, dtype=np.float32)
        self.ids = np.full((self.height, self.width), ID["sky"], dtype=np.uint8)
        self.instances = np.full((self.height, self.width), ID["sky"], dtype=np.int32)
        self.albedo = np.zeros((self.height, self.width, 3), dtype=np.float32)
        self.normal = np.zeros((self.height, self.width, 3), dtype=np.float32)


class Renderer:
    def __init__(self, camera: Camera, rng: np.random.Generator) -> None:
        self.cam = camera
        self.rng = rng
        self.rays = camera.rays()
        self.frame = Frame(camera.height, camera.width)
        self.noise = _noise_texture(rng)
        self._instances: dict[int, int] = {}

    def new_instance(self, label: int) -> int:
        """A fresh instance id of class ``label`` (labelId·1000 + k, k = 0, 1, …), for the parts of one object."""
        k = self._instances.get(label, 0)
        self._instances[label] = k + 1
        return label * 1000 + k

    def _window(self, corners: np.ndarray) -> tuple[slice, slice] | None:
        u, v, z = self.cam.project(corners)
        if (z < 0.05).all():
            return None
        if (z < 0.05).any():  # straddles the camera plane: test every pixel
            return slice(0, self.cam.height), slice(0, self.cam.width)
        u0, u1 = int(np.floor(u.min())) - 1, int(np.ceil(u.max())) + 1
        v0, v1 = int(np.floor(v.min())) - 1, int(np.ceil(v.max())) + 1
        u0, v0 = max(u0, 0), max(v0, 0)
        u1, v1 = min(u1, self.cam.width), min(v1, self.cam.height)
        if u0 >= u1 or v0 >= v1:
            return None
        return slice(v0, v1), slice(u0, u1)

    def _commit(
        self, win, hit, t, label: int | np.ndarray, albedo: np.ndarray, normal: np.ndarray, instance: int | None = None
    ) -> None:
        f = self.frame
        zb = f.depth[win]
        closer = hit & (t < zb)
        if not closer.any():
            return
        zb[closer] = t[closer]
        f.ids[win][closer] = label[closer] if np.ndim(label) == 2 else label
        f.instances[win][closer] = instance if instance is not None else f.ids[win][closer]
        f.albedo[win][closer] = albedo[closer] if albedo.ndim == 3 else albedo
        f.normal[win][closer] = normal[closer] if normal.ndim == 3 else normal

    def box(self, lo, hi, label: int, color, texture: str = "plain", instance: int | None = None) -> None:
        lo, hi = np.asarray(lo, np.float32), np.asarray(hi, np.float32)
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
        win = self._window(corners)
        if win is None:
            return
        d = self.rays[win]
        o = self.cam.origin
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / d
            t1, t2 = (lo - o) * inv, (hi - o) * inv
        tmin, tmax = np.minimum(t1, t2), np.maximum(t1, t2)
        tmin = np.nan_to_num(tmin, nan=-np.inf)
        tmax = np.nan_to_num(tmax, nan=np.inf)
        t_near, t_far = tmin.max(-1), tmax.min(-1)
        hit = (t_near <= t_far) & (t_near > 0.05)
        axis = tmin.argmax(-1)
        normal = np.zeros(d.shape, np.float32)
        np.put_along_axis(normal, axis[..., None], -np.sign(np.take_along_axis(d, axis[..., None], -1)), -1)
        albedo = np.broadcast_to(np.asarray(color, np.float32), d.shape).copy()
        if texture != "plain":
            p = o + d * t_near[..., None]
            along = np.where(axis == 0, p[..., 2], p[..., 0])  # horizontal coordinate on the hit face
            albedo = self._texture(texture, albedo, along, p[..., 1] - lo[1], axis)
        self._commit(win, hit, t_near, label, albedo, normal, instance)

    def sphere(self, centre, radius: float, label: int, color, instance: int | None = None) -> None:
        c = np.asarray(centre, np.float32)
        corners = np.array([c + radius * np.array([sx, sy, sz]) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
        win = self._window(corners)
        if win is None:
            return
        d = self.rays[win]
        oc = self.cam.origin - c
        a = (d * d).sum(-1)
        b = (d * oc).sum(-1)
        disc = b * b - a * (oc @ oc - radius * radius)
        hit = disc > 0
        t = (-b - np.sqrt(np.maximum(disc, 0))) / a
        hit &= t > 0.05
        normal = (self.cam.origin + d * t[..., None] - c) / radius
        albedo = (
            np.asarray(color, np.float32)
            * (0.85 + 0.3 * self._sample_noise(d[..., 0] * t * 3, d[..., 1] * t * 3))[..., None]
        )
        self._commit(win, hit, t, label, albedo, normal, instance)

    def _sample_noise(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        n = self.noise.shape[0]
        return self.noise[(a * 8).astype(np.int64) % n, (b * 8).astype(np.int64) % n]

    def _texture(self, kind: str, albedo, along, up, axis) -> np.ndarray:
        grain = self._sample_noise(along, up)[..., None]
        if kind == "facade":
            win = ((along % 3.2) > 0.9) & ((along % 3.2) < 2.3) & ((up % 3.3) > 1.0) & ((up % 3.3) < 2.5) & (up > 2)
            glass = np.array([0.18, 0.22, 0.28], np.float32) + 0.25 * grain
            return np.where(win[..., None], glass, albedo * (0.9 + 0.2 * grain))
        if kind == "vehicle":
            band = up > 0.72 * up.max(initial=1.0)
            return np.where(band[..., None], np.float32(0.12) + 0.1 * grain, albedo * (0.95 + 0.1 * grain))
        return albedo * (0.8 + 0.4 * grain)

    def ground(self, road_x: float, road_half: float, sidewalk: float, colors: dict) -> None:
        d, o = self.rays, self.cam.origin
        down = d[..., 1] < -1e-4
        t = np.where(down, -o[1] / np.where(down, d[..., 1], -1.0), np.float32(1e7))
        x = o[0] + t * d[..., 0]
        z = o[2] + t * d[..., 2]
        ax = np.abs(x - road_x)
        label = np.where(ax < road_half, ID["road"], np.where(ax < road_half + sidewalk, ID["sidewalk"], ID["terrain"]))
        grain = self._sample_noise(x, z)[..., None]
        albedo = np.select(
            [label[..., None] == ID["road"], label[..., None] == ID["sidewalk"]],
            [colors["road"] * (0.85 + 0.3 * grain), colors["sidewalk"] * (0.8 + 0.3 * grain)],
            colors["terrain"] * (0.7 + 0.6 * grain),
        )
        centre = (np.abs(x - road_x) < 0.08) & ((z % 9.0) < 4.5)
        edge = np.abs(ax - (road_half - 0.3)) < 0.07
        albedo = np.where(((centre | edge) & (label == ID["road"]))[..., None], np.float32(0.85), albedo)
        normal = np.zeros(d.shape, np.float32)
        normal[..., 1] = 1
        self._commit((slice(None), slice(None)), down, t, label.astype(np.uint8), albedo.astype(np.float32), normal)


def _noise_texture(rng: np.random.Generator, size: int = 128) -> np.ndarray:
    import cv2

    base = rng.random((size, size), dtype=np.float32)
    return (cv2.GaussianBlur(base, (0, 0), 1.2) + 0.5 * base - 0.75).astype(np.float32)


def _rgb(rng: np.random.Generator, base, spread: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(base, np.float32) + rng.uniform(-spread, spread, 3), 0, 1).astype(np.float32)


def _populate(r: Renderer, rng: np.random.Generator) -> dict:
    """Place the scene's primitives; return the ground parameters."""
    road_half = rng.uniform(3.5, 7.5)
    sidewalk = rng.uniform(1.5, 4.0)
    # Buildings on both sides, set back sometimes (leaving terrain), with gaps between them.
    for side in (-1, 1):
        z = rng.uniform(-4, 2)
        while z < 140:
            length = rng.uniform(8, 30)
            setback = rng.choice([0.0, rng.uniform(1, 6)], p=[0.7, 0.3])
            inner = road_half + sidewalk + setback
            height = rng.uniform(6, 30)
            x0, x1 = sorted((side * inner, side * (inner + rng.uniform(8, 20))))
            wall = _rgb(rng, rng.choice([[0.55, 0.5, 0.45], [0.7, 0.68, 0.62], [0.45, 0.35, 0.3], [0.6, 0.6, 0.65]]))
            if rng.random() < 0.85:
                r.box((x0, 0, z), (x1, height, z + length), ID["building"], wall, "facade")
            else:  # a low wall or fence with vegetation behind
                fence_x = side * inner
                lab = ID["wall"] if rng.random() < 0.5 else ID["fence"]
                r.box(
                    (fence_x - 0.1, 0, z),
                    (fence_x + 0.1, rng.uniform(1, 2), z + length),
                    lab,
                    _rgb(rng, [0.5, 0.48, 0.45]),
                    "grain",
                )
                r.sphere(
                    (side * (inner + 3), rng.uniform(3, 5), z + length / 2),
                    rng.uniform(2, 4),
                    ID["vegetation"],
                    _rgb(rng, [0.25, 0.4, 0.15]),
                )
            z += length + rng.choice([0.0, rng.uniform(2, 8)], p=[0.6, 0.4])
    if rng.random() < 0.6:  # a cross street's façade closing the view
        zf = rng.uniform(70, 160)
        r.box((-80, 0, zf), (80, rng.uniform(10, 35), zf + 10), ID["building"], _rgb(rng, [0.6, 0.58, 0.55]), "facade")
    # Street furniture on the sidewalks.
    for _ in range(rng.integers(3, 9)):
        side, z = rng.choice([-1, 1]), rng.uniform(4, 70)
        x = side * (road_half + rng.uniform(0.3, 0.8))
        top = rng.uniform(3.0, 5.5)
        r.box((x - 0.08, 0, z - 0.08), (x + 0.08, top, z + 0.08), ID["pole"], _rgb(rng, [0.45, 0.45, 0.45]))
        if rng.random() < 0.5:
            r.box(
                (x - 0.35, top - 0.7, z - 0.04),
                (x + 0.35, top, z),
                ID["traffic sign"],
                _rgb(rng, [0.8, 0.75, 0.1], 0.15),
            )
        else:
            r.box(
                (x - 0.17, top - 0.9, z - 0.17),
                (x + 0.17, top, z + 0.17),
                ID["traffic light"],
                _rgb(rng, [0.15, 0.15, 0.12]),
            )
    # Trees on the sidewalks' outer edge.
    for _ in range(rng.integers(2, 8)):
        side, z = rng.choice([-1, 1]), rng.uniform(5, 90)
        x = side * (road_half + sidewalk - rng.uniform(0.4, 1.0))
        trunk = rng.uniform(2.0, 3.5)
        r.box((x - 0.15, 0, z - 0.15), (x + 0.15, trunk, z + 0.15), ID["vegetation"], _rgb(rng, [0.3, 0.22, 0.15]))
        rad = rng.uniform(1.2, 2.5)
        r.sphere((x, trunk + rad * 0.8, z), rad, ID["vegetation"], _rgb(rng, [0.22, 0.42, 0.12]))
    # Pedestrians on the sidewalks (and sometimes crossing).
    for _ in range(rng.integers(2, 10)):
        side, z = rng.choice([-1, 1]), rng.uniform(4, 45)
        x = (
            side * (road_half + rng.uniform(0.3, sidewalk - 0.3))
            if rng.random() < 0.85
            else rng.uniform(-road_half, road_half)
        )
        tall = rng.uniform(1.5, 1.9)
        clothes = _rgb(rng, rng.random(3) * 0.7, 0.0)
        who = r.new_instance(ID["person"])
        r.box((x - 0.22, 0, z - 0.15), (x + 0.22, tall - 0.25, z + 0.15), ID["person"], clothes, "grain", who)
        r.sphere((x, tall - 0.13, z), 0.13, ID["person"], _rgb(rng, [0.8, 0.62, 0.5], 0.1), who)
    # Cars: parked at the kerb and driving in lanes; a few trucks and buses.
    for _ in range(rng.integers(3, 12)):
        parked = rng.random() < 0.6
        side = rng.choice([-1, 1])
        x = side * (road_half - 1.1) if parked else side * rng.uniform(0.6, max(road_half - 2.0, 0.8)) * 0.9
        z = rng.uniform(5, 80)
        big = rng.random() < 0.12
        paint = _rgb(rng, rng.random(3) * 0.8, 0.0)
        if big:
            w, h, ln = rng.uniform(2.4, 2.6), rng.uniform(2.8, 3.4), rng.uniform(8, 12)
            lab = ID["bus"] if rng.random() < 0.5 else ID["truck"]
            which = r.new_instance(lab)
            r.box((x - w / 2, 0.3, z), (x + w / 2, h, z + ln), lab, paint, "vehicle", which)
            r.box((x - w / 2 + 0.1, 0, z + 1), (x + w / 2 - 0.1, 0.3, z + ln - 1), lab, np.float32([0.05] * 3),
                  instance=which)  # fmt: skip
        else:
            w, ln = rng.uniform(1.7, 1.9), rng.uniform(3.8, 4.8)
            which = r.new_instance(ID["car"])
            r.box((x - w / 2, 0.25, z), (x + w / 2, 1.0, z + ln), ID["car"], paint, "grain", which)
            r.box(
                (x - w / 2 + 0.1, 1.0, z + 0.9),
                (x + w / 2 - 0.1, rng.uniform(1.4, 1.6), z + ln - 1.0),
                ID["car"],
                np.float32([0.1, 0.12, 0.15]),
                instance=which,
            )
            r.box(
                (x - w / 2 + 0.05, 0, z + 0.4),
                (x + w / 2 - 0.05, 0.25, z + ln - 0.4),
                ID["car"],
                np.float32([0.04] * 3),
                instance=which,
            )
    return {"road_x": 0.0, "road_half": road_half, "sidewalk": sidewalk}


@dataclass
class Scene:
    """One rendered scene: RGB uint8 H×W×3, Cityscapes labelIds uint8 H×W, instanceIds int32 H×W (labelId·1000 + k
    for objects of classes with instances, else the labelId), z-depth float32 H×W in metres (inf for sky), unit
    surface normals float32 H×W×3 in the camera frame (NYUv2's convention; zero for sky), and the camera it was
    seen with."""

    rgb: np.ndarray
    ids: np.ndarray
    instances: np.ndarray
    depth: np.ndarray
    camera: Camera
    normals: np.ndarray | None = None


def render_scene(
    seed_seq: list[int] | int, height: int = 256, width: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one scene: (RGB uint8 H×W×3, Cityscapes labelIds uint8 H×W, z-depth float32 H×W in metres with inf
    for sky); :func:`render_scene_full` also gives the instances and camera. Deterministic for a seed sequence."""
    scene = render_scene_full(seed_seq, height, width)
    return scene.rgb, scene.ids, scene.depth


def render_scene_full(seed_seq: list[int] | int, height: int = 256, width: int = 512) -> Scene:
    """Render one scene (see :class:`Scene`). Deterministic for a given seed sequence."""
    rng = np.random.default_rng(seed_seq)
    cam = Camera(
        height,
        width,
        cam_height=rng.uniform(1.15, 1.45),
        pitch=np.radians(rng.uniform(-1.5, 2.5)),
        lateral=rng.uniform(-1.5, 1.5),
    )
    r = Renderer(cam, rng)
    colors = {
        "road": _rgb(rng, [0.33, 0.32, 0.34], 0.06),
        "sidewalk": _rgb(rng, [0.6, 0.55, 0.55], 0.1),
        "terrain": _rgb(rng, [0.35, 0.45, 0.2], 0.1),
    }
    g = _populate(r, rng)
    r.ground(g["road_x"], g["road_half"], g["sidewalk"], colors)
    f = r.frame

    sun_el, sun_az = np.radians(rng.uniform(15, 65)), np.radians(rng.uniform(0, 360))
    sun = np.array([np.cos(sun_el) * np.sin(sun_az), np.sin(sun_el), np.cos(sun_el) * np.cos(sun_az)], np.float32)
    ambient = rng.uniform(0.4, 0.65)
    shade = ambient + (1 - ambient) * np.clip(f.normal @ sun, 0, 1)
    color = f.albedo * shade[..., None] * rng.uniform(0.8, 1.2)
    sky = f.ids == ID["sky"]
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    top, horizon = _rgb(rng, [0.35, 0.55, 0.85], 0.1), _rgb(rng, [0.75, 0.82, 0.9], 0.06)
    sky_color = (
        top * (1 - rows) + horizon * rows + 0.08 * r._sample_noise(*np.mgrid[0:height, 0:width] / 6.0)[..., None]
    )
    fog_dist = rng.uniform(150, 500)
    haze = np.exp(-np.where(sky, 0, f.depth) / fog_dist)[..., None]
    color = np.where(sky[..., None], sky_color, color * haze + horizon * (1 - haze))
    color = color + rng.normal(0, rng.uniform(0.005, 0.02), color.shape)
    rgb = (np.clip(color, 0, 1) * 255 + 0.5).astype(np.uint8)
    length = np.linalg.norm(f.normal, axis=-1, keepdims=True)
    world = np.where(length > 0, f.normal / np.maximum(length, 1e-12), 0.0)
    normals = np.where(sky[..., None], 0.0, cam.to_camera_normals(world)).astype(np.float32)
    return Scene(rgb, f.ids, f.instances, np.where(sky, np.inf, f.depth).astype(np.float32), cam, normals)


def normals_to_png(normals: np.ndarray) -> np.ndarray:
    """H×W×3 unit normals (zero = invalid) → the 16-bit RGB values of a ``*_normal.png``: each component n as
    round((n + 1)/2 · 65534) + 1 (1..65535, about 3e-5 per step), all three 0 where invalid. Decoded by
    :func:`crosstask_cli.data.cityscapes.read_normal_png`."""
    valid = (normals != 0).any(-1, keepdims=True)
    p = np.rint((np.clip(normals, -1, 1) + 1) / 2 * 65534) + 1
    return np.where(valid, p, 0).astype(np.uint16)


def depth_to_disparity_png(depth: np.ndarray, focal: float = FOCAL_PX) -> np.ndarray:
    """z-depth in metres (inf = no measurement) → Cityscapes 16-bit disparity values p = disparity·256 + 1, with
    disparity = baseline·focal/depth in pixels of a camera with focal length ``focal`` (pixels); p = 0 where
    invalid. The generator passes the written images' focal length, so depth = baseline·fx/disparity holds with
    the camera JSON's fx, as for real Cityscapes."""
    finite = np.isfinite(depth) & (depth > 0)
    disp = BASELINE_M * focal / np.where(finite, depth, 1.0)
    p = np.clip(np.rint(disp * 256 + 1), 2, 65535)
    return np.where(finite, p, 0).astype(np.uint16)


def camera_json(cam: Camera) -> dict:
    """The Cityscapes camera JSON of one scene. Intrinsics in pixels of the written images (principal point in
    pixel-centre coordinates); extrinsics in the Cityscapes vehicle frame (x forward, y left, z up, metres):
    the camera at the scene's height and lateral offset, ``pitch`` in radians (positive = looking down)."""
    return {
        "extrinsic": {
            "baseline": BASELINE_M,
            "pitch": float(cam.pitch),
            "roll": 0.0,
            "yaw": 0.0,
            "x": 0.0,
            "y": float(-cam.lateral),
            "z": float(cam.cam_height),
        },
        "intrinsic": {"fx": cam.f, "fy": cam.f, "u0": cam.width / 2 - 0.5, "v0": cam.height / 2 - 0.5},
    }


def render_split_to_raw(
    out: Path,
    split: str,
    count: int,
    height: int,
    width: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Render ``count`` scenes of one split into ``out`` in the official Cityscapes raw layout, plus the surface
    normals as ``normal/{split}/{city}/{stem}_normal.png`` (16-bit RGB, :func:`normals_to_png`), a folder the
    official layout does not have."""
    import cv2

    city = SPLIT_CITIES.get(split, f"synth{split}")
    split_code = {"train": 0, "val": 1}.get(split, 2)
    dirs = {k: out / k / split / city for k in ("leftImg8bit", "gtFine", "disparity", "camera", "normal")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        scene = render_scene_full([seed, split_code, i], height, width)
        stem = f"{city}_{i // 1000:06d}_{i % 1000:06d}"
        for path, data in (
            (dirs["leftImg8bit"] / f"{stem}_leftImg8bit.png", cv2.cvtColor(scene.rgb, cv2.COLOR_RGB2BGR)),
            (dirs["gtFine"] / f"{stem}_gtFine_labelIds.png", scene.ids),
            (dirs["gtFine"] / f"{stem}_gtFine_instanceIds.png", scene.instances.astype(np.uint16)),
            (dirs["disparity"] / f"{stem}_disparity.png", depth_to_disparity_png(scene.depth, scene.camera.f)),
            (dirs["normal"] / f"{stem}_normal.png", cv2.cvtColor(normals_to_png(scene.normals), cv2.COLOR_RGB2BGR)),
        ):
            if not cv2.imwrite(str(path), data):
                raise OSError(f"could not write {path}")
        (dirs["camera"] / f"{stem}_camera.json").write_text(json.dumps(camera_json(scene.camera), indent=2))
        if progress:
            progress(1)
