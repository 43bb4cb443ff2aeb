"""Classes of the synthetic scenes and the ranges scenes, cameras and sensors are drawn from."""
from __future__ import annotations

from dataclasses import dataclass, fields

from m3l_core.vocab import IGNORE_INDEX  # noqa: F401 - re-exported by the package

# One row per class, the id is the row. The cue says which modality tells the class apart from what
# surrounds it: "both", or one of vocab.MODALITIES ("rgb", "depth").
_CLASS_TABLE: tuple[tuple[str, tuple[int, int, int], str], ...] = (
    ("floor", (128, 64, 128), "both"),  # purple
    ("wall", (102, 102, 156), "both"),  # slate blue
    ("ceiling", (200, 200, 200), "both"),  # light grey
    ("table", (255, 127, 14), "depth"),  # orange
    ("cabinet", (44, 160, 44), "depth"),  # green
    ("chair", (214, 39, 40), "both"),  # red
    ("box", (23, 190, 207), "both"),  # cyan
    ("rug", (255, 221, 0), "rgb"),  # yellow
    ("poster", (227, 119, 194), "rgb"),  # pink
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _CLASS_TABLE)
PALETTE: tuple[tuple[int, int, int], ...] = tuple(color for _, color, _ in _CLASS_TABLE)
CLASS_CUES: dict[str, str] = {name: cue for name, _, cue in _CLASS_TABLE}
FLOOR, WALL, CEILING, TABLE, CABINET, CHAIR, BOX, RUG, POSTER = range(len(CLASS_NAMES))


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

