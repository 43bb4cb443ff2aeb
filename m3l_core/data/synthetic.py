"""Procedural indoor RGB-D scenes in which RGB and depth complement each other.

Every scene is an axis-aligned room (floor, ceiling, four walls) with furniture
made of axis-aligned boxes and flat decals. A pinhole camera ray-casts it,
vectorised in numpy, into RGB (``HxWx3 uint8``), depth (``HxW float32`` metres,
NaN where invalid) and labels (``HxW uint8``). Depth has noise that grows with
distance, and holes: far range, grazing angles, shadow bands at depth edges,
blobs and speckle.

The scenes are built so that neither modality alone solves the task:

=====  ========  =============  ==========================================================
 id    class     identified by  why
=====  ========  =============  ==========================================================
 0     floor     both           its own materials (wood, tiles, carpet); horizontal at z=0
 1     wall      both           light paints and wallpaper; vertical room boundary
 2     ceiling   both           near-white; horizontal at the room height
 3     table     **depth**      made of the *same material as the floor* of its scene, so
                                its top looks like floor; it stands 0.65-0.8 m above it
 4     cabinet   **depth**      made of the *same material as the wall* it stands against,
                                with no handles; its front sits 0.3-0.6 m off the wall
 5     chair     both           saturated or black plastic; seat, back and legs
 6     box       both           saturated storage boxes standing on the floor
 7     rug       **rgb**        saturated striped pattern lying *in* the floor plane
 8     poster    **rgb**        framed colour blocks lying *in* a wall plane
=====  ========  =============  ==========================================================

Materials are drawn per scene from shared distributions, and lighting
(direction, ambient level, tint, exposure) varies, so a colour cannot say
"table" or "cabinet" on its own. The table and cabinet tops and sides are
lit differently from the floor and walls only as far as their surface normal
differs; their tops and fronts are lit exactly like the floor and wall.
:data:`CLASS_CUES` holds the same information as data.

Public API: :func:`render_frame` (one i.i.d. scene and camera), :func:`trajectory`
(one scene, a smooth camera path), :func:`write_folder_dataset` and the CLI::

    python -m m3l_core.data.synthetic --out data/synthetic --height 240 --width 320

which writes ``rgb/<name>.png``, ``depth/<name>.png`` (uint16 mm, 0 invalid),
``labels/<name>.png`` (labeled splits only), ``classes.yaml`` and
``splits/{train_labeled,train_unlabeled,val,test}.txt``.
"""
from __future__ import annotations

import argparse
import colorsys
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

log = logging.getLogger(__name__)

CLASS_NAMES: tuple[str, ...] = (
    "floor", "wall", "ceiling", "table", "cabinet", "chair", "box", "rug", "poster",
)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (128, 64, 128),   # floor: purple
    (102, 102, 156),  # wall: slate blue
    (200, 200, 200),  # ceiling: light grey
    (255, 127, 14),   # table: orange
    (44, 160, 44),    # cabinet: green
    (214, 39, 40),    # chair: red
    (23, 190, 207),   # box: cyan
    (255, 221, 0),    # rug: yellow
    (227, 119, 194),  # poster: pink
)
IGNORE_INDEX = 255
# Which modality tells each class apart from what surrounds it ("both", "depth" or "rgb").
CLASS_CUES: dict[str, str] = {
    "floor": "both", "wall": "both", "ceiling": "both",
    "table": "depth", "cabinet": "depth",
    "chair": "both", "box": "both",
    "rug": "rgb", "poster": "rgb",
}
SPLITS = ("train_labeled", "train_unlabeled", "val", "test")
LABELED_SPLITS = ("train_labeled", "val", "test")

FLOOR, WALL, CEILING, TABLE, CABINET, CHAIR, BOX, RUG, POSTER = range(len(CLASS_NAMES))
# Room faces are instances 0..5: walls x=0, x=Lx, y=0, y=Ly, then floor and ceiling.
_N_ROOM = 6
_FLOOR_INST = 4


@dataclass
class SceneConfig:
    """Ranges the scene, camera and sensor are drawn from. ``(lo, hi)`` pairs are uniform ranges."""

    room_x: tuple[float, float] = (4.0, 7.0)  # metres; small rooms keep most pixels within sensor range
    room_y: tuple[float, float] = (3.5, 6.0)
    room_height: tuple[float, float] = (2.5, 3.0)
    # Object counts, inclusive ranges. Placement may give up on a crowded room, so these are maxima.
    num_tables: tuple[int, int] = (1, 2)
    num_chairs: tuple[int, int] = (1, 3)
    num_cabinets: tuple[int, int] = (2, 3)
    num_boxes: tuple[int, int] = (1, 3)
    num_rugs: tuple[int, int] = (1, 2)
    num_posters: tuple[int, int] = (2, 4)
    # Camera. 70 deg is a typical RGB-D sensor (RealSense D435 ~69 deg); intrinsics follow from it.
    hfov_deg: float = 70.0
    camera_height: tuple[float, float] = (0.6, 1.7)  # ground robots up to a person's head
    camera_pitch_deg: tuple[float, float] = (-45.0, 10.0)  # negative looks down
    camera_roll_deg: float = 3.0  # max |roll|; robots are mostly level
    min_view_distance: float = 1.3  # metres to the looked-at object, so frames are not one surface
    # Depth sensor. sigma(z) = base + quad * z^2 (structured-light / stereo noise grows ~z^2).
    depth_noise_base: float = 0.002
    depth_noise_quad: float = 0.002
    depth_min: float = 0.3  # closer than this reads invalid
    depth_far_start: float = 5.0  # dropout probability ramps from 0 here ...
    depth_max: float = 8.0  # ... to 1 here
    edge_dropout: float = 0.6  # probability to lose a pixel in the shadow band behind a depth edge
    grazing_deg: float = 80.0  # incidence angles above this mostly read invalid
    hole_rate: float = 0.01  # expected fraction of pixels inside blob-shaped holes
    speckle_rate: float = 0.002  # isolated invalid pixels
    # Colour sensor.
    rgb_noise: float = 2.0  # std of per-pixel noise in 8-bit levels
    exposure: tuple[float, float] = (0.85, 1.15)  # per i.i.d. frame; fixed along a trajectory
    # Trajectories: a slow loop around the room centre, panning left and right.
    traj_fps: float = 15.0
    traj_speed: float = 0.25  # m/s along the loop
    traj_height: tuple[float, float] = (1.2, 1.6)  # above every object except wall cabinets
    traj_wall_margin: float = 1.0  # > cabinet depth, so the path never enters furniture
    traj_max_orbit_deg_s: float = 12.0  # caps the turn rate in small rooms, where the loop is tight
    traj_pan_deg: float = 25.0  # amplitude of the side-to-side pan
    traj_pan_hz: float = 0.05

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (tuple, list)):
                if len(value) != 2 or value[0] > value[1]:
                    raise ValueError(f"SceneConfig.{f.name} must be a (lo, hi) pair with lo <= hi, got {value}")
                setattr(self, f.name, tuple(value))
        for name in ("room_x", "room_y"):
            if getattr(self, name)[0] < 2.5:
                raise ValueError(f"SceneConfig.{name} must be at least 2.5 m, got {getattr(self, name)}")
        if self.room_height[0] < 2.2:
            raise ValueError(f"SceneConfig.room_height must be at least 2.2 m, got {self.room_height}")
        for name in ("num_tables", "num_chairs", "num_cabinets", "num_boxes", "num_rugs", "num_posters"):
            if getattr(self, name)[0] < 0:
                raise ValueError(f"SceneConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 10.0 <= self.hfov_deg <= 150.0:
            raise ValueError(f"SceneConfig.hfov_deg must be in [10, 150], got {self.hfov_deg}")
        if not 0.0 < self.depth_min < self.depth_far_start <= self.depth_max:
            raise ValueError("SceneConfig needs 0 < depth_min < depth_far_start <= depth_max, got "
                             f"{self.depth_min}, {self.depth_far_start}, {self.depth_max}")
        for name in ("depth_noise_base", "depth_noise_quad", "rgb_noise", "traj_speed", "traj_wall_margin",
                     "traj_max_orbit_deg_s", "traj_pan_deg", "traj_pan_hz"):
            if getattr(self, name) < 0:
                raise ValueError(f"SceneConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("edge_dropout", "hole_rate", "speckle_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"SceneConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.traj_fps <= 0:
            raise ValueError(f"SceneConfig.traj_fps must be > 0, got {self.traj_fps}")


# --------------------------------------------------------------------------- scene description


@dataclass
class Material:
    """A procedural texture evaluated at surface coordinates (u, v) in metres."""

    kind: str  # planks | tiles | noise | stripes | rug | poster
    colors: np.ndarray  # (k, 3) float32 albedo in [0, 1]; colors[0] is the base colour
    seed: int  # anchors the pattern to the world, so it is stable along a trajectory
    scale: float  # plank width, tile size, noise cell, stripe period (metres)
    contrast: float
    aux: float = 0.0  # plank length, rug border or poster frame width (metres)
    swap: bool = False  # turn the pattern by 90 degrees
    origin: tuple[float, float] = (0.0, 0.0)  # decal corner in surface coordinates
    size: tuple[float, float] = (0.0, 0.0)  # decal extent
    grid: tuple[int, int] = (1, 1)  # poster blocks


@dataclass
class Box:
    """An axis-aligned solid part of an object (table top, leg, cabinet ...)."""

    lo: np.ndarray
    hi: np.ndarray
    label: int
    material: int
    obj: int  # parts of one table or chair share this id
    support: tuple[int, float]  # the plane it stands on or against: (axis, coordinate)


@dataclass
class Decal:
    """A rectangle painted onto a room face (rug on the floor, poster on a wall)."""

    label: int
    material: int
    face: int  # room instance 0..4
    rect: tuple[float, float, float, float]  # u0, v0, u1, v1 in the face's (u, v)
    obj: int


@dataclass
class Scene:
    size: np.ndarray  # (Lx, Ly, H)
    materials: list[Material]
    room_materials: tuple[int, int, int]  # floor, wall, ceiling material indices
    boxes: list[Box]
    decals: list[Decal]
    light: np.ndarray  # unit direction towards the light
    ambient: float
    diffuse: float
    tint: np.ndarray  # per-channel light colour


@dataclass
class Camera:
    position: np.ndarray  # (3,) world, z up
    rotation: np.ndarray  # (3, 3) camera-to-world; columns are the camera x (right), y (down), z (forward)
    K: np.ndarray  # (3, 3) pinhole intrinsics


@dataclass
class Rendered:
    """Everything a render knows; :func:`render_frame` keeps only the sample fields."""

    rgb: np.ndarray  # HxWx3 uint8
    depth: np.ndarray  # HxW float32 metres, NaN invalid
    label: np.ndarray  # HxW uint8
    depth_clean: np.ndarray  # HxW float32 noise-free z-depth
    instance: np.ndarray  # HxW int32; 0..5 room faces, then boxes, then decals
    normal_axis: np.ndarray  # HxW int8, the axis of the surface normal (2 = horizontal surface)
    normal_sign: np.ndarray  # HxW int8, +1/-1
    camera: Camera
    scene: Scene

    def instance_support(self) -> dict[int, tuple[int, float]]:
        """For every box/decal instance: the plane (axis, coordinate) it rests on or against."""
        out: dict[int, tuple[int, float]] = {}
        for k, b in enumerate(self.scene.boxes):
            out[_N_ROOM + k] = b.support
        size = self.scene.size
        for k, d in enumerate(self.scene.decals):
            out[_N_ROOM + len(self.scene.boxes) + k] = _face_plane(d.face, size)
        return out


def camera_intrinsics(height: int, width: int, hfov_deg: float) -> np.ndarray:
    """3x3 pinhole K with square pixels and the principal point at the image centre."""
    fx = (width / 2.0) / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[fx, 0.0, (width - 1) / 2.0], [0.0, fx, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def look_rotation(yaw: float, pitch: float, roll: float = 0.0) -> np.ndarray:
    """Camera-to-world rotation (OpenCV camera axes, world z up) from angles in radians."""
    f = np.array([math.cos(pitch) * math.cos(yaw), math.cos(pitch) * math.sin(yaw), math.sin(pitch)])
    r = np.array([math.sin(yaw), -math.cos(yaw), 0.0])
    d = np.cross(f, r)
    c, s = math.cos(roll), math.sin(roll)
    r, d = c * r + s * d, -s * r + c * d
    return np.stack([r, d, f], axis=1)


def _face_plane(face: int, size: np.ndarray) -> tuple[int, float]:
    axis = face // 2
    return axis, float(size[axis]) if face % 2 else 0.0


# --------------------------------------------------------------------------- materials


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def _floor_material(rng: np.random.Generator) -> Material:
    kind = rng.choice(["planks", "tiles", "noise"], p=[0.45, 0.3, 0.25])
    seed = int(rng.integers(2**31))
    if kind == "planks":
        base = _hsv(rng.uniform(0.04, 0.11), rng.uniform(0.35, 0.7), rng.uniform(0.3, 0.75))
        return Material("planks", base[None], seed, rng.uniform(0.1, 0.22), rng.uniform(0.15, 0.3),
                        aux=rng.uniform(0.8, 2.0), swap=bool(rng.integers(2)))
    if kind == "tiles":
        base = _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.45, 0.85))
        grout = np.clip(base * rng.choice([0.7, 1.2]), 0, 1)
        return Material("tiles", np.stack([base, grout]), seed, rng.uniform(0.3, 0.6), rng.uniform(0.05, 0.15))
    base = _hsv(rng.random(), rng.uniform(0.1, 0.4), rng.uniform(0.2, 0.55))
    return Material("noise", base[None], seed, rng.uniform(0.2, 0.5), rng.uniform(0.15, 0.25))


def _wall_material(rng: np.random.Generator) -> Material:
    base = _hsv(rng.random(), rng.uniform(0.0, 0.18), rng.uniform(0.6, 0.92))
    seed = int(rng.integers(2**31))
    if rng.random() < 0.4:
        return Material("stripes", base[None], seed, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.12))
    return Material("noise", base[None], seed, rng.uniform(0.3, 1.0), rng.uniform(0.04, 0.1))


def _ceiling_material(rng: np.random.Generator) -> Material:
    base = _hsv(rng.random(), rng.uniform(0.0, 0.05), rng.uniform(0.8, 0.95))
    seed = int(rng.integers(2**31))
    if rng.random() < 0.5:
        return Material("tiles", np.stack([base, base * 0.85]), seed, 0.6, 0.03)
    return Material("noise", base[None], seed, 0.5, 0.04)


def _distinct_saturated(rng: np.random.Generator, avoid: np.ndarray, sat: tuple[float, float],
                        val: tuple[float, float], min_dist: float = 0.3) -> np.ndarray:
    """A saturated colour at least ``min_dist`` (RGB, 0-1) away from ``avoid``."""
    for _ in range(50):
        c = _hsv(rng.random(), rng.uniform(*sat), rng.uniform(*val))
        if np.linalg.norm(c - avoid) >= min_dist:
            return c
    return c


def _rug_material(rng: np.random.Generator, floor: Material, origin, size) -> Material:
    c0 = _distinct_saturated(rng, floor.colors[0], (0.45, 0.9), (0.35, 0.85))
    c1 = _distinct_saturated(rng, floor.colors[0], (0.45, 0.9), (0.3, 0.8))
    c2 = np.clip(c0 * rng.uniform(0.6, 0.8) + rng.uniform(0.0, 0.15), 0, 1)
    return Material("rug", np.stack([c0, c1, c2]).astype(np.float32), int(rng.integers(2**31)),
                    rng.uniform(0.08, 0.3), rng.uniform(0.1, 0.2), aux=rng.uniform(0.06, 0.15),
                    swap=bool(rng.integers(2)), origin=origin, size=size)


def _poster_material(rng: np.random.Generator, wall: Material, origin, size) -> Material:
    frame = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.3))
    blocks = [_distinct_saturated(rng, wall.colors[0], (0.55, 1.0), (0.45, 1.0)) for _ in range(4)]
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    return Material("poster", np.stack([frame, *blocks]).astype(np.float32), int(rng.integers(2**31)),
                    0.0, 0.05, aux=rng.uniform(0.02, 0.05), origin=origin, size=size, grid=grid)


def _solid_material(rng: np.random.Generator, avoid: np.ndarray, allow_black: bool) -> Material:
    if allow_black and rng.random() < 0.25:
        base = _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.15))
    else:
        base = _distinct_saturated(rng, avoid, (0.5, 0.95), (0.3, 0.9))
    return Material("noise", base[None], int(rng.integers(2**31)), 0.3, 0.06)


_M1 = np.uint32(0x9E3779B1)
_M2 = np.uint32(0x85EBCA77)
_M3 = np.uint32(0x2C1B3C6D)
_M4 = np.uint32(0x297A2D39)


def _hash(i: np.ndarray, j: np.ndarray, seed: int) -> np.ndarray:
    """Integer lattice coordinates -> uniform float32 in [0, 1), stable for a seed."""
    x = i.astype(np.uint32) * _M1 + j.astype(np.uint32) * _M2 + np.uint32(seed & 0xFFFFFFFF)
    x ^= x >> np.uint32(15)
    x *= _M3
    x ^= x >> np.uint32(12)
    x *= _M4
    x ^= x >> np.uint32(15)
    return x.astype(np.float32) * np.float32(2.0**-32)


def _value_noise(u: np.ndarray, v: np.ndarray, seed: int) -> np.ndarray:
    """Smooth value noise in [0, 1) with unit cells."""
    fu, fv = np.floor(u), np.floor(v)
    iu, iv = fu.astype(np.int64), fv.astype(np.int64)
    tu, tv = u - fu, v - fv
    tu = tu * tu * (3 - 2 * tu)
    tv = tv * tv * (3 - 2 * tv)
    a, b = _hash(iu, iv, seed), _hash(iu + 1, iv, seed)
    c, d = _hash(iu, iv + 1, seed), _hash(iu + 1, iv + 1, seed)
    top = a + (b - a) * tu
    return top + ((c + (d - c) * tu) - top) * tv


def _albedo(m: Material, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) surface coordinates -> (N, 3) albedo."""
    u = u - np.float32(m.origin[0])
    v = v - np.float32(m.origin[1])
    if m.swap:
        u, v = v, u
    base = m.colors[0]
    fine = _value_noise(u * 60.0, v * 60.0, m.seed + 7) - 0.5  # ~1.7 cm grain, world-anchored
    if m.kind == "planks":
        w, length = m.scale, m.aux
        row = np.floor(v / w)
        offset = _hash(row.astype(np.int64), np.zeros_like(row, np.int64), m.seed) * length
        along = (u + offset) / length
        col = np.floor(along)
        tone = _hash(row.astype(np.int64), col.astype(np.int64), m.seed + 1) - 0.5
        grain = _value_noise(u * 3.0, v * 40.0, m.seed + 2) - 0.5
        gap = ((v / w - row) < 0.04) | ((along - col) < 0.004)
        mult = (1 + m.contrast * (tone + 0.5 * grain) + 0.05 * fine) * np.where(gap, 0.55, 1.0)
        return base * mult[:, None]
    if m.kind == "tiles":
        s = m.scale
        iu, iv = np.floor(u / s), np.floor(v / s)
        g = 0.012 / s
        grout = ((u / s - iu) < g) | ((v / s - iv) < g)
        tone = _hash(iu.astype(np.int64), iv.astype(np.int64), m.seed) - 0.5
        col = base * (1 + m.contrast * tone + 0.08 * fine)[:, None]
        return np.where(grout[:, None], m.colors[1], col)
    if m.kind == "noise":
        n = _value_noise(u / m.scale, v / m.scale, m.seed) - 0.5
        return base * (1 + m.contrast * (n + 0.5 * fine))[:, None]
    if m.kind == "stripes":
        stripe = np.cos(u * np.float32(2 * math.pi / m.scale))
        return base * (1 + m.contrast * (0.5 * stripe + 0.3 * fine))[:, None]
    if m.kind == "rug":
        su, sv = (m.size[1], m.size[0]) if m.swap else m.size
        b = m.aux
        border = (u < b) | (v < b) | (u > su - b) | (v > sv - b)
        stripe = (np.floor(u / m.scale).astype(np.int64) % 2) == 1
        col = np.where(stripe[:, None], m.colors[2], m.colors[0])
        col = np.where(border[:, None], m.colors[1], col)
        n = _value_noise(u * 25.0, v * 25.0, m.seed) - 0.5
        return col * (1 + m.contrast * (n + fine))[:, None]
    if m.kind == "poster":
        su, sv = m.size
        f = m.aux
        frame = (u < f) | (v < f) | (u > su - f) | (v > sv - f)
        gu, gv = m.grid
        cu = np.clip(((u - f) / max(su - 2 * f, 1e-3) * gu).astype(np.int64), 0, gu - 1)
        cv = np.clip(((v - f) / max(sv - 2 * f, 1e-3) * gv).astype(np.int64), 0, gv - 1)
        pick = (_hash(cu, cv, m.seed) * (len(m.colors) - 1)).astype(np.int64) + 1
        col = m.colors[pick]
        col = np.where(frame[:, None], m.colors[0], col)
        return col * (1 + m.contrast * fine)[:, None]
    raise ValueError(f"unknown material kind {m.kind!r}")


# --------------------------------------------------------------------------- layout


def _uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _free(rect: tuple[float, float, float, float], taken: list[tuple[float, float, float, float]],
          margin: float) -> bool:
    x0, y0, x1, y1 = rect
    return all(x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0 or b1 + margin <= y0
               for a0, b0, a1, b1 in taken)


def make_scene(rng: np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Draw a room with furniture, rugs and posters."""
    cfg = config or SceneConfig()
    lx, ly, lz = rng.uniform(*cfg.room_x), rng.uniform(*cfg.room_y), rng.uniform(*cfg.room_height)
    size = np.array([lx, ly, lz])
    floor_m, wall_m, ceil_m = _floor_material(rng), _wall_material(rng), _ceiling_material(rng)
    materials = [floor_m, wall_m, ceil_m]
    boxes: list[Box] = []
    decals: list[Decal] = []
    taken: list[tuple[float, float, float, float]] = []  # solid floor footprints
    wall_spans: dict[int, list[tuple[float, float, float]]] = {k: [] for k in range(4)}  # u0, u1, top
    obj = 0

    def add_material(m: Material) -> int:
        materials.append(m)
        return len(materials) - 1

    def add_box(lo, hi, label, mat, support) -> None:
        boxes.append(Box(np.asarray(lo, float), np.asarray(hi, float), label, mat, obj, support))

    # Cabinets against the walls, in the wall's own material: only depth tells them apart.
    for _ in range(_uniform_int(rng, cfg.num_cabinets)):
        for _try in range(20):
            face = int(rng.integers(4))
            axis, plane = _face_plane(face, size)
            length = size[1 - axis]
            w, dep, h = rng.uniform(0.6, 1.6), rng.uniform(0.3, 0.6), rng.uniform(0.8, min(2.0, lz - 0.3))
            if w > length - 0.4:
                continue
            u0 = rng.uniform(0.15, length - w - 0.15)
            lo, hi = np.zeros(3), np.array([0.0, 0.0, h])
            lo[1 - axis], hi[1 - axis] = u0, u0 + w
            lo[axis], hi[axis] = (plane - dep, plane) if face % 2 else (0.0, dep)
            rect = (lo[0], lo[1], hi[0], hi[1])
            if _free(rect, taken, 0.05):
                taken.append(rect)
                wall_spans[face].append((u0, u0 + w, h))
                add_box(lo, hi, CABINET, 1, (axis, plane))
                obj += 1
                break

    # Tables in the floor's own material: their tops look like floor, only depth tells them apart.
    tables: list[tuple[float, float, float, float]] = []
    for _ in range(_uniform_int(rng, cfg.num_tables)):
        for _try in range(20):
            w, d, h = rng.uniform(0.8, 1.6), rng.uniform(0.6, 1.0), rng.uniform(0.65, 0.8)
            if rng.random() < 0.5:
                w, d = d, w
            if w > lx - 1.2 or d > ly - 1.2:
                continue
            x0, y0 = rng.uniform(0.6, lx - w - 0.6), rng.uniform(0.6, ly - d - 0.6)
            rect = (x0, y0, x0 + w, y0 + d)
            if not _free(rect, taken, 0.6):  # leave room for chairs
                continue
            taken.append(rect)
            tables.append(rect)
            t = rng.uniform(0.03, 0.06)
            add_box((x0, y0, h - t), (x0 + w, y0 + d, h), TABLE, 0, (2, 0.0))
            leg, inset = 0.05, 0.04
            for lxp in (x0 + inset, x0 + w - inset - leg):
                for lyp in (y0 + inset, y0 + d - inset - leg):
                    add_box((lxp, lyp, 0.0), (lxp + leg, lyp + leg, h - t), TABLE, 0, (2, 0.0))
            obj += 1
            break

    # Chairs next to tables (or anywhere if there is no table), back turned away from the table.
    for _ in range(_uniform_int(rng, cfg.num_chairs)):
        mat = add_material(_solid_material(rng, floor_m.colors[0], allow_black=True))
        for _try in range(20):
            s = rng.uniform(0.38, 0.48)
            seat_h = rng.uniform(0.42, 0.48)
            if tables:
                # Chair on one side of a table; its back is on the side away from the table.
                tx0, ty0, tx1, ty1 = tables[int(rng.integers(len(tables)))]
                side, gap = int(rng.integers(4)), 0.05
                if side == 0:  # +x of the table
                    x0, y0 = tx1 + gap, rng.uniform(ty0, max(ty0, ty1 - s))
                elif side == 1:  # -x
                    x0, y0 = tx0 - gap - s, rng.uniform(ty0, max(ty0, ty1 - s))
                elif side == 2:  # +y
                    x0, y0 = rng.uniform(tx0, max(tx0, tx1 - s)), ty1 + gap
                else:  # -y
                    x0, y0 = rng.uniform(tx0, max(tx0, tx1 - s)), ty0 - gap - s
                back_axis, back_upper = side // 2, side % 2 == 0
            else:
                x0, y0 = rng.uniform(0.3, lx - s - 0.3), rng.uniform(0.3, ly - s - 0.3)
                back_axis, back_upper = int(rng.integers(2)), bool(rng.integers(2))
            rect = (x0, y0, x0 + s, y0 + s)
            if x0 < 0.05 or y0 < 0.05 or x0 + s > lx - 0.05 or y0 + s > ly - 0.05:
                continue
            if not _free(rect, [r for r in taken if r not in tables], 0.05) or not _free(rect, tables, 0.0):
                continue
            taken.append(rect)
            st, leg, back_t, back_h = 0.05, 0.035, 0.04, rng.uniform(0.35, 0.5)
            add_box((x0, y0, seat_h - st), (x0 + s, y0 + s, seat_h), CHAIR, mat, (2, 0.0))
            for lxp in (x0, x0 + s - leg):
                for lyp in (y0, y0 + s - leg):
                    add_box((lxp, lyp, 0.0), (lxp + leg, lyp + leg, seat_h - st), CHAIR, mat, (2, 0.0))
            blo = [x0, y0, seat_h]
            bhi = [x0 + s, y0 + s, seat_h + back_h]
            if back_upper:
                blo[back_axis] = bhi[back_axis] - back_t
            else:
                bhi[back_axis] = blo[back_axis] + back_t
            add_box(blo, bhi, CHAIR, mat, (2, 0.0))
            obj += 1
            break

    # Storage boxes on the floor, saturated colours.
    for _ in range(_uniform_int(rng, cfg.num_boxes)):
        mat = add_material(_solid_material(rng, floor_m.colors[0], allow_black=False))
        for _try in range(20):
            w, d, h = rng.uniform(0.25, 0.6), rng.uniform(0.25, 0.6), rng.uniform(0.2, 0.6)
            x0, y0 = rng.uniform(0.05, lx - w - 0.05), rng.uniform(0.05, ly - d - 0.05)
            rect = (x0, y0, x0 + w, y0 + d)
            if _free(rect, taken, 0.1):
                taken.append(rect)
                add_box((x0, y0, 0.0), (x0 + w, y0 + d, h), BOX, mat, (2, 0.0))
                obj += 1
                break

    # Rugs lie in the floor plane: only RGB tells them apart.
    rugs: list[tuple[float, float, float, float]] = []
    for _ in range(_uniform_int(rng, cfg.num_rugs)):
        for _try in range(20):
            w, d = rng.uniform(1.0, min(2.6, lx - 0.6)), rng.uniform(0.8, min(2.0, ly - 0.6))
            x0, y0 = rng.uniform(0.3, lx - w - 0.3), rng.uniform(0.3, ly - d - 0.3)
            rect = (x0, y0, x0 + w, y0 + d)
            if _free(rect, rugs, 0.2):
                rugs.append(rect)
                mat = add_material(_rug_material(rng, floor_m, (x0, y0), (w, d)))
                decals.append(Decal(RUG, mat, _FLOOR_INST, rect, obj))
                obj += 1
                break

    # Posters lie in a wall plane: only RGB tells them apart. Keep them clear of cabinets.
    posters: dict[int, list[tuple[float, float]]] = {k: [] for k in range(4)}
    for _ in range(_uniform_int(rng, cfg.num_posters)):
        for _try in range(20):
            face = int(rng.integers(4))
            length = size[1 - face // 2]
            w, h = rng.uniform(0.4, 1.2), rng.uniform(0.5, 1.0)
            if w > length - 0.4:
                continue
            u0 = rng.uniform(0.2, length - w - 0.2)
            zc = rng.uniform(1.2, 1.7)
            z0 = zc - h / 2
            z1 = min(zc + h / 2, lz - 0.15)
            if any(u0 < b + 0.1 and a < u0 + w + 0.1 and z0 < top + 0.1 for a, b, top in wall_spans[face]):
                continue
            if any(u0 < b + 0.2 and a < u0 + w + 0.2 for a, b in posters[face]):
                continue
            posters[face].append((u0, u0 + w))
            mat = add_material(_poster_material(rng, wall_m, (u0, z0), (w, z1 - z0)))
            decals.append(Decal(POSTER, mat, face, (u0, z0, u0 + w, z1), obj))
            obj += 1
            break

    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(45, 80))
    light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    tint = 1.0 + rng.uniform(-0.08, 0.08, 3)
    return Scene(size, materials, (0, 1, 2), boxes, decals, light, rng.uniform(0.55, 0.7),
                 rng.uniform(0.3, 0.45), tint.astype(np.float32))


# --------------------------------------------------------------------------- rendering


def _cast(scene: Scene, cam: Camera, height: int, width: int):
    """Ray-cast every pixel.

    Returns z-depth (HxW), instance id (HxW), normal axis (HxW) and world ray
    directions (3xHxW, scaled so that their camera-z component is 1).
    """
    K = cam.K
    us = ((np.arange(width) - K[0, 2]) / K[0, 0]).astype(np.float32)
    vs = ((np.arange(height) - K[1, 2]) / K[1, 1]).astype(np.float32)
    R = cam.rotation.astype(np.float32)
    # Direction with camera-z = 1, so the ray parameter t is the z-depth a sensor reports.
    dirs = R[:, 0, None, None] * us[None, None, :] + R[:, 1, None, None] * vs[None, :, None] + R[:, 2, None, None]
    dirs[np.abs(dirs) < 1e-9] = np.float32(1e-9)
    inv = np.float32(1.0) / dirs
    o = cam.position.astype(np.float32)
    size = scene.size.astype(np.float32)

    # Room: the camera is inside, so each ray leaves through the nearest face ahead.
    t_axes = [np.where(dirs[a] > 0, size[a] - o[a], -o[a]) * inv[a] for a in range(3)]
    t = np.minimum(np.minimum(t_axes[0], t_axes[1]), t_axes[2])
    axis = np.where(t == t_axes[0], 0, np.where(t == t_axes[1], 1, 2)).astype(np.int8)
    positive = np.choose(axis, dirs) > 0
    inst = 2 * axis.astype(np.int32) + positive

    # Boxes: slab test, restricted to the box's screen rectangle.
    for k, box in enumerate(scene.boxes):
        corners = np.array([[x, y, z] for x in (box.lo[0], box.hi[0])
                            for y in (box.lo[1], box.hi[1]) for z in (box.lo[2], box.hi[2])])
        pc = (corners - cam.position) @ cam.rotation
        if np.all(pc[:, 2] <= 1e-3):
            continue
        if np.all(pc[:, 2] > 1e-3):
            px = K[0, 0] * pc[:, 0] / pc[:, 2] + K[0, 2]
            py = K[1, 1] * pc[:, 1] / pc[:, 2] + K[1, 2]
            c0, c1 = max(int(math.floor(px.min())) - 1, 0), min(int(math.ceil(px.max())) + 2, width)
            r0, r1 = max(int(math.floor(py.min())) - 1, 0), min(int(math.ceil(py.max())) + 2, height)
            if c0 >= c1 or r0 >= r1:
                continue
        else:
            r0, r1, c0, c1 = 0, height, 0, width
        lo, hi = box.lo.astype(np.float32) - o, box.hi.astype(np.float32) - o
        tmin, tn, tf = [], None, None
        for a in range(3):
            ia = inv[a, r0:r1, c0:c1]
            t1, t2 = lo[a] * ia, hi[a] * ia
            near, far = np.minimum(t1, t2), np.maximum(t1, t2)
            tmin.append(near)
            tn = near if tn is None else np.maximum(tn, near)
            tf = far if tf is None else np.minimum(tf, far)
        ts = t[r0:r1, c0:c1]
        hit = (tn <= tf) & (tn > 0) & (tn < ts)
        if hit.any():
            ts[hit] = tn[hit]
            inst[r0:r1, c0:c1][hit] = _N_ROOM + k
            tnh = tn[hit]
            axis[r0:r1, c0:c1][hit] = np.where(tmin[0][hit] == tnh, 0, np.where(tmin[1][hit] == tnh, 1, 2))
    return t, inst, axis, dirs


def render_scene(scene: Scene, camera: Camera, height: int, width: int, rng: np.random.Generator,
                 config: SceneConfig | None = None, exposure: float = 1.0) -> Rendered:
    """Render one view of ``scene`` with sensor noise drawn from ``rng``."""
    cfg = config or SceneConfig()
    t, inst, axis, dirs = _cast(scene, camera, height, width)
    d_axis = np.choose(axis, dirs)
    sign = np.where(d_axis > 0, -1, 1).astype(np.int8)  # normals face the camera
    x, y, z = (np.float32(c) + t * d for c, d in zip(camera.position, dirs))

    # Surface coordinates: horizontal faces use (x, y); faces with an x normal (y, z); y normal (x, z).
    u = np.where(axis == 0, y, x)
    v = np.where(axis == 2, y, z)

    # Decals take over the room-face pixels inside their rectangle.
    n_boxes = len(scene.boxes)
    for k, dec in enumerate(scene.decals):
        u0, v0, u1, v1 = dec.rect
        m = (inst == dec.face) & (u >= u0) & (u < u1) & (v >= v0) & (v < v1)
        inst[m] = _N_ROOM + n_boxes + k

    f_m, w_m, c_m = scene.room_materials
    lab_lut = np.array([WALL] * 4 + [FLOOR, CEILING] + [b.label for b in scene.boxes]
                       + [d.label for d in scene.decals], np.uint8)
    mat_lut = np.array([w_m] * 4 + [f_m, c_m] + [b.material for b in scene.boxes]
                       + [d.material for d in scene.decals], np.int32)
    label = lab_lut[inst]
    mat = mat_lut[inst]

    # Albedo per material, Lambert shading with one light plus ambient.
    flat_mat, flat_u, flat_v = mat.ravel(), u.ravel(), v.ravel()
    albedo = np.empty((flat_mat.size, 3), np.float32)
    order = np.argsort(flat_mat, kind="stable")
    bounds = np.searchsorted(flat_mat[order], np.arange(len(scene.materials) + 1))
    for k, material in enumerate(scene.materials):
        idx = order[bounds[k]:bounds[k + 1]]
        if idx.size:
            albedo[idx] = _albedo(material, flat_u[idx], flat_v[idx])
    n_dot_l = sign * scene.light.astype(np.float32)[axis.astype(np.intp)]
    shade = scene.ambient + scene.diffuse * np.maximum(n_dot_l, 0)
    rgb = albedo.reshape(height, width, 3) * (shade[..., None] * (255.0 * exposure) * scene.tint)
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(cfg.rgb_noise)
    rgb = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    depth = _sensor_depth(t, inst, d_axis, dirs, rng, cfg)
    return Rendered(rgb, depth, label, t.astype(np.float32), inst, axis, sign, camera, scene)


def _sensor_depth(z: np.ndarray, inst: np.ndarray, d_axis: np.ndarray, dirs: np.ndarray,
                  rng: np.random.Generator, cfg: SceneConfig) -> np.ndarray:
    """Clean z-depth -> noisy depth with sensor-like holes (NaN)."""
    h, w = z.shape
    sigma = np.float32(cfg.depth_noise_base) + np.float32(cfg.depth_noise_quad) * z * z
    depth = z + sigma * rng.standard_normal(z.shape, dtype=np.float32)
    u01 = rng.random((4, h, w), dtype=np.float32)
    invalid = (z < cfg.depth_min) | (z > cfg.depth_max)
    # Far range: returns fade out.
    invalid |= u01[0] < (z - cfg.depth_far_start) / (cfg.depth_max - cfg.depth_far_start)
    # Grazing incidence: little light comes back.
    cos_inc = np.abs(d_axis) / np.sqrt(dirs[0] * dirs[0] + dirs[1] * dirs[1] + dirs[2] * dirs[2])
    invalid |= (cos_inc < math.cos(math.radians(cfg.grazing_deg))) & (u01[1] < 0.8)
    # Shadow band on the far side of occlusion edges (projector/stereo occlusion): neighbours on
    # different surfaces with a depth jump. A slanted floor alone has large row-to-row steps at low
    # resolution, so the surface change is required too.
    thr = 0.03 + 0.03 * z
    far = np.zeros((h, w), np.uint8)
    cut = inst[:, 1:] != inst[:, :-1]
    dx = z[:, 1:] - z[:, :-1]
    far[:, 1:] |= cut & (dx > thr[:, 1:])
    far[:, :-1] |= cut & (-dx > thr[:, :-1])
    cut = inst[1:] != inst[:-1]
    dy = z[1:] - z[:-1]
    far[1:] |= cut & (dy > thr[1:])
    far[:-1] |= cut & (-dy > thr[:-1])
    k = 1 + 2 * round(w / 320)  # band width scales with the image: 1 px at 64, 5 px at 640
    band = cv2.dilate(far, np.ones((k, k), np.uint8)).astype(bool)
    invalid |= band & (u01[2] < cfg.edge_dropout)
    invalid |= u01[3] < cfg.speckle_rate
    # Blob holes (specular or dark patches).
    if cfg.hole_rate > 0:
        mean_r = 0.03 * w
        n = int(rng.poisson(cfg.hole_rate * h * w / (math.pi * mean_r * mean_r)))
        if n:
            mask = np.zeros((h, w), np.uint8)
            cs = rng.random((n, 2)) * (w, h)
            rs = np.maximum(rng.uniform(0.01, 0.05, (n, 2)) * w, 1.0)
            angles = rng.uniform(0, 180, n)
            for (cx, cy), (ra, rb), ang in zip(cs, rs, angles):
                cv2.ellipse(mask, (int(cx), int(cy)), (int(round(ra)), int(round(rb))), float(ang), 0, 360, 1, -1)
            invalid |= mask.astype(bool)
    depth[invalid | ~(depth > 0)] = np.nan
    return depth.astype(np.float32)


# --------------------------------------------------------------------------- cameras


def _inside_any(p: np.ndarray, boxes: list[Box], margin: float) -> bool:
    return any(np.all(p > b.lo - margin) and np.all(p < b.hi + margin) for b in boxes)


def random_camera(rng: np.random.Generator, scene: Scene, height: int, width: int,
                  config: SceneConfig | None = None) -> Camera:
    """A free camera position looking at a random object, decal or wall point."""
    cfg = config or SceneConfig()
    lx, ly, lz = scene.size
    targets = [(b.lo + b.hi) / 2 for b in scene.boxes if b.lo[2] > 0.1 or b.label in (CABINET, BOX)]
    for d in scene.decals:
        u0, v0, u1, v1 = d.rect
        uc, vc = (u0 + u1) / 2, (v0 + v1) / 2
        axis, plane = _face_plane(d.face, scene.size)
        targets.append(np.array([uc, vc, 0.0]) if axis == 2 else
                       (np.array([plane, uc, vc]) if axis == 0 else np.array([uc, plane, vc])))
    pos = target = None
    for _ in range(100):
        pos = np.array([rng.uniform(0.3, lx - 0.3), rng.uniform(0.3, ly - 0.3), rng.uniform(*cfg.camera_height)])
        if _inside_any(pos, scene.boxes, 0.15):
            continue
        if targets and rng.random() < 0.8:
            target = targets[int(rng.integers(len(targets)))]
        else:
            target = np.array([rng.uniform(0, lx), rng.uniform(0, ly), rng.uniform(0.3, 1.5)])
        if np.linalg.norm(target - pos) >= cfg.min_view_distance:
            break
    if target is None:  # a crowded room never offered a free spot; look across the room
        target = np.array([lx / 2, ly / 2, 1.0]) if np.linalg.norm(pos[:2] - (lx / 2, ly / 2)) > 0.5 else \
            np.array([0.0, ly / 2, 1.0])
    delta = target - pos
    yaw = math.atan2(delta[1], delta[0]) + rng.normal(0, math.radians(10))
    pitch = math.atan2(delta[2], math.hypot(delta[0], delta[1])) + rng.normal(0, math.radians(5))
    pitch = float(np.clip(pitch, *np.radians(cfg.camera_pitch_deg)))
    roll = rng.uniform(-1, 1) * math.radians(cfg.camera_roll_deg)
    return Camera(pos, look_rotation(yaw, pitch, roll), camera_intrinsics(height, width, cfg.hfov_deg))


def _check_size(height: int, width: int) -> None:
    if int(height) < 8 or int(width) < 8:
        raise ValueError(f"image size must be at least 8x8, got height={height} width={width}")


# --------------------------------------------------------------------------- public generators


def render_frame(rng: np.random.Generator, height: int, width: int,
                 config: SceneConfig | None = None) -> dict:
    """One i.i.d. sample: a fresh random scene seen from a random camera."""
    _check_size(height, width)
    cfg = config or SceneConfig()
    scene = make_scene(rng, cfg)
    cam = random_camera(rng, scene, height, width, cfg)
    r = render_scene(scene, cam, height, width, rng, cfg, exposure=rng.uniform(*cfg.exposure))
    return dict(rgb=r.rgb, depth=r.depth, label=r.label, name="")


def trajectory_cameras(rng: np.random.Generator, scene: Scene, num_frames: int, height: int, width: int,
                       config: SceneConfig | None = None) -> list[Camera]:
    """A slow loop around the room centre that pans left and right; continuous in time."""
    cfg = config or SceneConfig()
    lx, ly, _ = scene.size
    cx, cy = lx / 2, ly / 2
    ax, ay = max(cx - cfg.traj_wall_margin, 0.1), max(cy - cfg.traj_wall_margin, 0.1)
    omega = min(cfg.traj_speed / ((ax + ay) / 2), math.radians(cfg.traj_max_orbit_deg_s))
    omega *= rng.choice([-1.0, 1.0])
    theta0 = rng.uniform(0, 2 * math.pi)
    h0 = rng.uniform(*cfg.traj_height)
    pitch0 = math.radians(rng.uniform(-25, -10))
    phase_pan, phase_pitch = rng.uniform(0, 2 * math.pi, 2)
    K = camera_intrinsics(height, width, cfg.hfov_deg)
    cams = []
    for i in range(num_frames):
        s = i / cfg.traj_fps
        theta = theta0 + omega * s
        pos = np.array([cx + ax * math.cos(theta), cy + ay * math.sin(theta),
                        h0 + 0.05 * math.sin(0.5 * s)])
        yaw = math.atan2(cy - pos[1], cx - pos[0]) + math.radians(cfg.traj_pan_deg) * math.sin(
            2 * math.pi * cfg.traj_pan_hz * s + phase_pan)
        pitch = pitch0 + math.radians(5) * math.sin(2 * math.pi * 0.05 * s + phase_pitch)
        cams.append(Camera(pos, look_rotation(yaw, pitch), K))
    return cams


def trajectory(seed: int, num_frames: int, height: int, width: int,
               config: SceneConfig | None = None) -> Iterator[dict]:
    """``num_frames`` views of ONE scene along a smooth camera path (``config.traj_fps`` apart)."""
    _check_size(height, width)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, cfg)
    cams = trajectory_cameras(rng, scene, num_frames, height, width, cfg)
    for i, cam in enumerate(cams):
        r = render_scene(scene, cam, height, width, rng, cfg)
        yield dict(rgb=r.rgb, depth=r.depth, label=r.label, name=f"{i:06d}")


# --------------------------------------------------------------------------- folder writer


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # Each sample has its own stream, so changing one split's count leaves the others unchanged.
    return np.random.default_rng([int(seed), SPLITS.index(split), int(index)])


def _depth_to_mm(depth: np.ndarray) -> np.ndarray:
    mm = np.nan_to_num(depth * 1000.0, nan=0.0, posinf=0.0, neginf=0.0)
    out = np.clip(np.rint(mm), 0, 65535).astype(np.uint16)
    out[(mm > 0) & (out == 0)] = 1  # a valid reading never becomes the invalid code
    return out


def _imwrite(path: Path, img: np.ndarray) -> None:
    if not cv2.imwrite(str(path), img):
        raise OSError(f"could not write image {path}")


def _write_sample(out: Path, name: str, sample: dict, labeled: bool) -> None:
    _imwrite(out / "rgb" / f"{name}.png", cv2.cvtColor(sample["rgb"], cv2.COLOR_RGB2BGR))
    _imwrite(out / "depth" / f"{name}.png", _depth_to_mm(sample["depth"]))
    if labeled:
        _imwrite(out / "labels" / f"{name}.png", sample["label"])


def _write_classes(out: Path) -> None:
    import yaml

    doc = {"names": list(CLASS_NAMES), "palette": [list(c) for c in PALETTE], "ignore_index": IGNORE_INDEX}
    (out / "classes.yaml").write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))


def write_folder_dataset(out: str | Path, *, counts: dict[str, int], height: int, width: int, seed: int,
                         config: SceneConfig | None = None, progress: bool = True) -> None:
    """Write i.i.d. frames in the folder format; labels only for the labeled splits.

    ``counts`` maps split names (any of ``train_labeled``, ``train_unlabeled``,
    ``val``, ``test``) to frame counts; missing splits get an empty split file.
    Sample names are ``<split>_<index:06d>``.
    """
    from tqdm import tqdm

    _check_size(height, width)
    unknown = set(counts) - set(SPLITS)
    if unknown:
        raise ValueError(f"counts has unknown split(s) {sorted(unknown)}; expected any of {SPLITS}")
    for split, n in counts.items():
        if int(n) < 0:
            raise ValueError(f"counts[{split!r}] must be >= 0, got {n}")
    cfg = config or SceneConfig()
    out = Path(out)
    for sub in ("rgb", "depth", "labels", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _write_classes(out)
    total = sum(int(counts.get(s, 0)) for s in SPLITS)
    with tqdm(total=total, desc="synthetic", unit="frame", disable=not progress) as bar:
        for split in SPLITS:
            names = []
            for i in range(int(counts.get(split, 0))):
                name = f"{split}_{i:06d}"
                sample = render_frame(_sample_rng(seed, split, i), height, width, cfg)
                _write_sample(out, name, sample, labeled=split in LABELED_SPLITS)
                names.append(name)
                bar.update(1)
            (out / "splits" / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    log.info("wrote %d synthetic frames to %s", total, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m m3l_core.data.synthetic",
                                description="Write procedural RGB-D scenes in the M3L folder format.")
    p.add_argument("--out", required=True, help="output directory (created if missing)")
    p.add_argument("--train-labeled", type=int, default=50, help="labeled training frames")
    p.add_argument("--train-unlabeled", type=int, default=500, help="unlabeled training frames (no label files)")
    p.add_argument("--val", type=int, default=100, help="validation frames")
    p.add_argument("--test", type=int, default=200, help="test frames")
    p.add_argument("--height", type=int, default=240, help="image height in pixels")
    p.add_argument("--width", type=int, default=320, help="image width in pixels")
    p.add_argument("--seed", type=int, default=0, help="base seed; the same seed writes identical files")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    counts = {"train_labeled": args.train_labeled, "train_unlabeled": args.train_unlabeled,
              "val": args.val, "test": args.test}
    for split, n in counts.items():
        if n < 0:
            p.error(f"--{split.replace('_', '-')} must be >= 0, got {n}")
    start = time.perf_counter()
    write_folder_dataset(args.out, counts=counts, height=args.height, width=args.width, seed=args.seed,
                         progress=not args.no_progress)
    summary = ", ".join(f"{k}={v}" for k, v in counts.items())
    print(f"wrote {sum(counts.values())} frames ({summary}) at {args.height}x{args.width} "
          f"to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
