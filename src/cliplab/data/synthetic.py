"""A built-in data source that needs no download: coloured shapes and captions that say
what and where they are ("a small red circle in the top left corner").

Each sample is a pure function of (split, index): the image is drawn on demand, so the
source has random access, costs no disk, and a held-out split never overlaps training.
Captions are drawn from several templates with the per-sample, per-epoch generator, so a
model sees fresh wordings of the same scene each epoch.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image, ImageDraw

from cliplab.data.stream import RawSample, stable_seed

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 60, 180),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
POSITIONS = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
SIZES = {"small": 0.16, "large": 0.3}
TEMPLATES = (
    "a {size} {color} {shape} in the {position}",
    "a {color} {shape} in the {position}",
    "{size} {color} {shape}, {position}",
    "a picture of a {size} {color} {shape} at the {position}",
    "there is a {color} {shape} in the {position} of the image",
    "{color} {shape} ({size}) in the {position}",
)


@dataclass(frozen=True)
class Scene:
    color: str
    shape: str
    position: str
    size: str
    background: tuple[int, int, int]

    def caption(self, rng: random.Random) -> str:
        template = rng.choice(TEMPLATES)
        return template.format(
            color=self.color, shape=self.shape, position=self.position, size=self.size
        )


def _scene(split_seed: int, index: int) -> Scene:
    rng = random.Random(stable_seed("synthetic-scene", split_seed, index))
    color = rng.choice(list(COLORS))
    # a grey-ish background that never hides the shape
    background = tuple(int(v) for v in (rng.randint(90, 170),) * 3)
    return Scene(
        color, rng.choice(SHAPES), rng.choice(list(POSITIONS)), rng.choice(list(SIZES)), background
    )


def draw(scene: Scene, image_size: int = 64, jitter: random.Random | None = None) -> Image.Image:
    """Render a scene; ``jitter`` moves the shape a little (a different image each epoch)."""
    s = image_size
    image = Image.new("RGB", (s, s), scene.background)
    d = ImageDraw.Draw(image)
    cx, cy = POSITIONS[scene.position]
    dx, dy = (jitter.uniform(-0.06, 0.06), jitter.uniform(-0.06, 0.06)) if jitter else (0.0, 0.0)
    cx, cy, r = (cx + dx) * s, (cy + dy) * s, SIZES[scene.size] * s / 2 * 1.6
    fill = COLORS[scene.color]
    box = (cx - r, cy - r, cx + r, cy + r)
    if scene.shape == "circle":
        d.ellipse(box, fill=fill)
    elif scene.shape == "square":
        d.rectangle((cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85), fill=fill)
    elif scene.shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=fill)
    elif scene.shape == "diamond":
        d.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif scene.shape == "cross":
        w = r * 0.35
        d.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        d.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif scene.shape == "ring":
        d.ellipse(box, outline=fill, width=max(2, int(r * 0.35)))
    return image


class SyntheticSource:
    """``num_samples`` procedural scenes; ``split`` ("train", "val"...) picks a disjoint set."""

    def __init__(
        self,
        num_samples: int = 20000,
        split: str = "train",
        image_size: int = 64,
        name: str = "synthetic",
    ) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.name = name
        self.split = split
        self.image_size = image_size
        self._num_samples = num_samples
        self._split_seed = stable_seed("synthetic-split", split)

    def num_samples(self) -> int:
        return self._num_samples

    def scene(self, index: int) -> Scene:
        return _scene(self._split_seed, index)

    def iter_raw(self, seed: int, epoch: int, stream: int, num_streams: int) -> Iterator[RawSample]:
        n = self._num_samples
        for cycle in range(1 << 62):
            order = list(range(stream, n, num_streams)) or list(range(n))
            random.Random(stable_seed(seed, epoch, stream, cycle, self.name)).shuffle(order)
            for index in order:
                yield RawSample(
                    key=str(index), members={"index": str(index).encode()}, source=self.name
                )

    def decode(self, sample: RawSample, rng: random.Random) -> tuple[Image.Image, str]:
        scene = self.scene(int(sample.members["index"]))
        return draw(scene, self.image_size, jitter=rng), scene.caption(rng)

    def pairs(self, count: int, rng_seed: int = 0) -> list[tuple[Image.Image, str]]:
        """The first ``count`` (image, caption) pairs without jitter, for evaluation."""
        rng = random.Random(rng_seed)
        return [
            (draw(self.scene(i), self.image_size), self.scene(i).caption(rng)) for i in range(count)
        ]
