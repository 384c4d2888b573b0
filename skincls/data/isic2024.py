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

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from pathlib import Path, PurePosixPath

from ..errors import DataError, opt
from .hdf5 import hdf5_keys
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


class Isic2024Files(Layout):
    """The two files fetch copies (`files`: the HDF5 file and the metadata CSV), before indexing."""


class Members(Sequence[PurePosixPath]):
    """The images of one HDF5 file matched to a metadata row, in file order: each one's key, row
    (its image id left blank: rows are shared) and class; its path (`<hdf5>/<key>.jpg`) is made
    when asked for."""

    def __init__(self, hdf5: str, keys: list[str], rows: list[MetaRow], labels: list[str]):
        self.hdf5, self.keys, self.rows, self.labels = hdf5, keys, rows, labels

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [PurePosixPath(self.hdf5, f"{k}.jpg") for k in self.keys[i]]
        return PurePosixPath(self.hdf5, f"{self.keys[i]}.jpg")

    def candidates(self) -> Sequence[Candidate]:
        """The images as `Candidate`s, each made when indexed (401,059 are never all held)."""
        return Mapped(len(self), self.candidate)

    def candidate(self, i: int) -> Candidate:
        return Candidate(f"{self.hdf5}/{self.keys[i]}.jpg", None, self.labels[i], self.rows[i])


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


def _match_keys(
    hdf5: str,
    rows: Iterable[MetaRow],
    bad_rows: list[tuple[str, str]],
    keys: list[str],
    policy: LabelPolicy,
    meta_name: str,
) -> Isic2024Layout:
    """`layouts._match` for the images in one HDF5 file, named by key (`<hdf5>/<key>.jpg`): the
    same skips, checks and summary, each row matched to the key equal to its isic_id.

    Rows are taken one at a time and kept less their image id, equal ones as one object: past
    matching an image costs its key and two pointers."""
    present = {k: k for k in keys}  # each id as one string object, the HDF5 file's
    m = _Matches()
    seen: dict[str, MetaRow] = {}  # image id → its first row
    shared: dict[MetaRow, MetaRow] = {}
    n_rows = 0
    for row in rows:
        n_rows += 1
        image = present.get(row.image, row.image)
        blank = replace(row, image="")
        row = shared.setdefault(blank, blank)
        earlier = seen.get(image)
        if earlier is not None:
            if earlier != row:
                m.conflicts.append(repr(image))
            else:
                m.repeats += 1
            continue
        seen[image] = row
        if image not in present:
            m.missing.append(image)
            continue
        label, why = policy.label(row)
        if label is None:
            m.skipped.append((f"{hdf5}/{image}.jpg", why or "no class"))
        else:
            m.chosen[image], m.labels[image] = row, label
    m.skipped += [(f"{hdf5}/{k}.jpg", f"not listed in {meta_name}") for k in keys if k not in seen]
    del present, seen, shared
    _refuse_conflicts(m.conflicts, meta_name)
    _check_labels(m.labels, m.chosen, meta_name)
    chosen = [k for k in keys if k in m.chosen]
    if any(f"{a}.jpg" > f"{b}.jpg" for a, b in pairwise(chosen)):
        chosen.sort(key=lambda k: f"{k}.jpg")  # as their paths sort
    members = Members(hdf5, chosen, [m.chosen[k] for k in chosen], [m.labels[k] for k in chosen])
    return Isic2024Layout(
        (),
        members,
        skipped=sorted(m.skipped),
        summary=_summary(m, n_rows + len(bad_rows), bad_rows, [meta_name]),
    )


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
    layout = _match_keys(name, rows, bad, hdf5_keys(hdf5), policy, meta_name)
    meta.unlink()  # images/ holds images only
    layout.summary["layout"] = "isic2024"
    layout.prefix = files.prefix
    layout.outside, layout.ignored_copies = files.outside, files.ignored_copies
    layout.hidden, layout.damaged = files.hidden, files.damaged
    return layout
