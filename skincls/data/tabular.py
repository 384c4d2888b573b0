"""Metadata as model input: encode what the clinic records (age, sex, site) as a fixed-width vector.

A `MetadataEncoder` is fitted on the training split only and travels in the checkpoint as plain data
(`to_dict`/`from_dict`). Each column becomes a block of the vector:

- numeric (every recorded training value is a number, e.g. age): the value standardised by the
  training mean and standard deviation, then a missing-value indicator;
- categorical (sex, site): one-hot over the training levels, an `unknown` level, then a
  missing-value indicator. A value never seen in training (or seen fewer than `min_count` times)
  is `unknown`; a missing one is `unknown` and missing.

A missing numeric value is 0 (the training mean) with its indicator set, so no input is ever a
reason to fail: the encoding of any row, even an empty one, is defined.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, opt

__all__ = [
    "CLINICAL_COLUMNS",
    "MISSING_VALUES",
    "ColumnCode",
    "MetadataEncoder",
    "metadata_columns",
]

# What `--metadata auto` uses where a dataset records it: what a clinic knows before the diagnosis.
# Not dx_type (how the diagnosis was confirmed: histopathology marks the suspicious lesions, a leak
# of the label) nor ita/skin_tone (estimated from the image itself).
CLINICAL_COLUMNS = ("age", "sex", "site")
MISSING_VALUES = frozenset({"", "?", "unknown", "nan", "na", "n/a", "none", "null", "-"})


@dataclass(frozen=True)
class ColumnCode:
    """How one column is encoded: `numeric` (mean, scale) or `categorical` (levels)."""

    name: str
    kind: str  # "numeric" | "categorical"
    mean: float = 0.0
    scale: float = 1.0
    levels: tuple[str, ...] = ()

    @property
    def width(self) -> int:
        return 2 if self.kind == "numeric" else len(self.levels) + 2

    def feature_names(self) -> list[str]:
        if self.kind == "numeric":
            return [self.name, f"{self.name}:missing"]
        levels = [f"{self.name}={v}" for v in self.levels]
        return [*levels, f"{self.name}=unknown", f"{self.name}:missing"]

    def encode(self, value: str | None) -> list[float]:
        """This column's block for one value (None or a missing spelling: missing)."""
        text = _clean(value)
        if self.kind == "numeric":
            number = _number(text)
            if number is None:
                return [0.0, 1.0]
            return [(number - self.mean) / self.scale, 0.0]
        out = [0.0] * self.width
        if text is None:
            out[-2] = out[-1] = 1.0
        elif text in self.levels:
            out[self.levels.index(text)] = 1.0
        else:
            out[-2] = 1.0
        return out


class MetadataEncoder:
    """Columns → one float32 vector per image (see the module docstring for the layout)."""

    def __init__(self, columns: Sequence[ColumnCode]):
        self.columns = tuple(columns)

    @classmethod
    def fit(
        cls,
        rows: Sequence[Mapping[str, str]],
        columns: Sequence[str],
        *,
        min_count: int = 3,
        numeric: Sequence[str] = (),
    ) -> MetadataEncoder:
        """Learn means, scales and vocabularies from `rows` (the training split's values only).

        A column is numeric when every recorded value is a finite number (or it is named in
        `numeric`: unparsable values are then missing), else categorical with the levels seen at
        least `min_count` times (rarer ones are `unknown`, so that level is learned).
        """
        codes = []
        for name in columns:
            values = [v for v in (_clean(r.get(name)) for r in rows) if v is not None]
            numbers = [_number(v) for v in values]
            if name in numeric or (values and all(n is not None for n in numbers)):
                arr = np.asarray([n for n in numbers if n is not None] or [0.0], dtype=np.float64)
                scale = float(arr.std()) if len(arr) > 1 and arr.std() > 0 else 1.0
                codes.append(ColumnCode(name, "numeric", float(arr.mean()), scale))
            else:
                counts = Counter(values)
                levels = tuple(sorted(v for v, n in counts.items() if n >= min_count))
                codes.append(ColumnCode(name, "categorical", levels=levels))
        return cls(codes)

    @property
    def names(self) -> list[str]:
        """The encoded columns, in order (each once: an ensemble's encoder repeats its members')."""
        return list(dict.fromkeys(c.name for c in self.columns))

    @property
    def width(self) -> int:
        return sum(c.width for c in self.columns)

    def feature_names(self) -> list[str]:
        return [n for c in self.columns for n in c.feature_names()]

    def encode(self, rows: Iterable[Mapping[str, str | None]]) -> np.ndarray:
        """(N, width) float32: one row per input row; absent keys count as missing."""
        out = [[x for c in self.columns for x in c.encode(r.get(c.name))] for r in rows]
        return np.asarray(out, dtype=np.float32).reshape(len(out), self.width)

    def missing(self, row: Mapping[str, str | None]) -> list[str]:
        """The encoded columns `row` has no value for (absent, empty, a missing spelling, or not a
        number in a numeric column): those whose missing indicator is set."""
        out = [c.name for c, x in zip(self.columns, self._blocks(row)) if x[-1] == 1.0]
        return list(dict.fromkeys(out))

    def _blocks(self, row: Mapping[str, str | None]) -> list[list[float]]:
        return [c.encode(row.get(c.name)) for c in self.columns]

    def to_dict(self) -> dict:
        """Plain data for the checkpoint (JSON-safe)."""
        return {
            "columns": [
                {"name": c.name, "kind": c.kind, "mean": c.mean, "scale": c.scale,
                 "levels": list(c.levels)}
                for c in self.columns
            ],
            "width": self.width,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: Mapping) -> MetadataEncoder:
        """The encoder `to_dict` wrote.

        Raises:
            ConfigError: a malformed record (e.g. a hand-edited checkpoint).
        """
        try:
            codes = [
                ColumnCode(
                    str(c["name"]), str(c["kind"]), float(c["mean"]), float(c["scale"]),
                    tuple(str(v) for v in c["levels"]),
                )
                for c in data["columns"]
            ]  # fmt: skip
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"the stored metadata encoding is malformed ({exc})") from None
        enc = cls(codes)
        bad = [c.name for c in codes if c.kind not in ("numeric", "categorical") or c.scale <= 0]
        if bad or enc.width != data.get("width"):
            raise ConfigError(f"the stored metadata encoding is malformed (columns {bad})")
        return enc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MetadataEncoder) and self.columns == other.columns

    def __repr__(self) -> str:
        return f"MetadataEncoder({', '.join(f'{c.name}:{c.kind}' for c in self.columns)})"


def metadata_columns(spec: str, available: Iterable[str]) -> list[str]:
    """The columns `model.metadata` names: `none` → [], `auto` → the `CLINICAL_COLUMNS` the data has,
    or a comma-separated list, each of which the data must have.

    Raises:
        ConfigError: `auto` with none of them, or a named column the data does not have.
    """
    have = set(available)
    spec = spec.strip()
    if spec.lower() == "none":
        return []
    if spec.lower() == "auto":
        cols = [c for c in CLINICAL_COLUMNS if c in have]
        if not cols:
            raise ConfigError(
                f"{opt('model.metadata', value='auto')}: the data records none of "
                f"{', '.join(CLINICAL_COLUMNS)}; train on images only "
                f"({opt('model.metadata', value='none')})"
            )
        return cols
    cols = list(dict.fromkeys(c.strip() for c in spec.split(",") if c.strip()))
    missing = [c for c in cols if c not in have]
    if missing or not cols:
        known = ", ".join(sorted(have)) or "none"
        raise ConfigError(
            f"{opt('model.metadata')}: the data has no column {', '.join(missing) or '(none given)'}"
            f"; its metadata columns are: {known}"
        )
    return cols


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    text = " ".join(str(value).strip().lower().split())
    return None if text in MISSING_VALUES else text


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        x = float(text)
    except ValueError:
        return None
    return x if math.isfinite(x) else None
