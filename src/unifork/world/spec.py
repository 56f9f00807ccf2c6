"""The vocabulary of the shapes world and the structured spec of a scene (what captions and the detector talk about)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SHAPES = ("circle", "square", "triangle", "cross")
# Fixed RGB values: the detector classifies pixels by the nearest of these (or the white background,
# unifork.images.BACKGROUND, the one transparency of user images lands on).
COLORS = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 170),
    "orange": (245, 120, 20),
}
SIZES = ("small", "large")
MAX_OBJECTS = 4


@dataclass(frozen=True)
class WorldConfig:
    """Geometry of the canvas. Extents are odd so every shape is symmetric about its integer center."""

    canvas: int = 64
    small_extent: int = 11
    large_extent: int = 19
    gap: int = 4  # min free pixels between two objects' boxes, so blurred shapes stay separate components
    margin: int = 2  # min free pixels between an object and the canvas border

    def extent(self, size: str) -> int:
        return self.small_extent if size == "small" else self.large_extent


@dataclass(frozen=True)
class SceneObject:
    shape: str
    color: str
    size: str
    cx: int  # center column (x grows to the right)
    cy: int  # center row (y grows downwards)

    def bbox(self, cfg: WorldConfig = WorldConfig()) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), inclusive pixel bounds."""
        r = cfg.extent(self.size) // 2
        return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)

    def to_dict(self, cfg: WorldConfig = WorldConfig()) -> dict:
        return {**asdict(self), "bbox": list(self.bbox(cfg))}


@dataclass(frozen=True)
class Scene:
    objects: tuple[SceneObject, ...]
    config: WorldConfig = field(default=WorldConfig())

    def to_dict(self) -> dict:
        return {"canvas": self.config.canvas, "objects": [o.to_dict(self.config) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict, config: WorldConfig = WorldConfig()) -> "Scene":
        keys = ("shape", "color", "size", "cx", "cy")
        return cls(tuple(SceneObject(**{k: o[k] for k in keys}) for o in d["objects"]), config)
