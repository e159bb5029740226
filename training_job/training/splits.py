"""How rows are split: a fixed evaluation split by productid, then a stratified train/validation split.

The evaluation split is assigned by a hash of ``productid``: the same product always lands in
the same split, so the split stays put as the dataset grows, and the promotion gate scores a new
model and the one in production on exactly the same products. No model ever trains or early-stops
on it. The rest is split train/validation, stratified by class (scikit-learn's stratified split
refuses classes with a single row, which small samples have; this one keeps such a row in train).
"""
from __future__ import annotations

import hashlib

import numpy as np


def evaluation_mask(productids: np.ndarray, fraction: float) -> np.ndarray:
    """``True`` for the rows of the fixed evaluation split (about ``fraction`` of the products)."""
    if not 0 <= fraction < 1:
        raise ValueError(f"evaluation fraction must be in [0, 1), got {fraction}")
    threshold = int(fraction * 2**64)
    return np.fromiter(
        (int.from_bytes(hashlib.sha256(f"rakuten-eval:{int(p)}".encode()).digest()[:8], "big") < threshold
         for p in productids), dtype=bool, count=len(productids))


def stratified_split(codes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a train/validation split keeping each class's share (>= 1 val row per class)."""
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for code in np.unique(codes):
        positions = rng.permutation(np.flatnonzero(codes == code))
        n_val = max(1, round(len(positions) * val_fraction)) if len(positions) > 1 else 0
        val.extend(positions[:n_val])
        train.extend(positions[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def three_way_split(productids: np.ndarray, codes: np.ndarray, eval_fraction: float, val_fraction: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of (train, validation, evaluation): evaluation by productid hash, then stratified."""
    held_out = evaluation_mask(productids, eval_fraction)
    evaluation, rest = np.flatnonzero(held_out), np.flatnonzero(~held_out)
    train, val = stratified_split(codes[rest], val_fraction, seed)
    return rest[train], rest[val], evaluation
