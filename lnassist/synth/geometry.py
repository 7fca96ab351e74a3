"""Plane geometry on float (N, 2) polygons in base-level pixels: blobs, insets, tests, extents.

Only numpy (and cv2 for convex hulls), so layouts can be built on a bare GPU box.
"""

from __future__ import annotations

import cv2
import numpy as np

N_VERTICES = 160


def blob_radii(
    rng: np.random.Generator, theta: np.ndarray, rx: float, ry: float, angle: float, wobble: float
) -> np.ndarray:
    """Radius per direction of a rotated ellipse with low-order Fourier wobble (irregular outline)."""
    t = theta - angle
    base = rx * ry / np.sqrt((ry * np.cos(t)) ** 2 + (rx * np.sin(t)) ** 2)
    mod = np.ones_like(theta)
    for n in range(2, 7):
        mod += rng.uniform(0.0, wobble) / n**0.7 * np.cos(n * theta + rng.uniform(0, 2 * np.pi))
    return base * mod


def polygon_from_radii(centre: np.ndarray, theta: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return np.stack([centre[0] + radii * np.cos(theta), centre[1] + radii * np.sin(theta)], axis=1)


def blob(
    rng: np.random.Generator, centre, rx: float, ry: float, angle: float, wobble: float, n: int = N_VERTICES
) -> np.ndarray:
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return polygon_from_radii(np.asarray(centre, float), theta, blob_radii(rng, theta, rx, ry, angle, wobble))


def ellipse(centre, rx: float, ry: float, angle: float, n: int = 48) -> np.ndarray:
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    c, s = np.cos(angle), np.sin(angle)
    u, v = rx * np.cos(theta), ry * np.sin(theta)
    return np.stack([centre[0] + u * c - v * s, centre[1] + u * s + v * c], axis=1)


def points_in_polygon(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule, vectorised over points (N, 2) and edges."""
    points = np.asarray(points, float).reshape(-1, 2)
    x, y = points[:, 0:1], points[:, 1:2]
    x1, y1 = polygon[:, 0][None, :], polygon[:, 1][None, :]
    x2, y2 = np.roll(polygon[:, 0], -1)[None, :], np.roll(polygon[:, 1], -1)[None, :]
    crosses = (y1 > y) != (y2 > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        xint = x1 + (y - y1) * (x2 - x1) / (y2 - y1)
    return (np.count_nonzero(crosses & (x < xint), axis=1) % 2) == 1


def distance_to_boundary(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance (px) from each point to the closest polygon edge."""
    points = np.asarray(points, float).reshape(-1, 2)
    a = polygon[None, :, :]
    b = np.roll(polygon, -1, axis=0)[None, :, :]
    p = points[:, None, :]
    ab = b - a
    t = np.clip(((p - a) * ab).sum(-1) / np.maximum((ab * ab).sum(-1), 1e-12), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.sqrt(((p - closest) ** 2).sum(-1)).min(axis=1)


def inside_with_margin(
    points: np.ndarray, polygon: np.ndarray, margin_px: float, chunk: int = 4096
) -> np.ndarray:
    """Points inside ``polygon`` and at least ``margin_px`` from its boundary."""
    points = np.asarray(points, float).reshape(-1, 2)
    out = np.zeros(len(points), dtype=bool)
    for i in range(0, len(points), chunk):
        p = points[i : i + chunk]
        ok = points_in_polygon(p, polygon)
        if margin_px > 0 and ok.any():
            idx = np.flatnonzero(ok)
            ok[idx] = distance_to_boundary(p[idx], polygon) >= margin_px
        out[i : i + chunk] = ok
    return out


def polygon_inside(inner: np.ndarray, outer: np.ndarray, margin_px: float = 0.0) -> bool:
    """All vertices of ``inner`` inside ``outer`` (with margin); fine for smooth, densely sampled blobs."""
    return bool(inside_with_margin(inner, outer, margin_px).all())


def extent(points: np.ndarray) -> float:
    """Largest distance between two points of a set (max Feret diameter of its convex hull)."""
    points = np.asarray(points, float).reshape(-1, 2)
    if len(points) < 2:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    d = hull[:, None, :] - hull[None, :, :]
    return float(np.sqrt((d * d).sum(-1)).max())


def disks_hull(centres: np.ndarray, radius: float, n: int = 12) -> np.ndarray:
    """Convex hull polygon of disks of ``radius`` around ``centres`` (outline of a cell cluster)."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ring = np.stack([np.cos(theta), np.sin(theta)], axis=1) * radius
    pts = (np.asarray(centres, float)[:, None, :] + ring[None]).reshape(-1, 2)
    return cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)


def buffered_polyline(points: np.ndarray, width: float) -> np.ndarray:
    """Polygon of a smooth polyline thickened to ``width`` px (left side forward, right side back)."""
    p = np.asarray(points, float)
    tangent = np.gradient(p, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    taper = np.ones(len(p))
    taper[[0, -1]] = 0.35
    half = (width / 2.0) * taper[:, None]
    return np.concatenate([p + normal * half, (p - normal * half)[::-1]], axis=0)


def random_walk(
    rng: np.random.Generator, start, heading: float, length: float, step: float, turn: float
) -> np.ndarray:
    """Smoothly curving path (for sinuses, fibrous septa)."""
    n = max(int(length / step), 2)
    headings = heading + np.cumsum(rng.normal(0.0, turn, n))
    steps = np.stack([np.cos(headings), np.sin(headings)], axis=1) * step
    return np.asarray(start, float)[None, :] + np.concatenate([np.zeros((1, 2)), np.cumsum(steps, 0)[:-1]])


def inset_radial(centre: np.ndarray, polygon: np.ndarray, amount_px: float) -> np.ndarray:
    """Move each vertex of a star-shaped polygon ``amount_px`` towards ``centre``."""
    d = polygon - centre
    r = np.linalg.norm(d, axis=1, keepdims=True)
    return centre + d * np.clip((r - amount_px) / np.maximum(r, 1e-9), 0.0, None)
