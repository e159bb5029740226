"""Loader for the Rakuten France data layout (the real set or the generated sample)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten_common.data_layout import LABEL_COLUMN, TRAIN, X_COLUMNS
from rakuten_common.preprocessing import product_text


class DatasetError(RuntimeError):
    """The data folder does not hold a usable Rakuten dataset."""


@dataclass
class Dataset:
    """Labelled products: model text, image path and ``prdtypecode`` per row."""

    texts: np.ndarray          # str, cleaned designation + description
    image_paths: list[Path]
    codes: np.ndarray          # int64 prdtypecode
    row_ids: np.ndarray        # the CSVs' unnamed integer index
    missing_images: list[int]  # row ids dropped because their image file does not exist
    fingerprint: str

    def __len__(self) -> int:
        return len(self.codes)

    def subset(self, positions: np.ndarray) -> "Dataset":
        return Dataset(self.texts[positions], [self.image_paths[i] for i in positions],
                       self.codes[positions], self.row_ids[positions], [], self.fingerprint)


def has_dataset(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds the training split's features CSV."""
    return (Path(data_dir) / TRAIN.features_csv).is_file()


def fingerprint(data_dir: Path) -> str:
    """sha256 of both CSV files plus the name and size of every training image."""
    digest = hashlib.sha256()
    for name in (TRAIN.features_csv, TRAIN.labels_csv):
        digest.update((Path(data_dir) / name).read_bytes())
    image_dir = Path(data_dir) / TRAIN.image_dir
    for entry in sorted(image_dir.iterdir()) if image_dir.is_dir() else []:
        digest.update(f"{entry.name}:{entry.stat().st_size}\n".encode())
    return digest.hexdigest()


def load_dataset(data_dir: Path, max_rows: int | None = None) -> Dataset:
    """Read ``X_train_update.csv`` + ``Y_train_CVw08PX.csv`` and locate every row's image.

    Rows whose image file is missing are reported in ``missing_images`` and left out.
    """
    data_dir = Path(data_dir)
    x_csv, y_csv = TRAIN.features_csv, TRAIN.labels_csv
    for name in (x_csv, y_csv):
        if not (data_dir / name).is_file():
            raise DatasetError(f"{data_dir / name} not found: expected the Rakuten layout "
                               f"({x_csv}, {y_csv}, {TRAIN.image_dir}/)")
    features = pd.read_csv(data_dir / x_csv, index_col=0, keep_default_na=False,
                           dtype={"designation": str, "description": str})
    labels = pd.read_csv(data_dir / y_csv, index_col=0)
    if list(features.columns) != list(X_COLUMNS):
        raise DatasetError(f"{x_csv} columns are {list(features.columns)}, expected {list(X_COLUMNS)}")
    if LABEL_COLUMN not in labels.columns:
        raise DatasetError(f"{y_csv} has no {LABEL_COLUMN} column")
    if not features.index.equals(labels.index):
        raise DatasetError(f"{x_csv} and {y_csv} do not have the same row index")
    table = features.join(labels)
    if max_rows:
        table = table.iloc[:max_rows]
    paths = [TRAIN.image_path(data_dir, imageid, productid)
             for imageid, productid in zip(table["imageid"], table["productid"])]
    present = np.array([path.is_file() for path in paths], dtype=bool)
    texts = np.array([product_text(d, s) for d, s in zip(table["designation"], table["description"])],
                     dtype=object)
    return Dataset(
        texts=texts[present],
        image_paths=[path for path, ok in zip(paths, present) if ok],
        codes=table[LABEL_COLUMN].to_numpy(np.int64)[present],
        row_ids=table.index.to_numpy()[present],
        missing_images=table.index[~present].tolist(),
        fingerprint=fingerprint(data_dir),
    )


def stratified_split(codes: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of a train/validation split keeping each class's share (>= 1 val row per class)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for code in np.unique(codes):
        positions = rng.permutation(np.flatnonzero(codes == code))
        n_val = max(1, round(len(positions) * val_fraction)) if len(positions) > 1 else 0
        val.extend(positions[:n_val])
        train.extend(positions[n_val:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))
