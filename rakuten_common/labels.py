"""The 27 Rakuten France ``prdtypecode`` classes and the code <-> index mapping."""
from __future__ import annotations

from rakuten_common.errors import LabelError

#: Real per-class row counts of ``Y_train_CVw08PX.csv`` (84,916 rows, 27 classes).
TRAIN_COUNTS: dict[int, int] = {
    10: 3116, 40: 2508, 50: 1681, 60: 832, 1140: 2671, 1160: 3953, 1180: 764,
    1280: 4870, 1281: 2070, 1300: 5045, 1301: 807, 1302: 2491, 1320: 3241,
    1560: 5073, 1920: 4303, 1940: 803, 2060: 4993, 2220: 824, 2280: 4760,
    2403: 4774, 2462: 1421, 2522: 4989, 2582: 2589, 2583: 10209, 2585: 2496,
    2705: 2761, 2905: 872,
}

#: The 27 product type codes in ascending order.
PRDTYPECODES: tuple[int, ...] = tuple(sorted(TRAIN_COUNTS))


class LabelMap:
    """Maps ``prdtypecode`` values to contiguous class indices (sorted by code) and back."""

    def __init__(self, codes: tuple[int, ...] | list[int] = PRDTYPECODES):
        self.codes: tuple[int, ...] = tuple(int(code) for code in codes)
        if len(set(self.codes)) != len(self.codes):
            raise LabelError("duplicate prdtypecode in label map")
        self._index = {code: index for index, code in enumerate(self.codes)}

    def __len__(self) -> int:
        return len(self.codes)

    def to_index(self, code: int) -> int:
        try:
            return self._index[int(code)]
        except KeyError:
            raise LabelError(f"unknown prdtypecode {code}") from None
