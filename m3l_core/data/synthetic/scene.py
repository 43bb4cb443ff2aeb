"""The scene description (room, boxes, decals, light) and the random room layout."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .config import BOX, CABINET, CHAIR, POSTER, RUG, TABLE, SceneConfig
from .materials import (Material, ceiling_material, floor_material, poster_material, rug_material,
                        solid_material, wall_material)

# Room faces are instances 0..5: walls x=0, x=Lx, y=0, y=Ly, then floor and ceiling.
N_ROOM_FACES = 6
FLOOR_FACE = 4
WALL_MATERIAL, FLOOR_MATERIAL = 1, 0  # indices into Scene.materials: wall-coloured cabinets, floor-coloured tables

# Object sizes in metres; (lo, hi) pairs are uniform ranges. ``clearance``: kept from the walls (floor
# objects) or from the wall's ends (wall objects); ``spacing``: free floor or wall kept to other objects;
# ``fit``: how much longer than the object its wall must be; ``ceiling``: kept below the ceiling.
SIZES: dict[str, dict] = {
    "cabinet": dict(width=(0.6, 1.6), depth=(0.3, 0.6), height=(0.8, 2.0), ceiling=0.3, fit=0.4,
                    clearance=0.15, spacing=0.05),
    # spacing leaves room for chairs; legs are square, inset from the top's corners.
    "table": dict(width=(0.8, 1.6), depth=(0.6, 1.0), height=(0.65, 0.8), top=(0.03, 0.06), leg=0.05,
                  leg_inset=0.04, clearance=0.6, spacing=0.6),
    # width is the square seat's side; a chair stands table_gap off its table, or (without a table)
    # alone_clearance off the walls.
    "chair": dict(width=(0.38, 0.48), seat_height=(0.42, 0.48), seat=0.05, leg=0.035, back=0.04,
                  back_height=(0.35, 0.5), table_gap=0.05, alone_clearance=0.3, clearance=0.05, spacing=0.05),
    "box": dict(width=(0.25, 0.6), depth=(0.25, 0.6), height=(0.2, 0.6), clearance=0.05, spacing=0.1),
    "rug": dict(width=(1.0, 2.6), depth=(0.8, 2.0), clearance=0.3, spacing=0.2),
    # centre: height of the poster's centre; cabinet_gap: kept from cabinets on the same wall.
    "poster": dict(width=(0.4, 1.2), height=(0.5, 1.0), centre=(1.2, 1.7), ceiling=0.15, fit=0.4,
                   clearance=0.2, spacing=0.2, cabinet_gap=0.1),
}
# One light per scene: elevation above the horizon, +/- per-channel tint, ambient and diffuse levels.
LIGHT = dict(elevation_deg=(45, 80), tint=0.08, ambient=(0.55, 0.7), diffuse=(0.3, 0.45))
TRIES = 20  # placements tried per object before giving up on a crowded room


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
    """A room: its size, every material, the solid boxes, the decals and the light."""

    size: np.ndarray  # (Lx, Ly, H)
    materials: list[Material]
    room_materials: tuple[int, int, int]  # floor, wall, ceiling material indices
    boxes: list[Box]
    decals: list[Decal]
    light: np.ndarray  # unit direction towards the light
    ambient: float
    diffuse: float
    tint: np.ndarray  # per-channel light colour


def face_plane(face: int, size: np.ndarray) -> tuple[int, float]:
    """The (axis, coordinate) of room face ``face`` (0..3 walls, 4 floor, 5 ceiling)."""
    axis = face // 2
    return axis, float(size[axis]) if face % 2 else 0.0


def _uniform_int(rng: np.random.Generator, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


Rect = tuple[float, float, float, float]  # x0, y0, x1, y1 (floor) or u0, v0, u1, v1 (a face)


def _free(rect: Rect, taken: list[Rect], margin: float) -> bool:
    x0, y0, x1, y1 = rect
    return all(x1 + margin <= a0 or a1 + margin <= x0 or y1 + margin <= b0 or b1 + margin <= y0
               for a0, b0, a1, b1 in taken)


class _Layout:
    """A room being furnished: what is placed so far and the space it takes."""

    def __init__(self, rng: np.random.Generator, size: np.ndarray) -> None:
        self.rng, self.size = rng, size
        self.floor, self.wall = floor_material(rng), wall_material(rng)
        self.materials = [self.floor, self.wall, ceiling_material(rng)]
        self.boxes: list[Box] = []
        self.decals: list[Decal] = []
        self.taken: list[Rect] = []  # solid floor footprints
        self.tables: list[Rect] = []
        self.rugs: list[Rect] = []
        self.wall_spans: dict[int, list[tuple[float, float, float]]] = {k: [] for k in range(4)}  # u0, u1, top
        self.posters: dict[int, list[tuple[float, float]]] = {k: [] for k in range(4)}  # u0, u1
        self.obj = 0  # id of the object being placed; parts of one object share it

    def add_material(self, m: Material) -> int:
        self.materials.append(m)
        return len(self.materials) - 1

    def add_box(self, lo, hi, label: int, mat: int, support: tuple[int, float] = (2, 0.0)) -> None:
        self.boxes.append(Box(np.asarray(lo, float), np.asarray(hi, float), label, mat, self.obj, support))


def _floor_spot(lay: _Layout, w: float, d: float, clearance: float, taken: list[Rect],
                spacing: float) -> Rect | None:
    """A random ``w`` x ``d`` floor footprint ``clearance`` off the walls; None if within ``spacing`` of ``taken``."""
    lx, ly, _ = lay.size
    x0, y0 = lay.rng.uniform(clearance, lx - w - clearance), lay.rng.uniform(clearance, ly - d - clearance)
    rect = (x0, y0, x0 + w, y0 + d)
    return rect if _free(rect, taken, spacing) else None


# Each ``_try_*`` is one placement attempt of one object: it draws a pose, and adds the object and
# returns True if the pose is free. ``mat`` is the object's material, drawn once before the attempts.


def _try_cabinet(lay: _Layout, mat: int | None) -> bool:
    """Against a wall, in the wall's own material: only depth tells it apart."""
    rng, s, lz = lay.rng, SIZES["cabinet"], lay.size[2]
    face = int(rng.integers(4))
    axis, plane = face_plane(face, lay.size)
    length = lay.size[1 - axis]
    w, dep = rng.uniform(*s["width"]), rng.uniform(*s["depth"])
    h = rng.uniform(s["height"][0], min(s["height"][1], lz - s["ceiling"]))
    if w > length - s["fit"]:
        return False
    u0 = rng.uniform(s["clearance"], length - w - s["clearance"])
    lo, hi = np.zeros(3), np.array([0.0, 0.0, h])
    lo[1 - axis], hi[1 - axis] = u0, u0 + w
    lo[axis], hi[axis] = (plane - dep, plane) if face % 2 else (0.0, dep)
    rect = (lo[0], lo[1], hi[0], hi[1])
    if not _free(rect, lay.taken, s["spacing"]):
        return False
    lay.taken.append(rect)
    lay.wall_spans[face].append((u0, u0 + w, h))
    lay.add_box(lo, hi, CABINET, WALL_MATERIAL, (axis, plane))
    return True


def _try_table(lay: _Layout, mat: int | None) -> bool:
    """In the floor's own material: its top looks like floor, only depth tells it apart."""
    rng, s, (lx, ly, _) = lay.rng, SIZES["table"], lay.size
    c = s["clearance"]
    w, d, h = rng.uniform(*s["width"]), rng.uniform(*s["depth"]), rng.uniform(*s["height"])
    if rng.random() < 0.5:
        w, d = d, w
    if w > lx - 2 * c or d > ly - 2 * c:
        return False
    rect = _floor_spot(lay, w, d, c, lay.taken, s["spacing"])
    if rect is None:
        return False
    x0, y0 = rect[:2]
    lay.taken.append(rect)
    lay.tables.append(rect)
    t = rng.uniform(*s["top"])
    lay.add_box((x0, y0, h - t), (x0 + w, y0 + d, h), TABLE, FLOOR_MATERIAL)
    leg, inset = s["leg"], s["leg_inset"]
    for lxp in (x0 + inset, x0 + w - inset - leg):
        for lyp in (y0 + inset, y0 + d - inset - leg):
            lay.add_box((lxp, lyp, 0.0), (lxp + leg, lyp + leg, h - t), TABLE, FLOOR_MATERIAL)
    return True


def _try_chair(lay: _Layout, mat: int | None) -> bool:
    """Next to a table (or anywhere without one), its back turned away from the table."""
    rng, sz, (lx, ly, _) = lay.rng, SIZES["chair"], lay.size
    s = rng.uniform(*sz["width"])
    seat_h = rng.uniform(*sz["seat_height"])
    if lay.tables:
        tx0, ty0, tx1, ty1 = lay.tables[int(rng.integers(len(lay.tables)))]
        side, gap = int(rng.integers(4)), sz["table_gap"]
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
        a = sz["alone_clearance"]
        x0, y0 = rng.uniform(a, lx - s - a), rng.uniform(a, ly - s - a)
        back_axis, back_upper = int(rng.integers(2)), bool(rng.integers(2))
    rect = (x0, y0, x0 + s, y0 + s)
    c = sz["clearance"]
    if x0 < c or y0 < c or x0 + s > lx - c or y0 + s > ly - c:
        return False
    if not _free(rect, [r for r in lay.taken if r not in lay.tables], sz["spacing"]) \
            or not _free(rect, lay.tables, 0.0):
        return False
    lay.taken.append(rect)
    st, leg, back_t, back_h = sz["seat"], sz["leg"], sz["back"], rng.uniform(*sz["back_height"])
    lay.add_box((x0, y0, seat_h - st), (x0 + s, y0 + s, seat_h), CHAIR, mat)
    for lxp in (x0, x0 + s - leg):
        for lyp in (y0, y0 + s - leg):
            lay.add_box((lxp, lyp, 0.0), (lxp + leg, lyp + leg, seat_h - st), CHAIR, mat)
    blo = [x0, y0, seat_h]
    bhi = [x0 + s, y0 + s, seat_h + back_h]
    if back_upper:
        blo[back_axis] = bhi[back_axis] - back_t
    else:
        bhi[back_axis] = blo[back_axis] + back_t
    lay.add_box(blo, bhi, CHAIR, mat)
    return True


def _try_box(lay: _Layout, mat: int | None) -> bool:
    """A storage box on the floor in a saturated colour."""
    rng, s = lay.rng, SIZES["box"]
    w, d, h = rng.uniform(*s["width"]), rng.uniform(*s["depth"]), rng.uniform(*s["height"])
    rect = _floor_spot(lay, w, d, s["clearance"], lay.taken, s["spacing"])
    if rect is None:
        return False
    lay.taken.append(rect)
    lay.add_box((*rect[:2], 0.0), (*rect[2:], h), BOX, mat)
    return True


def _try_rug(lay: _Layout, mat: int | None) -> bool:
    """In the floor plane: only RGB tells it apart."""
    rng, s, (lx, ly, _) = lay.rng, SIZES["rug"], lay.size
    c = s["clearance"]
    w = rng.uniform(s["width"][0], min(s["width"][1], lx - 2 * c))
    d = rng.uniform(s["depth"][0], min(s["depth"][1], ly - 2 * c))
    rect = _floor_spot(lay, w, d, c, lay.rugs, s["spacing"])
    if rect is None:
        return False
    lay.rugs.append(rect)
    mat = lay.add_material(rug_material(rng, lay.floor, rect[:2], (w, d)))
    lay.decals.append(Decal(RUG, mat, FLOOR_FACE, rect, lay.obj))
    return True


def _try_poster(lay: _Layout, mat: int | None) -> bool:
    """In a wall plane, clear of cabinets: only RGB tells it apart."""
    rng, s, lz = lay.rng, SIZES["poster"], lay.size[2]
    c, gap = s["clearance"], s["cabinet_gap"]
    face = int(rng.integers(4))
    length = lay.size[1 - face // 2]
    w, h = rng.uniform(*s["width"]), rng.uniform(*s["height"])
    if w > length - s["fit"]:
        return False
    u0 = rng.uniform(c, length - w - c)
    zc = rng.uniform(*s["centre"])
    z0 = zc - h / 2
    z1 = min(zc + h / 2, lz - s["ceiling"])
    if any(u0 < b + gap and a < u0 + w + gap and z0 < top + gap for a, b, top in lay.wall_spans[face]):
        return False
    if any(u0 < b + s["spacing"] and a < u0 + w + s["spacing"] for a, b in lay.posters[face]):
        return False
    lay.posters[face].append((u0, u0 + w))
    mat = lay.add_material(poster_material(rng, lay.wall, (u0, z0), (w, z1 - z0)))
    lay.decals.append(Decal(POSTER, mat, face, (u0, z0, u0 + w, z1), lay.obj))
    return True


def _solid(allow_black: bool) -> Callable[[_Layout], int]:
    """A per-object material step: a solid colour that differs from the floor (chairs may be black)."""
    return lambda lay: lay.add_material(solid_material(lay.rng, lay.floor.colors[0], allow_black=allow_black))


def make_scene(rng: np.random.Generator, config: SceneConfig | None = None) -> Scene:
    """Draw a room with furniture, rugs and posters."""
    cfg = config or SceneConfig()
    lx, ly, lz = rng.uniform(*cfg.room_x), rng.uniform(*cfg.room_y), rng.uniform(*cfg.room_height)
    lay = _Layout(rng, np.array([lx, ly, lz]))
    # Wall objects first, so that posters can keep clear of cabinets; tables before chairs.
    # (count range, material drawn once per object or None, one placement attempt)
    kinds = ((cfg.num_cabinets, None, _try_cabinet), (cfg.num_tables, None, _try_table),
             (cfg.num_chairs, _solid(allow_black=True), _try_chair),
             (cfg.num_boxes, _solid(allow_black=False), _try_box),
             (cfg.num_rugs, None, _try_rug), (cfg.num_posters, None, _try_poster))
    for count, material, attempt in kinds:
        for _ in range(_uniform_int(rng, count)):
            mat = material(lay) if material else None
            if any(attempt(lay, mat) for _ in range(TRIES)):  # a crowded room may refuse the object
                lay.obj += 1
    az, el = rng.uniform(0, 2 * math.pi), math.radians(rng.uniform(*LIGHT["elevation_deg"]))
    light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    tint = 1.0 + rng.uniform(-LIGHT["tint"], LIGHT["tint"], 3)
    return Scene(lay.size, lay.materials, (0, 1, 2), lay.boxes, lay.decals, light,
                 rng.uniform(*LIGHT["ambient"]), rng.uniform(*LIGHT["diffuse"]), tint.astype(np.float32))
