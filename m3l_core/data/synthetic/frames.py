"""The public generators: i.i.d. frames and frames along a camera trajectory."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from .camera import random_camera, trajectory_cameras
from .config import SceneConfig
from .render import render_scene
from .scene import make_scene


def check_size(height: int, width: int) -> None:
    """Refuse images too small to hold a scene (``ValueError`` naming the size)."""
    if int(height) < 8 or int(width) < 8:
        raise ValueError(f"image size must be at least 8x8, got height={height} width={width}")


def render_frame(rng: np.random.Generator, height: int, width: int,
                 config: SceneConfig | None = None) -> dict:
    """One i.i.d. sample: a fresh random scene seen from a random camera."""
    check_size(height, width)
    cfg = config or SceneConfig()
    scene = make_scene(rng, cfg)
    cam = random_camera(rng, scene, height, width, cfg)
    r = render_scene(scene, cam, height, width, rng, cfg, exposure=rng.uniform(*cfg.exposure))
    return dict(rgb=r.rgb, depth=r.depth, label=r.label, name="")


def trajectory(seed: int, num_frames: int, height: int, width: int,
               config: SceneConfig | None = None) -> Iterator[dict]:
    """``num_frames`` views of ONE scene along a smooth camera path (``config.traj_fps`` apart)."""
    check_size(height, width)
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    cfg = config or SceneConfig()
    rng = np.random.default_rng(seed)
    scene = make_scene(rng, cfg)
    cams = trajectory_cameras(rng, scene, num_frames, height, width, cfg)
    for i, cam in enumerate(cams):
        r = render_scene(scene, cam, height, width, rng, cfg)
        yield dict(rgb=r.rgb, depth=r.depth, label=r.label, name=f"{i:06d}")

