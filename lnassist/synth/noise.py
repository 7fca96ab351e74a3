"""Coordinate-hashed randomness and smooth fields that are identical whichever window asks for them.

Every value is a pure function of (seed, stream, global integer coordinates), so a pixel, a lattice
point or a grid cell gets the same value whether it is rendered in one big window or in many tiles:
this is what keeps tile seams invisible without storing anything per pixel.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    h = h ^ (h >> np.uint64(30))
    h = h * _M1
    h = h ^ (h >> np.uint64(27))
    h = h * _M2
    return h ^ (h >> np.uint64(31))


def hash_u64(seed: int, stream: int, *keys: np.ndarray) -> np.ndarray:
    """Hash of (seed, stream, keys...) broadcast over the integer key arrays."""
    with np.errstate(over="ignore"):
        h = _mix(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) * _GOLDEN + np.uint64(stream))
        for k in keys:
            k64 = np.asarray(k, dtype=np.int64).view(np.uint64)
            h = _mix(h ^ (k64 + _GOLDEN + (h << np.uint64(6)) + (h >> np.uint64(2))))
    return h


def uniform(seed: int, stream: int, *keys: np.ndarray) -> np.ndarray:
    """Uniform float64 in [0, 1) per key tuple."""
    return (hash_u64(seed, stream, *keys) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _axis_weights(start: int, n: int, spacing: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice index (relative to the first needed lattice point) and smoothstep weight per pixel."""
    coords = np.arange(start, start + n, dtype=np.int64)
    cell = np.floor_divide(coords, spacing)
    frac = (coords - cell * spacing).astype(np.float32) / np.float32(spacing)
    weight = frac * frac * (np.float32(3.0) - np.float32(2.0) * frac)
    first = int(cell[0])
    return (cell - first).astype(np.intp), weight, first


def lattice_upsample(x0: int, y0: int, w: int, h: int, spacing: int, lattice_fn) -> np.ndarray:
    """Smoothly interpolate values defined on the global lattice ``spacing * (i, j)`` onto a window.

    ``lattice_fn(ix, iy)`` gets global lattice indices (int64 arrays broadcast to (ny, nx)) and returns
    float32 values there. Interpolation is separable (x then y) and uses only global coordinates, so
    windows agree exactly where they overlap.
    """
    ix, wx, fx = _axis_weights(x0, w, spacing)
    iy, wy, fy = _axis_weights(y0, h, spacing)
    nx = int(ix[-1]) + 2
    ny = int(iy[-1]) + 2
    gx = np.arange(fx, fx + nx, dtype=np.int64)[None, :]
    gy = np.arange(fy, fy + ny, dtype=np.int64)[:, None]
    lat = np.asarray(lattice_fn(gx, gy), dtype=np.float32)
    rows = lat[:, ix] * (np.float32(1.0) - wx) + lat[:, ix + 1] * wx
    return rows[iy] * (np.float32(1.0) - wy)[:, None] + rows[iy + 1] * wy[:, None]


def value_noise(seed: int, stream: int, x0: int, y0: int, w: int, h: int, spacing: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with feature size ``spacing`` px."""
    return lattice_upsample(
        x0,
        y0,
        w,
        h,
        spacing,
        lambda gx, gy: (uniform(seed, stream, gx, gy) * 2.0 - 1.0).astype(np.float32),
    )


def fractal_noise(
    seed: int, stream: int, x0: int, y0: int, w: int, h: int, spacing: int, octaves: int
) -> np.ndarray:
    """Sum of value-noise octaves (spacing halves, amplitude halves), roughly in [-1, 1]."""
    total = np.zeros((h, w), dtype=np.float32)
    amplitude, norm = 1.0, 0.0
    for octave in range(octaves):
        step = max(spacing >> octave, 2)
        total += np.float32(amplitude) * value_noise(seed, stream * 16 + octave, x0, y0, w, h, step)
        norm += amplitude
        amplitude *= 0.5
    return total / np.float32(norm)


def worley_edge_distance(
    seed: int, stream: int, gx: np.ndarray, gy: np.ndarray, spacing: int, cell_px: int, jitter: float = 0.8
) -> np.ndarray:
    """F2 - F1 (px) of a jittered-grid Worley pattern at points ``spacing * (gx, gy)``.

    Small values lie on the borders between cells (adipocyte membranes); cells are ``cell_px`` wide.
    """
    px = (gx * spacing).astype(np.float64)
    py = (gy * spacing).astype(np.float64)
    cx = np.floor_divide(gx * spacing, cell_px)
    cy = np.floor_divide(gy * spacing, cell_px)
    big = np.float64(1e18)
    f1 = np.full(np.broadcast_shapes(px.shape, py.shape), big)
    f2 = f1.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            kx, ky = cx + dx, cy + dy
            sx = (kx + 0.5 + (uniform(seed, stream, kx, ky) - 0.5) * jitter) * cell_px
            sy = (ky + 0.5 + (uniform(seed, stream + 1, kx, ky) - 0.5) * jitter) * cell_px
            d = np.hypot(px - sx, py - sy)
            f2 = np.minimum(f2, np.maximum(f1, d))
            f1 = np.minimum(f1, d)
    return (f2 - f1).astype(np.float32)


def periodic_texture(seed: int, period: int, sigma: float) -> np.ndarray:
    """A zero-mean, unit-std texture of period ``period`` that tiles seamlessly, stored tiled 2x2 so that
    any window up to ``period`` wide is a plain slice (see ``texture_window``)."""
    rng = np.random.default_rng(seed)
    white = rng.standard_normal((period, period))
    freq = np.fft.fftfreq(period)
    kernel = np.exp(-2.0 * (np.pi * sigma) ** 2 * (freq[:, None] ** 2 + freq[None, :] ** 2))
    tex = np.real(np.fft.ifft2(np.fft.fft2(white) * kernel))
    tex = (tex - tex.mean()) / tex.std()
    return np.tile(tex.astype(np.float32), (2, 2))


def texture_window(tex: np.ndarray, x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """The window of the infinitely tiled texture at global (x0, y0); ``tex`` is the 2x2 tiling of it."""
    period_y, period_x = tex.shape[0] // 2, tex.shape[1] // 2
    if h <= period_y and w <= period_x:
        oy, ox = y0 % period_y, x0 % period_x
        return tex[oy : oy + h, ox : ox + w]
    ys = np.arange(y0, y0 + h) % period_y
    xs = np.arange(x0, x0 + w) % period_x
    return tex[ys[:, None], xs[None, :]]
