"""Pinhole cameras: intrinsics, orientation, free random views and smooth trajectories."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config import BOX, CABINET, SceneConfig
from .scene import Box, Scene, face_plane


@dataclass
class Camera:
    """A pinhole camera in the room."""

    position: np.ndarray  # (3,) world, z up
    rotation: np.ndarray  # (3, 3) camera-to-world; columns are the camera x (right), y (down), z (forward)
    K: np.ndarray  # (3, 3) pinhole intrinsics


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
        axis, plane = face_plane(d.face, scene.size)
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

