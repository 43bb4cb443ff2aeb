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

Modules: ``config`` (classes, :class:`SceneConfig`), ``materials`` (textures), ``scene`` (room
layout, object sizes in ``SIZES``), ``camera`` (intrinsics, random views, trajectories), ``render``
(ray casting, sensor noise), ``frames`` (the generators) and ``writer`` (folder format, CLI).
"""
from __future__ import annotations

from .camera import Camera, camera_intrinsics, look_rotation, random_camera, trajectory_cameras
from .config import (BOX, CABINET, CEILING, CHAIR, CLASS_CUES, CLASS_NAMES, FLOOR, IGNORE_INDEX, PALETTE,
                     POSTER, RUG, TABLE, WALL, SceneConfig)
from .frames import render_frame, trajectory
from .materials import Material
from .render import Rendered, render_scene
from .scene import LIGHT, SIZES, Box, Decal, Scene, make_scene
from .writer import SPLIT_STREAMS, depth_to_mm, frame_rng, main, write_folder_dataset

__all__ = [
    "BOX", "CABINET", "CEILING", "CHAIR", "CLASS_CUES", "CLASS_NAMES", "FLOOR", "IGNORE_INDEX", "LIGHT",
    "PALETTE", "POSTER", "RUG", "SIZES", "SPLIT_STREAMS", "TABLE", "WALL", "Box", "Camera", "Decal",
    "Material", "Rendered", "Scene", "SceneConfig", "camera_intrinsics", "depth_to_mm", "frame_rng",
    "look_rotation", "main", "make_scene", "random_camera", "render_frame", "render_scene", "trajectory",
    "trajectory_cameras", "write_folder_dataset",
]
