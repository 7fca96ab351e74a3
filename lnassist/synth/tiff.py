"""Streaming writer of tiled, JPEG-compressed pyramidal TIFFs that openslide and large_image both read.

Level 0 is produced tile row by tile row from a callback and never held whole; each finished tile row
is encoded and downsampled 2x into the next level's row buffer, so reduced levels exist only as
JPEG bytes plus one tile row of pixels per level (bounded memory). Reduced levels are flagged
subfiletype=1. Resolution is written twice: an Aperio-style ImageDescription (AppMag, MPP; read by
openslide's aperio driver and large_image) and X/YResolution in centimetres.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import imagecodecs
import numpy as np
import tifffile

from lnassist.synth import SynthError

COARSEST_MPP = 7.36  # the paper's LN-detector input (1.25x)
DEFAULT_TILE_PX = 512
DEFAULT_QUALITY = 85

TileFn = Callable[[int, int, int, int], np.ndarray]  # (x0, y0, w, h) -> uint8 RGB (h, w, 3)


def level_shapes(
    width: int, height: int, mpp: float, coarsest_mpp: float = COARSEST_MPP
) -> list[tuple[int, int]]:
    """(width, height) per level, halving until the level's mpp is >= ``coarsest_mpp``."""
    shapes = [(width, height)]
    while mpp * 2 ** (len(shapes) - 1) < coarsest_mpp * (1 - 1e-9) and min(shapes[-1]) > 1:
        w, h = shapes[-1]
        shapes.append(((w + 1) // 2, (h + 1) // 2))
    return shapes


def aperio_description(
    width: int,
    height: int,
    tile_px: int,
    quality: int,
    mpp: float,
    magnification: float,
    level_shape: tuple[int, int] | None = None,
) -> str:
    head = "Aperio Image Library v12.0.0 (lnassist synthetic)\r\n"
    if level_shape is None:
        geom = f"{width}x{height} [0,0 {width}x{height}] ({tile_px}x{tile_px}) JPEG/RGB Q={quality}"
    else:
        lw, lh = level_shape
        geom = f"{width}x{height} -> {lw}x{lh} - ({tile_px}x{tile_px}) JPEG/RGB Q={quality}"
    mag = f"{magnification:g}"
    return f"{head}{geom}|AppMag = {mag}|MPP = {mpp:.4f}|Source = lnassist.synth"


def encode_jpeg(tile: np.ndarray, quality: int) -> bytes:
    """JPEG bytes as tifffile would write them for photometric YCbCr, 4:2:0 (what the tags promise)."""
    return bytes(
        imagecodecs.jpeg_encode(
            tile, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )
    )


def _pad_tile(tile: np.ndarray, tile_px: int) -> np.ndarray:
    h, w = tile.shape[:2]
    if h == tile_px and w == tile_px:
        return tile
    out = np.full((tile_px, tile_px, 3), 255, dtype=np.uint8)
    out[:h, :w] = tile
    return out


def _downsample2(block: np.ndarray) -> np.ndarray:
    """2x2 box mean; odd edges replicate their last row/column (what ceil-size levels need)."""
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        block = cv2.copyMakeBorder(block, 0, h % 2, 0, w % 2, cv2.BORDER_REPLICATE)
    return cv2.resize(block, (block.shape[1] // 2, block.shape[0] // 2), interpolation=cv2.INTER_AREA)


@dataclass
class _Level:
    """Row buffer and encoded tiles of one reduced level."""

    width: int
    height: int
    tile_px: int
    quality: int
    pool: ThreadPoolExecutor
    next: _Level | None = None
    rows: list[np.ndarray] = field(default_factory=list)
    n_buffered: int = 0
    n_emitted: int = 0
    tiles: list[bytes] = field(default_factory=list)

    def push(self, strip: np.ndarray) -> None:
        self.rows.append(strip)
        self.n_buffered += strip.shape[0]
        while self.n_buffered >= self.tile_px or (
            self.n_buffered and self.n_emitted + self.n_buffered >= self.height
        ):
            self._emit()

    def _emit(self) -> None:
        buf = np.concatenate(self.rows, axis=0) if len(self.rows) > 1 else self.rows[0]
        n = min(self.tile_px, buf.shape[0], self.height - self.n_emitted)
        block, rest = buf[:n], buf[n:]
        self.rows = [rest] if rest.shape[0] else []
        self.n_buffered = rest.shape[0]
        self.n_emitted += n
        t = self.tile_px
        jobs = [block[:, x : x + t] for x in range(0, self.width, t)]
        self.tiles += list(self.pool.map(lambda a: encode_jpeg(_pad_tile(a, t), self.quality), jobs))
        if self.next is not None:
            self.next.push(_downsample2(block))


def write_pyramid(
    path: str | Path,
    width: int,
    height: int,
    tile_fn: TileFn,
    mpp: float,
    magnification: float,
    tile_px: int = DEFAULT_TILE_PX,
    quality: int = DEFAULT_QUALITY,
    workers: int = 2,
    coarsest_mpp: float = COARSEST_MPP,
) -> list[tuple[int, int]]:
    """Write the pyramid; ``tile_fn`` is called once per level-0 tile (possibly from several threads).

    Returns the (width, height) of every level written.
    """
    if width <= 0 or height <= 0:
        raise SynthError(f"image size must be positive, got {width} x {height}")
    if tile_px <= 0 or tile_px % 16:
        raise SynthError(f"tile size must be a positive multiple of 16, got {tile_px}")
    if not 1 <= quality <= 100:
        raise SynthError(f"JPEG quality must be within 1..100, got {quality}")
    if not mpp > 0:
        raise SynthError(f"mpp must be positive, got {mpp}")
    shapes = level_shapes(width, height, mpp, coarsest_mpp)
    bigtiff = width * height * 3 > 2**31
    with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
        levels = [_Level(w, h, tile_px, quality, pool) for w, h in shapes[1:]]
        for a, b in zip(levels, levels[1:], strict=False):
            a.next = b

        def render_encode(x0: int, y0: int) -> tuple[np.ndarray, bytes]:
            w, h = min(tile_px, width - x0), min(tile_px, height - y0)
            tile = np.ascontiguousarray(tile_fn(x0, y0, w, h))
            if tile.shape != (h, w, 3) or tile.dtype != np.uint8:
                raise SynthError(f"tile_fn returned {tile.shape} {tile.dtype}, expected ({h}, {w}, 3) uint8")
            return tile, encode_jpeg(_pad_tile(tile, tile_px), quality)

        def submit_row(y0: int) -> list[Future]:
            return [pool.submit(render_encode, x0, y0) for x0 in range(0, width, tile_px)]

        def level0_tiles() -> Iterator[bytes]:
            row_starts = list(range(0, height, tile_px))
            pending = submit_row(row_starts[0])
            for i, _y0 in enumerate(row_starts):
                current = pending
                if i + 1 < len(row_starts):  # keep the workers busy while this row is consumed
                    pending = submit_row(row_starts[i + 1])
                results = [f.result() for f in current]
                if levels:  # before yielding: tifffile stops pulling after the last tile
                    levels[0].push(_downsample2(np.concatenate([t for t, _ in results], axis=1)))
                yield from (data for _, data in results)

        res = lambda m: (1e4 / m, 1e4 / m)  # pixels per centimetre
        common = dict(
            dtype=np.uint8,
            tile=(tile_px, tile_px),
            compression="jpeg",
            photometric="rgb",
            subsampling=(2, 2),
            resolutionunit="CENTIMETER",
            metadata=None,
            software="lnassist",
        )
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            tw.write(
                level0_tiles(),
                shape=(height, width, 3),
                resolution=res(mpp),
                description=aperio_description(width, height, tile_px, quality, mpp, magnification),
                **common,
            )
            for k, lvl in enumerate(levels, start=1):
                expected = math.ceil(lvl.width / tile_px) * math.ceil(lvl.height / tile_px)
                if len(lvl.tiles) != expected:
                    raise SynthError(f"internal: level {k} has {len(lvl.tiles)} tiles, expected {expected}")
                tw.write(
                    iter(lvl.tiles),
                    shape=(lvl.height, lvl.width, 3),
                    subfiletype=1,
                    resolution=res(mpp * width / lvl.width),
                    description=aperio_description(
                        width, height, tile_px, quality, mpp, magnification, (lvl.width, lvl.height)
                    ),
                    **common,
                )
    return shapes
