"""Lymph-node outlines of the "scanned" look: lobes, a hilum notch, an irregular capsule, and nodes
moulded against their neighbours.

An outline is star-shaped around the node centre (a radius per direction of ``geometry.N_VERTICES``
directions), so every part of the layout that walks along radii (sinuses, follicles, deposits) keeps
working; only its radii are richer than the near-ellipses of the "vector" look.
"""

from __future__ import annotations

import numpy as np

from lnassist.synth import geometry


def _angular_gap(theta: np.ndarray, at: float) -> np.ndarray:
    return np.angle(np.exp(1j * (theta - at)))


def lobulated_radii(
    rng: np.random.Generator, theta: np.ndarray, radius_px: float, hilum: float, mpp: float, max_px: float
) -> np.ndarray:
    """Radius per direction: a wobbly ellipse with bulging lobes, a notch at ``hilum`` and a bumpy capsule,
    scaled down where needed so that no radius exceeds ``max_px`` (the room the node was placed in)."""
    aspect = rng.uniform(1.0, 1.5)
    radii = geometry.blob_radii(
        rng, theta, radius_px * np.sqrt(aspect), radius_px / np.sqrt(aspect), rng.uniform(0, np.pi), 0.07
    )
    # Lobes: broad bulges whose meeting points read as clefts once the hull is taken (solidity < 1).
    lobes = np.zeros_like(theta)
    for at in rng.uniform(0, 2 * np.pi, int(rng.integers(2, 6))):
        width = rng.uniform(0.2, 0.45)
        lobes += rng.uniform(0.1, 0.3) * np.exp(-0.5 * (_angular_gap(theta, at) / width) ** 2)
    # The hilum: a notch with a flattish floor, wide enough that the capsule lines its walls.
    width = rng.uniform(0.18, 0.32)
    notch = np.exp(-0.5 * (np.abs(_angular_gap(theta, hilum)) / width) ** 3)
    mean_px = radii.mean()
    radii = radii * (1.0 + lobes) * (1.0 - rng.uniform(0.2, 0.45) * notch)
    radii *= mean_px / radii.mean()  # the node keeps the size its category was drawn for
    # Capsule irregularity: small bumps of a few um along the outline (1/n falloff, many harmonics).
    bumps = np.zeros_like(theta)
    for n in range(8, 48):
        bumps += np.cos(n * theta + rng.uniform(0, 2 * np.pi)) * rng.normal() / n
    bumps *= rng.uniform(4.0, 12.0) / mpp / max(np.abs(bumps).max(), 1e-9)
    radii = radii + bumps
    return radii * min(1.0, max_px / radii.max())


def moulded_radii(
    centre: np.ndarray, theta: np.ndarray, radii: np.ndarray, others: list[np.ndarray], gap_px: float
) -> np.ndarray:
    """Rays shortened so that the outline stays at least ``gap_px`` outside every outline in ``others``.

    Nodes placed close together press into each other: the shortened side follows the neighbour's
    outline at ``gap_px`` (a thin seam of capsule), and the two outlines never overlap.
    """
    if not others:
        return radii
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=1)
    steps = np.linspace(0.02, 1.0, 64)

    def blocked(rho: np.ndarray) -> np.ndarray:  # rho: (rays, samples)
        flat = (centre + rho[..., None] * direction[:, None, :]).reshape(-1, 2)
        hit = np.zeros(len(flat), dtype=bool)
        for o in others:
            lo, hi = o.min(0) - gap_px, o.max(0) + gap_px
            near = np.flatnonzero(((flat >= lo) & (flat <= hi)).all(1))
            if len(near):
                p = flat[near]
                hit[near] |= geometry.points_in_polygon(p, o) | (geometry.distance_to_boundary(p, o) < gap_px)
        return hit.reshape(rho.shape)

    hit = blocked(radii[:, None] * steps[None, :])
    first = np.where(hit.any(1), hit.argmax(1), len(steps))
    free = first == len(steps)
    # Bisect between the last free sample and the first blocked one, per blocked ray.
    lo = np.where(first > 0, steps[np.maximum(first - 1, 0)], 0.0) * radii
    hi = steps[np.minimum(first, len(steps) - 1)] * radii
    for _ in range(8):
        mid = (lo + hi) / 2
        b = blocked(mid[:, None])[:, 0]
        hi = np.where(b, mid, hi)
        lo = np.where(b, lo, mid)
    radii = np.where(free, radii, lo)
    # Rays are ~2 degrees apart: a neighbour's corner can still poke between two of them. Pull the
    # two rays around such a corner in until the chord between them clears it by gap_px.
    step = 2 * np.pi / len(theta)
    for _ in range(20):
        poly = geometry.polygon_from_radii(centre, theta, radii)
        lo_xy, hi_xy = poly.min(0) - gap_px, poly.max(0) + gap_px
        corners = np.concatenate([o[((o >= lo_xy) & (o <= hi_xy)).all(1)] for o in others])
        if len(corners):
            corners = corners[
                geometry.points_in_polygon(corners, poly)
                | (geometry.distance_to_boundary(corners, poly) < gap_px)
            ]
        if not len(corners):
            break
        d = corners - centre
        rho = np.hypot(d[:, 0], d[:, 1])
        k = np.floor(np.mod(np.arctan2(d[:, 1], d[:, 0]) - theta[0], 2 * np.pi) / step).astype(int)
        cap = (rho - gap_px) * np.cos(step)
        for ray in (k % len(theta), (k + 1) % len(theta)):
            np.minimum.at(radii, ray, cap)
    return radii
