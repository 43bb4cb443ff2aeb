"""Procedural materials: per-scene colour draws and world-anchored textures (planks, tiles, rugs ...)."""
from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np


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


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), np.float32)


def floor_material(rng: np.random.Generator) -> Material:
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


def wall_material(rng: np.random.Generator) -> Material:
    base = _hsv(rng.random(), rng.uniform(0.0, 0.18), rng.uniform(0.6, 0.92))
    seed = int(rng.integers(2**31))
    if rng.random() < 0.4:
        return Material("stripes", base[None], seed, rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.12))
    return Material("noise", base[None], seed, rng.uniform(0.3, 1.0), rng.uniform(0.04, 0.1))


def ceiling_material(rng: np.random.Generator) -> Material:
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


def rug_material(rng: np.random.Generator, floor: Material, origin, size) -> Material:
    c0 = _distinct_saturated(rng, floor.colors[0], (0.45, 0.9), (0.35, 0.85))
    c1 = _distinct_saturated(rng, floor.colors[0], (0.45, 0.9), (0.3, 0.8))
    c2 = np.clip(c0 * rng.uniform(0.6, 0.8) + rng.uniform(0.0, 0.15), 0, 1)
    return Material("rug", np.stack([c0, c1, c2]).astype(np.float32), int(rng.integers(2**31)),
                    rng.uniform(0.08, 0.3), rng.uniform(0.1, 0.2), aux=rng.uniform(0.06, 0.15),
                    swap=bool(rng.integers(2)), origin=origin, size=size)


def poster_material(rng: np.random.Generator, wall: Material, origin, size) -> Material:
    frame = _hsv(rng.random(), rng.uniform(0.0, 0.5), rng.uniform(0.05, 0.3))
    blocks = [_distinct_saturated(rng, wall.colors[0], (0.55, 1.0), (0.45, 1.0)) for _ in range(4)]
    grid = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    return Material("poster", np.stack([frame, *blocks]).astype(np.float32), int(rng.integers(2**31)),
                    0.0, 0.05, aux=rng.uniform(0.02, 0.05), origin=origin, size=size, grid=grid)


def solid_material(rng: np.random.Generator, avoid: np.ndarray, allow_black: bool) -> Material:
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


def albedo(m: Material, u: np.ndarray, v: np.ndarray) -> np.ndarray:
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

