"""Dataset increments: labelled products added to a dataset after its base, and training on both.

A dataset (a folder or ``s3://bucket/prefix``) holds its base in the raw Rakuten layout and,
below ``increments/``, one folder per increment in the same layout::

    DATASET/increments/<name>/X_train_update.csv
                             Y_train_CVw08PX.csv
                             images/image_train/image_<imageid>_product_<productid>.jpg
                             manifest.json          written last: an increment without it is never read

Names sort in time order (UTC timestamps by default, ``20261203T174512Z``). An increment is
written once (``training_job.data.feedback``) and never changed.

``training_data`` gives training (and the promotion gate) one folder in the raw layout holding
the base plus the chosen increments, so the loader, the data-quality checks and the evaluation
split by productid hash run unchanged. A product (``productid``) found in a later part replaces
its rows of every earlier part: the latest label wins, counted and logged. ``Lineage`` records
which parts trained a run in MLflow (``mlflow.data``: source, digest, rows of each part).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from rakuten_common.data_layout import LABEL_COLUMN, TRAIN, X_COLUMNS
from rakuten_common.errors import StorageError
from rakuten_common.storage import open_store
from training_job.config import INCREMENT_NAME
from training_job.data.dataset import DatasetError, fingerprint, read_split
from training_job.data.source import is_remote, local_dataset

logger = logging.getLogger("rakuten.datasets")

FOLDER = "increments"
MANIFEST = "manifest.json"
BASE = "base"


def increment_key(name: str, file: str = "") -> str:
    """``increments/<name>[/<file>]``, relative to the dataset."""
    if not INCREMENT_NAME.match(name):
        raise DatasetError(f"{name!r} is not a valid increment name (letters, digits, . _ -; a timestamp by default)")
    return f"{FOLDER}/{name}/{file}".rstrip("/")


def increment_uri(dataset_uri: str, name: str) -> str:
    return f"{str(dataset_uri).rstrip('/')}/{increment_key(name)}"


def complete_increments(dataset_uri: str) -> list[str]:
    """Names of the dataset's increments that have a manifest (complete ones), in time order.
    A folder without one (a writer that crashed) is logged and never read."""
    try:
        objects = open_store(dataset_uri).list_objects(FOLDER)
    except StorageError as exc:
        raise DatasetError(f"increments of {dataset_uri} cannot be listed: {exc}") from None
    folders, complete = set(), set()
    for item in objects:
        parts = item.key.split("/")
        if len(parts) >= 3 and INCREMENT_NAME.match(parts[1]):
            folders.add(parts[1])
            if len(parts) == 3 and parts[2] == MANIFEST:
                complete.add(parts[1])
    for name in sorted(folders - complete):
        logger.warning("Increment %s of %s has no %s (incomplete write): not read", name, dataset_uri, MANIFEST)
    return sorted(complete)


def select(names: list[str], selection: str) -> list[str]:
    """``none`` -> [], ``all`` -> every name, ``UNTIL`` -> the names up to and including UNTIL."""
    if selection == "none":
        return []
    if selection == "all":
        return list(names)
    if selection not in names:
        raise DatasetError(f"--increments {selection}: no complete increment of that name "
                           f"(complete ones: {', '.join(names) or 'none'})")
    return [name for name in names if name <= selection]


def read_manifest(dataset_uri: str, name: str, scratch: Path) -> dict:
    target = Path(scratch) / f"{name}-{MANIFEST}"
    try:
        open_store(dataset_uri).get_file(increment_key(name, MANIFEST), target)
        return json.loads(target.read_text())
    except (StorageError, ValueError) as exc:
        raise DatasetError(f"manifest of increment {name} in {dataset_uri} cannot be read: {exc}") from None


@dataclass
class Part:
    """The base or one increment, as read."""

    name: str           # "base" or the increment's name
    source: str         # its URI
    local_dir: Path
    table: pd.DataFrame  # its CSV rows (labels joined)
    digest: str         # fingerprint of its CSVs and images
    manifest: dict = field(default_factory=dict)


@dataclass
class Lineage:
    """Which parts a training run read, and what the de-duplication did."""

    dataset: str
    parts: list[Part]
    replaced: int = 0     # rows of an earlier part replaced by a later label of the same productid
    relabelled: int = 0   # ... of which the label changed
    rows: int = 0         # rows of the combined table

    @property
    def increments(self) -> list[str]:
        return [part.name for part in self.parts if part.name != BASE]

    def summary(self) -> str:
        shown = ", ".join(f"{p.name} {len(p.table)}" for p in self.parts)
        return (f"{self.rows} rows ({shown}); {self.replaced} earlier rows replaced by a later label of the "
                f"same productid ({self.relabelled} with another prdtypecode)")

    def log_to_mlflow(self) -> None:
        """One ``mlflow.data`` input per part (source, digest, rows), plus tags and counts on the active run."""
        import mlflow
        import mlflow.data

        for part in self.parts:
            with warnings.catch_warnings():  # MLflow's hints on source resolution and integer columns: noise here
                warnings.simplefilter("ignore", UserWarning)
                dataset = mlflow.data.from_pandas(part.table.reset_index(drop=True), source=part.source,
                                                  targets=LABEL_COLUMN, name=part.name, digest=part.digest[:32])
            mlflow.log_input(dataset, context="training", tags={"rows": str(len(part.table)),
                                                                 "part": "base" if part.name == BASE else "increment"})
        mlflow.set_tags({"data_increments": ",".join(self.increments) or "none"})
        mlflow.log_metrics({"data_rows": self.rows, "data_rows_replaced": self.replaced,
                            "data_rows_relabelled": self.relabelled,
                            **{f"data_rows_{part.name}": len(part.table) for part in self.parts}})


def _local_part(uri: str, cache_dir: Path) -> Path:
    try:
        return local_dataset(uri, cache_dir, TRAIN)
    except StorageError as exc:
        raise DatasetError(f"dataset {uri} cannot be read: {exc}") from None


def combine(parts: list[Part]) -> tuple[pd.DataFrame, list[Path], int, int]:
    """The parts' rows as one table (a new integer index), each row's image file, and how many rows
    a later part's productid replaced (and relabelled). Duplicates inside one part are kept (the
    data-quality checks count them)."""
    tables: list[pd.DataFrame] = []
    images: list[Path] = []
    for part in parts:
        table = part.table.reset_index(drop=True).copy()
        table["_part"] = len(tables)
        tables.append(table)
        images += [TRAIN.image_path(part.local_dir, i, p) for i, p in zip(table["imageid"], table["productid"])]
    rows = pd.concat(tables, ignore_index=True)
    last_part = rows.groupby("productid")["_part"].transform("max")
    replaced = rows["_part"] < last_part
    latest = rows[~replaced].drop_duplicates("productid", keep="last").set_index("productid")[LABEL_COLUMN]
    relabelled = int((rows.loc[replaced, LABEL_COLUMN].to_numpy()
                      != latest.reindex(rows.loc[replaced, "productid"]).to_numpy()).sum())
    keep = ~replaced.to_numpy()
    return rows[keep].drop(columns="_part").reset_index(drop=True), \
        [path for path, kept in zip(images, keep) if kept], int(replaced.sum()), relabelled


def _materialise(table: pd.DataFrame, images: list[Path], folder: Path) -> Path:
    """Write the combined rows in the raw layout under ``folder``, images as symbolic links (built
    in ``<folder>.partial`` and renamed, so a half-built folder is never used)."""
    if (folder / TRAIN.labels_csv).is_file():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    (partial / TRAIN.image_dir).mkdir(parents=True)
    table[list(X_COLUMNS)].to_csv(partial / TRAIN.features_csv)
    table[[LABEL_COLUMN]].to_csv(partial / TRAIN.labels_csv)
    for path, imageid, productid in zip(images, table["imageid"], table["productid"]):
        if path.is_file():
            os.symlink(path.resolve(), TRAIN.image_path(partial, imageid, productid))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return folder


def training_data(dataset_uri: str, cache_dir: Path, selection: str = "all") -> tuple[Path, Lineage]:
    """A local folder in the raw layout holding the base of ``dataset_uri`` plus the chosen complete
    increments (the base's own folder when there are none), and the lineage to record."""
    cache_dir = Path(cache_dir)
    base_dir = _local_part(dataset_uri, cache_dir)
    base = Part(BASE, str(dataset_uri), base_dir, read_split(base_dir, TRAIN), fingerprint(base_dir))
    names = select(complete_increments(dataset_uri), selection) if selection != "none" else []
    parts = [base]
    scratch = cache_dir / "manifests"
    scratch.mkdir(parents=True, exist_ok=True)
    for name in names:
        uri = increment_uri(dataset_uri, name)
        local = _local_part(uri, cache_dir) if is_remote(dataset_uri) else Path(dataset_uri) / increment_key(name)
        parts.append(Part(name, uri, local, read_split(local, TRAIN), fingerprint(local),
                          read_manifest(dataset_uri, name, scratch)))
    if len(parts) == 1:
        lineage = Lineage(str(dataset_uri), parts, rows=len(base.table))
        logger.info("Dataset %s: base only (%d rows; increments: %s)", dataset_uri, len(base.table),
                    "none chosen" if selection == "none" else "none complete")
        return base_dir, lineage
    table, images, replaced, relabelled = combine(parts)
    key = hashlib.sha256("\n".join(f"{p.name}:{p.digest}" for p in parts).encode()).hexdigest()[:16]
    folder = _materialise(table, images, cache_dir / "combined" / key)
    lineage = Lineage(str(dataset_uri), parts, replaced, relabelled, len(table))
    logger.info("Dataset %s with increments %s: %s", dataset_uri, ", ".join(names), lineage.summary())
    return folder, lineage
