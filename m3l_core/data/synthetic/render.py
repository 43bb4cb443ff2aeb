"""Ray casting a scene into RGB, sensor-like depth and labels."""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .camera import Camera
from .config import CEILING, FLOOR, WALL, SceneConfig
from .materials import albedo
from .scene import N_ROOM_FACES, Scene, face_plane


@dataclass
class Rendered:
    """Everything a render knows; ``render_frame`` keeps only the sample fields."""

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
            out[N_ROOM_FACES + k] = b.support
        size = self.scene.size
        for k, d in enumerate(self.scene.decals):
            out[N_ROOM_FACES + len(self.scene.boxes) + k] = face_plane(d.face, size)
        return out


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
            inst[r0:r1, c0:c1][hit] = N_ROOM_FACES + k
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
        inst[m] = N_ROOM_FACES + n_boxes + k

    f_m, w_m, c_m = scene.room_materials
    lab_lut = np.array([WALL] * 4 + [FLOOR, CEILING] + [b.label for b in scene.boxes]
                       + [d.label for d in scene.decals], np.uint8)
    mat_lut = np.array([w_m] * 4 + [f_m, c_m] + [b.material for b in scene.boxes]
                       + [d.material for d in scene.decals], np.int32)
    label = lab_lut[inst]
    mat = mat_lut[inst]

    # Albedo per material, Lambert shading with one light plus ambient.
    flat_mat, flat_u, flat_v = mat.ravel(), u.ravel(), v.ravel()
    colour = np.empty((flat_mat.size, 3), np.float32)
    order = np.argsort(flat_mat, kind="stable")
    bounds = np.searchsorted(flat_mat[order], np.arange(len(scene.materials) + 1))
    for k, material in enumerate(scene.materials):
        idx = order[bounds[k]:bounds[k + 1]]
        if idx.size:
            colour[idx] = albedo(material, flat_u[idx], flat_v[idx])
    n_dot_l = sign * scene.light.astype(np.float32)[axis.astype(np.intp)]
    shade = scene.ambient + scene.diffuse * np.maximum(n_dot_l, 0)
    rgb = colour.reshape(height, width, 3) * (shade[..., None] * (255.0 * exposure) * scene.tint)
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

