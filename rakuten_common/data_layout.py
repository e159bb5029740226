"""The Rakuten France challenge's data layout, exactly as distributed (and as generated)::

    DATA_DIR/
      X_train_update.csv     ,designation,description,productid,imageid   (unnamed integer index)
      Y_train_CVw08PX.csv    ,prdtypecode
      X_test_update.csv      same columns as X_train_update.csv (its index continues)
      images/image_train/image_<imageid>_product_<productid>.jpg
      images/image_test/image_<imageid>_product_<productid>.jpg

The training loader, the sample generator, the load tests and batch prediction all read the
names from here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: Columns of the X files after the unnamed index column.
X_COLUMNS = ("designation", "description", "productid", "imageid")
#: The label column of the Y file.
LABEL_COLUMN = "prdtypecode"


@dataclass(frozen=True)
class Split:
    """One split of the dataset: its CSV files and its image folder (relative to DATA_DIR)."""

    name: str
    features_csv: str
    labels_csv: str | None
    image_dir: str

    @staticmethod
    def image_name(imageid: int, productid: int) -> str:
        return f"image_{imageid}_product_{productid}.jpg"

    def image_key(self, imageid: int, productid: int) -> str:
        """The image's path relative to DATA_DIR, with ``/`` separators (also its S3 key suffix)."""
        return f"{self.image_dir}/{self.image_name(imageid, productid)}"

    def image_path(self, data_dir: Path, imageid: int, productid: int) -> Path:
        return Path(data_dir) / self.image_key(imageid, productid)


TRAIN = Split("train", "X_train_update.csv", "Y_train_CVw08PX.csv", "images/image_train")
TEST = Split("test", "X_test_update.csv", None, "images/image_test")
