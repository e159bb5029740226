"""Loader for the Rakuten France data layout (the real set or the generated sample)."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from rakuten_common.data_layout import LABEL_COLUMN, TRAIN, X_COLUMNS, Split
from rakuten_common.errors import RakutenError
from rakuten_common.preprocessing import product_text


class DatasetError(RakutenError, RuntimeError):
    """The data folder does not hold a usable Rakuten dataset."""


@dataclass
class Dataset:
    """Labelled products: model text, image path and ``prdtypecode`` per row."""

    texts: np.ndarray          # str, cleaned designation + description
    image_paths: list[Path]
    codes: np.ndarray          # int64 prdtypecode
    row_ids: np.ndarray        # the CSVs' unnamed integer index
    productids: np.ndarray     # int64
    missing_images: list[int]  # row ids dropped because their image file does not exist
    fingerprint: str

    def __len__(self) -> int:
        return len(self.codes)

    def subset(self, positions: np.ndarray) -> "Dataset":
        return Dataset(self.texts[positions], [self.image_paths[i] for i in positions],
                       self.codes[positions], self.row_ids[positions], self.productids[positions], [],
                       self.fingerprint)


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


def read_split(data_dir: Path, split: Split = TRAIN, max_rows: int | None = None) -> pd.DataFrame:
    """The split's CSV rows (labels joined for a labelled split), checked against the real layout."""
    data_dir = Path(data_dir)
    names = [split.features_csv] + ([split.labels_csv] if split.labels_csv else [])
    for name in names:
        if not (data_dir / name).is_file():
            raise DatasetError(f"{data_dir / name} not found: expected the Rakuten layout "
                               f"({', '.join(names)}, {split.image_dir}/)")
    features = pd.read_csv(data_dir / split.features_csv, index_col=0, keep_default_na=False,
                           dtype={"designation": str, "description": str})
    if list(features.columns) != list(X_COLUMNS):
        raise DatasetError(f"{split.features_csv} columns are {list(features.columns)}, expected {list(X_COLUMNS)}")
    for column in ("productid", "imageid"):
        if not pd.api.types.is_integer_dtype(features[column]):
            raise DatasetError(f"{split.features_csv}: column {column} holds non-integer values")
    if split.labels_csv:
        labels = pd.read_csv(data_dir / split.labels_csv, index_col=0)
        if LABEL_COLUMN not in labels.columns:
            raise DatasetError(f"{split.labels_csv} has no {LABEL_COLUMN} column")
        if not features.index.equals(labels.index):
            raise DatasetError(f"{split.features_csv} and {split.labels_csv} do not have the same row index")
        if not pd.api.types.is_integer_dtype(labels[LABEL_COLUMN]):
            raise DatasetError(f"{split.labels_csv}: {LABEL_COLUMN} holds non-integer values")
        features = features.join(labels)
    return features.iloc[:max_rows] if max_rows else features


def image_paths(data_dir: Path, table: pd.DataFrame, split: Split = TRAIN) -> list[Path]:
    return [split.image_path(data_dir, imageid, productid)
            for imageid, productid in zip(table["imageid"], table["productid"])]


def load_dataset(data_dir: Path, max_rows: int | None = None) -> Dataset:
    """Read ``X_train_update.csv`` + ``Y_train_CVw08PX.csv`` and locate every row's image.

    Rows whose image file is missing are reported in ``missing_images`` and left out.
    """
    table = read_split(data_dir, TRAIN, max_rows)
    paths = image_paths(data_dir, table)
    present = np.array([path.is_file() for path in paths], dtype=bool)
    texts = np.array([product_text(d, s) for d, s in zip(table["designation"], table["description"])],
                     dtype=object)
    return Dataset(
        texts=texts[present],
        image_paths=[path for path, ok in zip(paths, present) if ok],
        codes=table[LABEL_COLUMN].to_numpy(np.int64)[present],
        row_ids=table.index.to_numpy()[present],
        productids=table["productid"].to_numpy(np.int64)[present],
        missing_images=table.index[~present].tolist(),
        fingerprint=fingerprint(data_dir),
    )
