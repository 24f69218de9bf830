"""The picture of an evaluation: for every photo, the same crop of each method's result and of the HR image,
side by side, enlarged without interpolation so that pixels stay pixels (`flowsr eval sr --comparison`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from flowsr.core import images

from .evaluate import gradient_energy

LABEL_HEIGHT = 16
GAP = 4


def detailed_window(hr: np.ndarray, size: int) -> tuple[int, int]:
    """(top, left) of the size x size window of `hr` with the most fine detail, on a grid of half-window steps."""
    height, width = hr.shape[:2]
    size_h, size_w = min(size, height), min(size, width)
    candidates = [
        (top, left)
        for top in range(0, height - size_h + 1, max(1, size_h // 2))
        for left in range(0, width - size_w + 1, max(1, size_w // 2))
    ]
    return max(candidates, key=lambda c: gradient_energy(hr[c[0] : c[0] + size_h, c[1] : c[1] + size_w]))


class ComparisonSheet:
    """Rows of crops: each method in the order given, then HR; column labels on top."""

    def __init__(self, crop: int = 96, zoom: int = 2):
        self.crop, self.zoom = crop, zoom
        self.columns: list[str] = []
        self.rows: list[list[np.ndarray]] = []

    def add(self, hr: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
        """One photo: `outputs` maps a method name to its uint8 HWC result, the size of `hr`."""
        columns = [*outputs, "HR"]
        if self.columns and columns != self.columns:
            raise ValueError(f"every row needs the methods {self.columns}, got {columns}")
        self.columns = columns
        top, left = detailed_window(hr, self.crop)
        window = (slice(top, top + self.crop), slice(left, left + self.crop))
        tiles = [result[window] for result in (*outputs.values(), hr)]
        self.rows.append([np.kron(tile, np.ones((self.zoom, self.zoom, 1), dtype=np.uint8)) for tile in tiles])

    def picture(self) -> np.ndarray:
        if not self.rows:
            raise ValueError("no photos were added to the comparison")
        tile_h = max(tile.shape[0] for row in self.rows for tile in row)
        tile_w = max(tile.shape[1] for row in self.rows for tile in row)
        count = len(self.columns)
        sheet = Image.new(
            "RGB", (count * (tile_w + GAP) - GAP, LABEL_HEIGHT + len(self.rows) * (tile_h + GAP) - GAP), "white"
        )
        draw = ImageDraw.Draw(sheet)
        for column, label in enumerate(self.columns):
            draw.text((column * (tile_w + GAP) + 2, 2), label, fill="black")
        for row_index, row in enumerate(self.rows):
            for column, tile in enumerate(row):
                sheet.paste(Image.fromarray(tile), (column * (tile_w + GAP), LABEL_HEIGHT + row_index * (tile_h + GAP)))
        return np.asarray(sheet)

    def save(self, path: str | Path) -> None:
        """Written atomically, like every flowsr output."""
        images.write_image(path, images.Picture(rgb=self.picture()))
