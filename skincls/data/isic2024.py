"""ISIC 2024 (SLICE-3D): 401,059 lesion crops of 1,042 patients, read from the one HDF5 file they ship in.

The Kaggle competition `isic-2024-challenge` ships `train-image.hdf5` (each image's JPEG bytes under
its `isic_id`) and `train-metadata.csv` (isic_id, target, patient_id, age_approx, sex,
anatom_site_general, the TBP measurements `tbp_lv_*`, attribution (the hospital), lesion_id,
iddx_1…iddx_5 …). fetch copies the HDF5 file into `images/` as it is and names each image
`train-image.hdf5/<isic_id>.jpg`; nothing is unpacked into 401,059 files. The class is the file's
own `target`: 1 → malignant, 0 → benign. Patients (and lesions, where recorded) stay within one
split; sex, age, site and source (the hospital, `attribution`) become manifest columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import numpy as np

from ..errors import DataError, opt
from .hdf5 import hdf5_key_array, key_text
from .ingest import Candidate, Layout
from .layouts import MetadataLayout, _check_labels, _Matches, _named, _refuse_conflicts, _summary
from .lazy import Mapped
from .listing import is_hidden
from .metadata import (
    BENIGN,
    DEFAULT_BINARY_MAP,
    MALIGNANT,
    LabelPolicy,
    MetaRow,
    iter_csv_rows,
    row_attributes,
)

__all__ = [
    "HDF5_NAME",
    "LABEL_RULE",
    "METADATA_NAME",
    "Isic2024Files",
    "Isic2024Layout",
    "find_isic2024",
    "index_isic2024",
    "iter_isic2024",
    "parse_isic2024",
]

HDF5_NAME = "train-image.hdf5"
METADATA_NAME = "train-metadata.csv"
REQUIRED = ("isic_id", "target", "patient_id")
LABEL_RULE = {"target 1": MALIGNANT, "target 0": BENIGN}
JPEG_FOLDER = "train-image"  # the competition's second copy of the images, as files
_AT_ONCE = 1 << 12  # keys looked at together: a small fixed share of temporary arrays and ints


class Isic2024Files(Layout):
    """The two files fetch copies (`files`: the HDF5 file and the metadata CSV), before indexing."""


class Members(Mapped[PurePosixPath]):
    """The images of one HDF5 file matched to a metadata row, in path order, as two arrays: each
    one's key (its bytes, `keys`) and the code of its row (`codes`) in `rows` (distinct rows as
    `MetaRow.grouping` keeps them: a patient's images share one) and `labels` (each row's
    class). A path (`<hdf5>/<key>.jpg`) or `Candidate` is made when asked for: past matching an
    image costs its key's bytes and 4."""

    def __init__(
        self, hdf5: str, keys: np.ndarray, codes: np.ndarray, rows: list[MetaRow], labels: list
    ) -> None:
        self.hdf5, self.keys, self.codes, self.rows, self.labels = hdf5, keys, codes, rows, labels
        super().__init__(len(keys), lambda i: PurePosixPath(self.hdf5, self._name(i)))

    def _name(self, i: int) -> str:
        return f"{key_text(self.keys[i])}.jpg"

    def candidates(self) -> Sequence[Candidate]:
        """The images as `Candidate`s, each made when indexed (401,059 are never all held)."""
        return Mapped(len(self), self.candidate)

    def candidate(self, i: int) -> Candidate:
        row = int(self.codes[i])
        rel = f"{self.hdf5}/{self._name(i)}"
        return Candidate(rel, None, self.labels[row], self.rows[row])


@dataclass
class Isic2024Layout(MetadataLayout):
    """ISIC 2024's matched images: `files` is a `Members` (a key, row and class per image, no
    path object or dict entry per image: 401,059 of them); `rows` and `labels` stay empty."""

    def candidates(self) -> Sequence[Candidate]:
        return self.files.candidates() if isinstance(self.files, Members) else []


def find_isic2024(paths: Sequence[PurePosixPath]) -> Isic2024Files | None:
    """The shallowest `train-metadata.csv` with a `train-image.hdf5` beside it, or None.

    The competition's JPEG copy (`train-image/image/*.jpg`) is counted as an ignored copy; any
    other file is listed as outside the layout.
    """
    paths = [p for p in paths if not is_hidden(p.parts)]
    present = set(paths)
    for meta in _named(paths, METADATA_NAME):
        hdf5 = meta.parent / HDF5_NAME
        if hdf5 not in present:
            continue
        root = meta.parent
        rel = [PurePosixPath(*p.parts[len(root.parts) :]) for p in (hdf5, meta)]
        copies = [p for p in paths if JPEG_FOLDER in p.parts[len(root.parts) : -1]]
        taken = {hdf5, meta, *copies}
        layout = Isic2024Files(
            root.parts, rel, outside=sorted(str(p) for p in paths if p not in taken)
        )
        if copies:
            layout.ignored_copies = {str(root / JPEG_FOLDER): len(copies)}
        return layout
    return None


def parse_isic2024(
    path: str | Path, name: str = METADATA_NAME
) -> tuple[list[MetaRow], list[tuple[str, str]]]:
    """`train-metadata.csv`, streamed row by row: one `MetaRow` per isic_id, its own `target`.

    Returns:
        The rows, and `(isic_id, reason)` for rows whose target is neither 0 nor 1.

    Raises:
        DataError: not UTF-8 text, or a required column missing.
    """
    bad: list[tuple[str, str]] = []
    return list(iter_isic2024(path, name, bad)), bad


def iter_isic2024(path: str | Path, name: str, bad: list[tuple[str, str]]) -> Iterator[MetaRow]:
    """`parse_isic2024`'s rows one at a time (401,059 are never all held); `(isic_id, reason)` of
    rows whose target is neither 0 nor 1 go to `bad`."""
    shared: dict = {}  # one object per distinct value: 401,059 rows share a few thousand
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for r in iter_csv_rows(fh, name, REQUIRED)[1]:
                if not r["isic_id"]:
                    continue
                target = {"0": False, "1": True, "0.0": False, "1.0": True}.get(r["target"])
                if target is None:
                    bad.append((r["isic_id"], f"{name}: target {r['target']!r} is neither 0 nor 1"))
                    continue
                yield _row(r, target, shared)
    except UnicodeDecodeError as exc:
        raise DataError(f"{name} is not UTF-8 text: {exc}") from None


def _row(r: dict[str, str], target: bool, shared: dict) -> MetaRow:
    """One row; its ids and attributes are the objects in `shared` where an equal one is there."""
    lesion, patient, attributes = r.get("lesion_id", ""), r["patient_id"], row_attributes(r)
    return MetaRow(
        r["isic_id"],
        "unk",  # the label is `target`; the diagnosis columns are not one code per image
        lesion_id=shared.setdefault(lesion, lesion),
        patient_id=shared.setdefault(patient, patient),
        malignant=target,
        attributes=shared.setdefault(attributes, attributes),  # source: the hospital (attribution)
    )


class _RowPool:
    """Distinct rows (image ids blank), each with its code, class and why it has none."""

    def __init__(self, policy: LabelPolicy) -> None:
        self.policy, self.rows, self.labels, self.why = policy, [], [], []
        self._codes: dict[MetaRow, int] = {}

    def code(self, row: MetaRow) -> int:
        blank = replace(row, image="")
        code = self._codes.get(blank)
        if code is None:
            code = self._codes[blank] = len(self.rows)
            label, why = self.policy.label(blank)
            self.rows.append(blank)
            self.labels.append(label)
            self.why.append(why or "no class")
        return code

    def close(self) -> None:
        """No row is added after: the lookup of codes goes (a dict entry a distinct row)."""
        self._codes = {}


class _ByIndex(Mapping):
    """Key index → `values[codes[index]]` for the indices in `taken` (a summary's view of the
    matched images: made as iterated, never a dict per image)."""

    def __init__(self, taken: np.ndarray, codes: np.ndarray, values: list) -> None:
        self.taken, self.codes, self._values = taken, codes, values

    def __len__(self) -> int:
        return len(self.taken)

    def __iter__(self) -> Iterator[int]:
        for start in range(0, len(self.taken), _AT_ONCE):
            yield from self.taken[start : start + _AT_ONCE].tolist()

    def __getitem__(self, i: int):
        at = int(np.searchsorted(self.taken, i))  # `taken` is sorted
        if at == len(self.taken) or self.taken[at] != i:
            raise KeyError(i)
        return self._values[int(self.codes[i])]


def _find(keys: np.ndarray, image: str) -> int:
    """The position of `image`'s key in the sorted `keys`, or -1."""
    try:
        key = image.encode("utf-8")
    except UnicodeEncodeError:
        return -1
    if not key or b"\0" in key or len(key) > keys.dtype.itemsize:  # S arrays pad with NUL
        return -1
    i = int(np.searchsorted(keys, key))
    return i if i < len(keys) and keys[i] == key else -1


def _match_keys(
    hdf5: str,
    rows: Iterable[MetaRow],
    bad_rows: list[tuple[str, str]],
    keys: np.ndarray,
    policy: LabelPolicy,
    meta_name: str,
) -> Isic2024Layout:
    """`layouts._match` for the images in one HDF5 file, named by key (`<hdf5>/<key>.jpg`;
    `keys`: their bytes, sorted, as `hdf5.hdf5_key_array` gives them): the same skips, checks and
    summary, each row matched to the key equal to its isic_id.

    Rows are taken one at a time and kept once per distinct row (less the image id): per image
    only an array entry is kept, its first row's code, never an object or dict entry."""
    pool = _RowPool(policy)
    first = np.full(len(keys), -1, np.int32)  # each key's first row
    elsewhere: dict[str, int] = {}  # rows naming no key: image → its first row
    m = _Matches()
    n_rows = 0
    for row in rows:
        n_rows += 1
        code, i = pool.code(row), _find(keys, row.image)
        earlier = int(first[i]) if i >= 0 else elsewhere.get(row.image, -1)
        if earlier >= 0:
            if earlier != code:
                m.conflicts.append(repr(row.image))
            else:
                m.repeats += 1
        elif i < 0:
            elsewhere[row.image] = code
            m.missing.append(row.image)
        else:
            first[i] = code
            if pool.labels[code] is None:
                m.skipped.append((f"{hdf5}/{row.image}.jpg", pool.why[code]))
    del elsewhere
    pool.close()
    not_listed = f"not listed in {meta_name}"
    m.skipped += [
        (f"{hdf5}/{key_text(keys[i])}.jpg", not_listed) for i in np.flatnonzero(first < 0)
    ]
    labelled = np.array([label is not None for label in pool.labels] + [False])
    chosen = labelled[first]  # first -1: the appended False
    every = bool(chosen.all())  # ISIC 2024's own files: each key matched, with a class
    taken = np.arange(len(keys), dtype=np.int32) if every else _positions(chosen)
    del chosen
    m.chosen, m.labels = _ByIndex(taken, first, pool.rows), _ByIndex(taken, first, pool.labels)
    _refuse_conflicts(m.conflicts, meta_name)
    _check_labels(m.labels, m.chosen, meta_name)
    if not _sorted_as_paths(keys, taken):
        paths = np.char.add(keys[taken], b".jpg")
        taken, every = taken[np.argsort(paths, kind="stable")], False  # as their paths sort
        del paths
    # The rows as the table keeps them (`MetaRow.grouping`): its pool holds these same objects,
    # and the full rows (with their target) go with the pool. Every key taken in order: the
    # arrays themselves, no copy.
    rows = [r.grouping() for r in pool.rows]
    members = (
        Members(hdf5, keys, first, rows, pool.labels)
        if every
        else Members(hdf5, keys[taken], first[taken], rows, pool.labels)
    )
    counts = _counts(members.codes, len(pool.rows))
    used = np.flatnonzero(counts).tolist()  # the distinct rows matched, each once
    counted = lambda: ((pool.rows[c], pool.labels[c], int(counts[c])) for c in used)  # noqa: E731
    return Isic2024Layout(
        (),
        members,
        skipped=sorted(m.skipped),
        summary=_summary(m, n_rows + len(bad_rows), bad_rows, [meta_name], counted),
    )


def _positions(mask: np.ndarray) -> np.ndarray:
    """`np.flatnonzero(mask)` as int32, made `_AT_ONCE` at a time (no int64 index per key)."""
    parts = [
        np.int32(start) + np.flatnonzero(mask[start : start + _AT_ONCE]).astype(np.int32)
        for start in range(0, len(mask), _AT_ONCE)
    ]
    return np.concatenate(parts) if parts else np.empty(0, np.int32)


def _sorted_as_paths(keys: np.ndarray, taken: np.ndarray) -> bool:
    """Whether `keys[taken]` (sorted as keys) sort the same as paths (`<key>.jpg`; they differ
    where a key is another's start), checked `_AT_ONCE` at a time."""
    for start in range(0, len(taken), _AT_ONCE):
        paths = np.char.add(keys[taken[start : start + _AT_ONCE + 1]], b".jpg")
        if bool(np.any(paths[:-1] > paths[1:])):
            return False
    return True


def _counts(codes: np.ndarray, n: int) -> np.ndarray:
    """How many images each of the `n` rows has, of their row codes, `_AT_ONCE` at a time."""
    counts = np.zeros(n, np.int64)
    for start in range(0, len(codes), _AT_ONCE):
        counts += np.bincount(codes[start : start + _AT_ONCE], minlength=n)
    return counts


def index_isic2024(staging: Path, files: Isic2024Files, policy: LabelPolicy) -> Isic2024Layout:
    """Match the staged CSV's rows to the images in the staged HDF5 file; the CSV is removed.

    Raises:
        DataError: a task other than binary (the labels are `target` only), an unreadable file.
    """
    if policy.task != "binary" or policy.as_given or policy.mapping != DEFAULT_BINARY_MAP:
        raise DataError(
            f"ISIC 2024's labels are its target column (1 = malignant, 0 = benign) only: leave "
            f"out {opt('task', value='multiclass')}, {opt('malignant')} and {opt('labels_csv')}"
        )
    hdf5, meta = (staging / Path(*f.parts) for f in files.files)
    name = str(PurePosixPath(*files.files[0].parts))
    meta_name = str(PurePosixPath(*files.prefix, *files.files[1].parts))
    bad: list[tuple[str, str]] = []
    rows = iter_isic2024(meta, str(files.files[1]), bad)
    layout = _match_keys(name, rows, bad, hdf5_key_array(hdf5), policy, meta_name)
    meta.unlink()  # images/ holds images only
    layout.summary["layout"] = "isic2024"
    layout.prefix = files.prefix
    layout.outside, layout.ignored_copies = files.outside, files.ignored_copies
    layout.hidden, layout.damaged = files.hidden, files.damaged
    return layout
