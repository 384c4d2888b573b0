"""Layouts: find a dataset's metadata file in a source tree and match its rows to image files.

Class-folder sources (`split/class/file`) are read by `ingest.select_layout`. Metadata sources name
each image by id in a CSV (HAM10000, ISIC 2019, ISIC 2020, or any `labels_csv`): here the CSV is
found and parsed before anything is unpacked, each row is matched to one file, and only the files
that get a class are taken. A file found twice (the HAM10000 archive holds a lower-case copy of
both image folders) is taken once and the copy reported.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from ..errors import DataError, opt
from .cells import formula_start
from .clinical import LABEL_MAPS, LABEL_NOTES, parse_ddi, parse_fitzpatrick17k, parse_pad_ufes20
from .ingest import IMAGE_SUFFIXES, Candidate, Layout, select_layout
from .metadata import (
    MALIGNANT,
    LabelPolicy,
    MetaRow,
    parse_ham10000,
    parse_isic2019,
    parse_isic2020,
    parse_labels_csv,
)

__all__ = [
    "LabelsCsv",
    "MetadataLayout",
    "Reader",
    "Selector",
    "detect_layout",
    "layout_skipped",
    "make_selector",
]

Reader = Callable[[PurePosixPath], bytes]
"""Reads one file of the source tree (an archive member or a file under the source folder)."""
Selector = Callable[[Iterable[PurePosixPath], "dict | None", "Reader | None"], Layout]
"""`(paths, fingerprints, read) -> Layout`: picks the dataset's files from a source tree."""
_SHOWN_MISSING = 20
_SHOWN = 10  # lesions named as examples in dataset.json


@dataclass
class LabelsCsv:
    """A `labels_csv` file: its bytes, name and the columns to read."""

    data: bytes
    name: str
    image_column: str = "image"
    label_column: str = "label"
    group_columns: tuple[str, ...] | None = None


@dataclass
class MetadataLayout(Layout):
    """A layout whose classes come from a metadata file, not from folder names.

    Attributes:
        rows: The metadata row of each chosen file (keys: `files` entries as strings).
        labels: The class of each chosen file.
        skipped: `(source path, reason)` for image files left out (not listed, no class, ambiguous).
        summary: What the metadata held and how it matched, for `dataset.json`.
    """

    rows: dict[str, MetaRow] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    summary: dict = field(default_factory=dict)

    def candidates(self) -> list[Candidate]:
        """The chosen files with the class and row their metadata gives (no source split)."""
        return [Candidate(str(f), None, self.labels[str(f)], self.rows[str(f)]) for f in self.files]


def layout_skipped(layout: Layout) -> list[tuple[str, str]]:
    """Every entry of the source tree the layout left out, with the reason (damaged files aside)."""
    out = [
        (p, "hidden file or folder (name starts with '.' or is __MACOSX)") for p in layout.hidden
    ]
    out += sorted(layout.unusable.items())
    out += [(p, "outside the split/class/file layout") for p in layout.outside]
    return out + list(getattr(layout, "skipped", []))


def _named(paths: Sequence[PurePosixPath], name: str) -> list[PurePosixPath]:
    """Files called `name` (any case), shallowest first."""
    found = [p for p in paths if p.name.lower() == name.lower()]
    return sorted(found, key=lambda p: (len(p.parts), str(p)))


def _find_ham10000(paths, read):
    for csv_path in _named(paths, "HAM10000_metadata.csv"):
        return csv_path.parent, parse_ham10000(read(csv_path), str(csv_path)), [], [csv_path]
    return None


def _find_isic2019(paths, read):
    for gt in _named(paths, "ISIC_2019_Training_GroundTruth.csv"):
        meta = [
            p for p in _named(paths, "ISIC_2019_Training_Metadata.csv") if p.parent == gt.parent
        ]
        rows, bad = parse_isic2019(
            read(gt), read(meta[0]) if meta else None, (str(gt), str(meta[0]) if meta else "")
        )
        return gt.parent, rows, bad, [gt, *meta[:1]]
    return None


def _find_isic2020(paths, read):
    for csv_path in _named(paths, "train.csv"):
        data = read(csv_path)
        if {"image_name", "patient_id", "diagnosis"} <= _header(data):
            return csv_path.parent, parse_isic2020(data, str(csv_path)), [], [csv_path]
    return None


def _header(data: bytes) -> set[str]:
    head = data[:4096].decode("utf-8", "replace").splitlines()[:1]
    return {c.strip().strip('"').lstrip("\ufeff") for c in head[0].split(",")} if head else set()


def _find_pad_ufes20(paths, read):
    for csv_path in _named(paths, "metadata.csv"):
        data = read(csv_path)
        if {"img_id", "diagnostic", "patient_id", "lesion_id"} <= _header(data):
            return csv_path.parent, parse_pad_ufes20(data, str(csv_path)), [], [csv_path]
    return None


def _find_ddi(paths, read):
    for csv_path in _named(paths, "ddi_metadata.csv"):
        return csv_path.parent, parse_ddi(read(csv_path), str(csv_path)), [], [csv_path]
    return None


def _find_fitzpatrick17k(paths, read):
    for csv_path in _named(paths, "fitzpatrick17k.csv"):
        rows, bad = parse_fitzpatrick17k(read(csv_path), str(csv_path))
        return csv_path.parent, rows, bad, [csv_path]
    return None


# layout name → (finder, the file people should look for when it is missing)
_FINDERS = {
    "ham10000": (_find_ham10000, "HAM10000_metadata.csv"),
    "isic2019": (_find_isic2019, "ISIC_2019_Training_GroundTruth.csv"),
    "isic2020": (_find_isic2020, "train.csv with image_name, patient_id and diagnosis columns"),
    "pad_ufes20": (
        _find_pad_ufes20,
        "metadata.csv with patient_id, lesion_id, diagnostic and img_id columns",
    ),
    "ddi": (_find_ddi, "ddi_metadata.csv"),
    "fitzpatrick17k": (_find_fitzpatrick17k, "fitzpatrick17k.csv"),
}


def detect_layout(paths: Iterable[PurePosixPath], read: Reader) -> str:
    """The layout a source tree is in: the first metadata layout whose file is there, else folders."""
    paths = list(paths)
    for name, (finder, _) in _FINDERS.items():
        if finder(paths, read) is not None:
            return name
    return "folders"


def make_selector(
    layout: str,
    policy: LabelPolicy | None = None,
    labels_csv: LabelsCsv | None = None,
    *,
    task_given: bool = False,
) -> Selector:
    """A selector for `ingest`: picks the dataset's files and their classes from a source tree.

    Args:
        layout: `folders`, a metadata layout (`ham10000`, `isic2019`, `isic2020`) or `auto`
            (a known metadata file if there is one, else class folders). With `labels_csv` the
            layout is that file's.
        policy: How diagnoses become classes (binary by default).
        labels_csv: A labels CSV file (`fetch(labels_csv=...)`).
        task_given: The user chose the task: a class-folder source then is an error, since its
            classes are its folder names.
    """
    policy = policy or LabelPolicy()

    def select(paths, fingerprints=None, read=None) -> Layout:
        paths = [p for p in paths if not _hidden(p.parts)]
        fp = fingerprints or {}
        if labels_csv is not None:
            rows = parse_labels_csv(
                labels_csv.data,
                labels_csv.name,
                image_column=labels_csv.image_column,
                label_column=labels_csv.label_column,
                group_columns=labels_csv.group_columns,
            )
            found = _match(PurePosixPath(), rows, [], paths, fp, policy, [labels_csv.name], True)
            found.summary["layout"] = "labels_csv"
            return found
        name = layout
        if name == "auto":
            name = detect_layout(paths, _need(read)) if read is not None else "folders"
        if name == "folders":
            if task_given:
                raise DataError(
                    f"{opt('task')} and {opt('malignant')} apply to datasets with diagnoses "
                    f"(HAM10000, ISIC, {opt('labels_csv')}); this source is in class-folder "
                    "layout, whose classes are its folder names"
                )
            return select_layout(paths, fingerprints)
        finder, wanted = _FINDERS[name]
        found = finder(paths, _need(read))
        if found is None:
            raise DataError(f"no {wanted} in the source: is it the {name} dataset?")
        root, rows, bad, meta_files = found
        out = _match(root, rows, bad, paths, fp, policy, [str(p) for p in meta_files], False)
        out.summary["layout"] = name
        out.summary.update(_label_record(name, out, policy))
        return out

    return select


def _label_record(name: str, layout: MetadataLayout, policy: LabelPolicy) -> dict:
    """How a dataset's own labels became codes and classes (`clinical.LABEL_MAPS`), and in the
    binary task the images whose class by the map differs from the dataset's own label."""
    out: dict = {}
    if name in LABEL_MAPS:
        out = {"label_map": dict(LABEL_MAPS[name]), "label_notes": list(LABEL_NOTES[name])}
    if policy.task == "binary" and not policy.as_given:
        differ = Counter(
            r.diagnosis
            for r in layout.rows.values()
            if r.malignant is not None
            and r.diagnosis in policy.mapping
            and (policy.mapping[r.diagnosis] == MALIGNANT) != r.malignant
        )
        if differ:
            out["label_disagreements"] = dict(sorted(differ.items()))
    return out


def _need(read: Reader | None) -> Reader:
    if read is None:
        raise DataError("a metadata layout needs to read its CSV file")
    return read


def _hidden(parts: Sequence[str]) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in parts)


@dataclass
class _Matches:
    """Metadata rows matched to files so far (see `_match`)."""

    chosen: dict[PurePosixPath, MetaRow] = field(default_factory=dict)
    labels: dict[PurePosixPath, str] = field(default_factory=dict)
    claimed: dict[PurePosixPath, MetaRow] = field(default_factory=dict)  # file → the row naming it
    copies: Counter = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    repeats: int = 0  # rows naming a file an earlier row names the same way

    def add(self, row: MetaRow, found: list[PurePosixPath], fingerprints, policy) -> None:
        """Take the file(s) one row names (`found`, shallowest first), or say why not."""
        if len({fingerprints.get(p) for p in found}) > 1:
            for p in found:
                self.skipped.append((str(p), f"several different files are image {row.image!r}"))
            return
        # A file two rows name (`imgs/x.png` and `x`) gets one label, never the last row's.
        taken = [p for p in found if p in self.claimed]
        if taken:
            earlier = self.claimed[taken[0]]
            if replace(earlier, image="") == replace(row, image=""):
                self.repeats += 1
            else:
                self.conflicts.append(f"{taken[0]} (rows {earlier.image!r} and {row.image!r})")
            return
        self.claimed.update(dict.fromkeys(found, row))
        first = found[0]
        for p in found[1:]:  # byte-identical copies elsewhere in the tree
            self.copies[str(p.parent)] += 1
        label, why = policy.label(row)
        if label is None:
            self.skipped.append((str(first), why or "no class"))
            return
        self.chosen[first] = row
        self.labels[first] = label


def _match(
    root: PurePosixPath,
    rows: list[MetaRow],
    bad_rows: list[tuple[str, str]],
    paths: list[PurePosixPath],
    fingerprints: dict,
    policy: LabelPolicy,
    meta_files: list[str],
    by_path: bool,
) -> MetadataLayout:
    """Match metadata rows to the image files under `root`; classes by `policy`."""
    images = [
        p
        for p in paths
        if p.suffix.lower() in IMAGE_SUFFIXES and root in (p.parent, *p.parents) and p != root
    ]
    m = _match_rows(rows, images, fingerprints, policy, by_path)
    listed = set(m.chosen) | {PurePosixPath(p) for p, _ in m.skipped}
    copy_dirs = set(m.copies)
    for p in images:
        if p not in listed and str(p.parent) not in copy_dirs:
            m.skipped.append((str(p), f"not listed in {meta_files[0]}"))
    _refuse_conflicts(m.conflicts, meta_files[0])
    _check_labels(m.labels, m.chosen, meta_files[0])
    n_root = len(root.parts)
    rel = {p: PurePosixPath(*p.parts[n_root:]) for p in m.chosen}
    return MetadataLayout(
        root.parts,
        sorted(rel.values()),
        ignored_copies=dict(sorted(m.copies.items())),
        rows={str(rel[p]): r for p, r in m.chosen.items()},
        labels={str(rel[p]): m.labels[p] for p in m.chosen},
        skipped=sorted(m.skipped),
        summary=_summary(m, len(rows) + len(bad_rows), bad_rows, meta_files),
    )


def _refuse_conflicts(conflicts: list[str], source: str) -> None:
    """Images two rows of `source` describe differently: refused, a few named."""
    if conflicts:
        shown = "; ".join(sorted(set(conflicts))[:5])
        more = len(set(conflicts)) - 5
        raise DataError(
            f"{source} describes image(s) {shown}{f' (and {more} more)' if more > 0 else ''} "
            "twice, differently; fix the file"
        )


def _match_rows(
    rows: list[MetaRow],
    images: list[PurePosixPath],
    fingerprints: dict,
    policy: LabelPolicy,
    by_path: bool,
) -> _Matches:
    """Each row's file(s) among `images` (see `_lookup`), taken with a class or skipped with why."""
    by_stem: dict[str, list[PurePosixPath]] = {}
    by_name: dict[str, list[PurePosixPath]] = {}
    for p in images:
        by_stem.setdefault(p.stem, []).append(p)
        by_name.setdefault(p.name, []).append(p)
    m = _Matches()
    seen: dict[str, MetaRow] = {}
    for row in rows:
        if row.image in seen:
            if seen[row.image] != row:
                m.conflicts.append(repr(row.image))
            else:
                m.repeats += 1
            continue
        seen[row.image] = row
        found = _lookup(row.image, by_stem, by_name, by_path)
        if found:
            m.add(row, sorted(found, key=lambda p: (len(p.parts), str(p))), fingerprints, policy)
        else:
            m.missing.append(row.image)
    return m


def _summary(
    m: _Matches,
    n_rows: int,
    bad_rows: list[tuple[str, str]],
    meta_files: list[str],
    counted: Callable[[], Iterable[tuple[MetaRow, str, int]]] | None = None,
) -> dict:
    """What the metadata held and how its rows matched (`MetadataSummary`, less the layout).

    `counted()` gives the chosen images as (row, class, number of images) (by default one
    triple an image, from `m`): rows shared by many images are counted once each."""
    if counted is None:
        counted = lambda: ((r, m.labels[p], 1) for p, r in m.chosen.items())  # noqa: E731
    diagnoses, classes = Counter(), Counter()
    for row, label, n in counted():
        diagnoses[row.diagnosis] += n
        classes[label] += n
    return {
        "metadata_files": meta_files,
        "rows": n_rows,
        "rows_used": len(m.chosen),
        "rows_repeating_an_image": m.repeats,
        "rows_without_image": len(m.missing),
        "rows_without_image_examples": m.missing[:_SHOWN_MISSING],
        "rows_unreadable": [list(b) for b in bad_rows],
        "diagnoses": dict(sorted(diagnoses.items())),
        "classes": dict(sorted(classes.items())),
        **_lesion_conflicts(counted),
    }


def _lookup(image: str, by_stem, by_name, by_path: bool) -> list[PurePosixPath]:
    """Files a row's image value names: a stem (`ISIC_0027419`), a file name or a relative path.

    A path names that file only: its folders must match (an absolute path must end with the file's
    path in the source); its last part is matched as a bare name is: as a file name, else as a stem.
    """
    if not by_path:
        return list(by_stem.get(image, []))
    value = PurePosixPath(image.replace("\\", "/").removeprefix("./"))
    if value.is_absolute():
        return [p for p in by_name.get(value.name, []) if value.parts[-len(p.parts) :] == p.parts]
    n = len(value.parts)
    for found in (by_name.get(value.name), by_stem.get(value.name), by_stem.get(value.stem)):
        here = [p for p in found or [] if p.parts[-n:-1] == value.parts[:-1]]
        if here:
            return here
    return []


def _check_labels(labels: dict, rows: dict[PurePosixPath, MetaRow], source: str) -> None:
    """No two classes whose names differ only in case; no class or id a spreadsheet runs."""
    counts = Counter(labels.values())
    folded: dict[str, list[str]] = {}
    for label in sorted(counts):
        folded.setdefault(label.casefold(), []).append(label)
    for names in folded.values():
        if len(names) > 1:
            # One class spelt two ways, or two classes? Either guess trains on a wrong answer.
            shown = " and ".join(f"{n} ({_rows(counts[n])})" for n in names)
            raise DataError(
                f"labels {shown} in {source} differ only in case: change them to one spelling to "
                "merge them, or to clearly different names, and run fetch again"
            )

    def values() -> Iterator[tuple[str, str]]:  # made as iterated: no list or count per value
        yield from (("label", v) for v in labels.values())
        yield from ((k, getattr(r, k)) for r in rows.values() for k in ("lesion_id", "patient_id"))

    found = next((v for v in values() if formula_start(v[1])), None)
    if found:  # only the value refused is counted
        (what, value), n, char = found, sum(v == found for v in values()), formula_start(found[1])
        raise DataError(
            f"{what} {value!r} ({_rows(n)} of {source}) starts with {char!r}: a spreadsheet "
            "opening skincls's CSVs would run it as a formula (CSV injection); change it in "
            f"{source} and run fetch again"
        )


def _rows(n: int) -> str:
    return f"{n} row{'s' * (n != 1)}"


def _lesion_conflicts(counted: Callable[[], Iterable[tuple[MetaRow, str, int]]]) -> dict:
    """Lesions whose photos carry different diagnoses (a lesion has one): counts and examples.

    A first pass keeps one diagnosis a lesion; only lesions seen with another are counted."""
    seen: dict[str, str] = {}
    several = set()
    for r, _, _ in counted():
        if r.lesion_id and seen.setdefault(r.lesion_id, r.diagnosis) != r.diagnosis:
            several.add(r.lesion_id)
    del seen
    dx: dict[str, Counter] = {}
    classes: dict[str, set] = {}
    for r, label, n in counted():
        if r.lesion_id in several:
            dx.setdefault(r.lesion_id, Counter())[r.diagnosis] += n
            classes.setdefault(r.lesion_id, set()).add(label)
    several = sorted(several)
    return {
        "lesions_with_several_diagnoses": len(several),
        "lesions_with_several_classes": sum(len(classes[k]) > 1 for k in several),
        "lesion_conflict_examples": {k: dict(sorted(dx[k].items())) for k in several[:_SHOWN]},
    }
