"""References: which images of a dataset are copies of a reference dataset that has metadata.

The default Kaggle dataset dropped HAM10000's lesion ids, but its benign images are HAM10000 images,
resized. Given the reference (`fetch(reference=[DIR or ARCHIVE, ...])`), every fetched image
that is a copy of a reference image (resized, recompressed, flipped or turned: the perceptual-hash
test of `dedup`, confirmed by a dHash) inherits that image's lesion and patient ids, so another photo
of the same lesion lands in the same split. The report says, per class, which source its images came
from, and warns when a class comes almost entirely from one source: a model can then learn the
source (camera, lighting, framing) rather than the lesion.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import warnings
import zipfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from ..atomic import atomic_write
from ..errors import DataError, opt
from .dedup import match_hashes, perceptual_hashes
from .ingest import to_rgb
from .layouts import MetadataLayout, make_selector
from .metadata import LabelPolicy, MetaRow
from .registry import list_datasets
from .splits import DATASET_JSON, MANIFEST_NAME, load_manifest

__all__ = [
    "DOMINANT_SHARE",
    "REFERENCE_CONFIRM_DISTANCE",
    "REFERENCE_DISTANCE",
    "Provenance",
    "Reference",
    "load_reference",
    "match_references",
    "reference_fingerprint",
]

# A class with at least this share of its images from one source, while another class has at most
# this share minus `_GAP`, is flagged: the source then tells the classes apart.
DOMINANT_SHARE = 0.9
_GAP = 0.3
# A copy in another dataset has been resized and re-encoded, often squashed to a square: looser than
# the within-dataset duplicate test (2 and 10 bits). Measured on synthetic lesions (192 px) and their
# resized, squashed, re-encoded (JPEG 75), flipped and turned copies: copies within 4 pHash and 11
# dHash bits, distinct lesions 10 or more pHash bits apart; on the development archive, look-alike
# different lesions differ in 17 or more dHash bits. A false match only joins two groups (a coarser
# split); a miss lets a lesion leak.
REFERENCE_DISTANCE = 6
REFERENCE_CONFIRM_DISTANCE = 12
_MAX_IMAGE_BYTES = 256 * 2**20
NO_MATCH = "no match"


@dataclass
class Reference:
    """A reference dataset: its name, and per image its metadata row and perceptual hashes."""

    name: str
    path: str
    rows: list[MetaRow]
    hashes: np.ndarray  # (M, 2, 8) uint64
    skipped: int = 0  # images that could not be decoded

    def describe(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "images": len(self.rows),
            "unreadable": self.skipped,
        }


@dataclass
class Provenance:
    """Which fetched images are copies of which reference's images.

    Attributes:
        keys: Per fetched image, the lesion/patient keys it inherits (empty when no match).
        sources: Per fetched image, the name of the reference it is a copy of, or None.
        lesion_ids, patient_ids: Per fetched image, the inherited ids ("" when none).
        ambiguous: Fetched images that match reference images of several lesions (all joined).
    """

    keys: list[list[str]]
    sources: list[str | None]
    lesion_ids: list[str]
    patient_ids: list[str]
    references: list[dict] = field(default_factory=list)
    ambiguous: int = 0
    max_distance: int = REFERENCE_DISTANCE
    confirm_distance: int | None = REFERENCE_CONFIRM_DISTANCE

    def report(self, labels: Sequence[str]) -> dict:
        """Per class, the images from each source; warnings for classes dominated by one source."""
        per_class: dict[str, Counter] = {}
        for label, src in zip(labels, self.sources):
            per_class.setdefault(label, Counter())[src or NO_MATCH] += 1
        share = {
            c: {s: n / sum(cnt.values()) for s, n in cnt.items()} for c, cnt in per_class.items()
        }
        names = sorted({s for s in self.sources if s})
        warn = []
        for c in sorted(per_class):
            total = sum(per_class[c].values())
            for s in names:
                mine = share[c].get(s, 0.0)
                others = {o: share[o].get(s, 0.0) for o in share if o != c}
                if mine >= DOMINANT_SHARE and others and min(others.values()) <= mine - _GAP:
                    low = min(others, key=others.get)
                    warn.append(
                        f"class {c}: {per_class[c][s]} of {total} images ({100 * mine:.0f}%) are "
                        f"copies of {s} images, against {100 * others[low]:.0f}% of {low}: a "
                        "model can learn the source instead of the lesion"
                    )
        return {
            "references": self.references,
            "max_distance": self.max_distance,
            "confirm_distance": self.confirm_distance,
            "matched": sum(1 for s in self.sources if s),
            "ambiguous": self.ambiguous,
            "per_class": {c: dict(sorted(cnt.items())) for c, cnt in sorted(per_class.items())},
            "warnings": warn,
        }


def reference_fingerprint(paths: Sequence[str | Path]) -> list[str]:
    """What a reference's matching depends on: each path's listing (names, sizes, times)."""
    out = []
    for p in map(Path, paths):
        h = hashlib.sha256(str(p.resolve()).encode())
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
        for f in files:
            st = f.stat()
            h.update(
                f"{f.relative_to(p) if f != p else f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode()
            )
        out.append(h.hexdigest())
    return out


def load_reference(
    path: str | Path,
    *,
    cache_dir: Path | None = None,
    on_progress: Callable[[str, int, int | None], None] | None = None,
) -> Reference:
    """Read a reference: an archive or folder with a known metadata file (HAM10000, ISIC 2019,
    ISIC 2020, …), or a data dir prepared by `skincls fetch` whose manifest has lesion/patient ids.

    Each image is decoded and hashed in memory (nothing is unpacked); the hashes are cached in
    `cache_dir` under the reference's fingerprint.

    Raises:
        DataError: missing, unreadable, or without lesion/patient ids.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{opt('reference')} {path} does not exist")
    cached = None
    if cache_dir is not None:
        cached = cache_dir / f"reference-{reference_fingerprint([path])[0][:24]}.npz"
        if cached.is_file():
            with np.load(cached, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                rows = [
                    MetaRow(
                        **{
                            **r,
                            "groups": tuple(r["groups"]),
                            "attributes": tuple(map(tuple, r.get("attributes", ()))),
                        }
                    )
                    for r in meta["rows"]
                ]
                return Reference(meta["name"], str(path), rows, npz["hashes"], meta["skipped"])
    rows, hashes, skipped = [], [], 0
    with contextlib.ExitStack() as stack:
        name, items = _reference_items(path, stack)
        for n, (row, read) in enumerate(items, 1):
            digest = _hash_bytes(read())
            if digest is None:
                skipped += 1
            else:
                rows.append(row)
                hashes.append(digest)
            if on_progress:
                on_progress("reference", n, len(items))
    if not rows:
        raise DataError(f"{opt('reference')} {path}: no readable image with lesion or patient ids")
    ref = Reference(name, str(path), rows, np.stack(hashes), skipped)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        meta = {"name": name, "skipped": skipped, "rows": [asdict(r) for r in rows]}
        with atomic_write(cached) as fh:  # a killed run never leaves half a cache file
            np.savez(fh, hashes=ref.hashes, meta=json.dumps(meta))
    return ref


def match_references(
    hashes: np.ndarray,
    references: Sequence[Reference],
    max_distance: int = REFERENCE_DISTANCE,
    confirm_distance: int | None = REFERENCE_CONFIRM_DISTANCE,
) -> Provenance:
    """Match fetched images (`hashes`, (N, 2, 8)) to the references' images; inherit their ids."""
    n = len(hashes)
    keys: list[set[str]] = [set() for _ in range(n)]
    sources: list[str | None] = [None] * n
    lesions, patients = [""] * n, [""] * n
    lesions_of: list[set[str]] = [set() for _ in range(n)]
    for ref in references:
        for i, j, _ in match_hashes(hashes, ref.hashes, max_distance, confirm_distance):
            row = ref.rows[j]
            keys[i].update(row.keys())
            sources[i] = sources[i] or ref.name
            lesions[i] = lesions[i] or row.lesion_id
            patients[i] = patients[i] or row.patient_id
            if row.lesion_id:
                lesions_of[i].add(row.lesion_id)
    return Provenance(
        [sorted(k) for k in keys],
        sources,
        lesions,
        patients,
        [r.describe() for r in references],
        ambiguous=sum(1 for ls in lesions_of if len(ls) > 1),
        max_distance=max_distance,
        confirm_distance=confirm_distance,
    )


def _hash_bytes(data: bytes) -> np.ndarray | None:
    """Perceptual hashes of an encoded image as the model sees it; None when it cannot be decoded."""
    if not data or len(data) > _MAX_IMAGE_BYTES:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                return perceptual_hashes(to_rgb(im))
    except Exception:  # broken, truncated, not an image, or a decompression bomb
        return None


def _reference_items(
    path: Path, stack: contextlib.ExitStack
) -> tuple[str, list[tuple[MetaRow, Callable[[], bytes]]]]:
    """The reference's name and, per image with ids, its row and a reader of its bytes (an
    archive stays open in `stack` while they are read)."""
    if path.is_dir() and (path / MANIFEST_NAME).is_file() and (path / DATASET_JSON).is_file():
        manifest = load_manifest(path)
        described = manifest.info.dataset
        title = described.title if described else None
        name = title or _layout_title(described.layout if described else None) or path.name
        items = [
            (
                MetaRow(Path(r.path).stem, r.label, r.lesion_id, r.patient_id),
                (lambda p=path / r.path: p.read_bytes()),
            )
            for r in manifest.records
            if r.lesion_id or r.patient_id
        ]
        return name, items
    select = make_selector("auto", LabelPolicy("multiclass"))
    if path.is_dir():
        files = {
            PurePosixPath(p.relative_to(path).as_posix()): p
            for p in path.rglob("*")
            if p.is_file() and not p.is_symlink()
        }
        sizes = {k: f.stat().st_size for k, f in files.items()}
        layout = select(list(files), sizes, lambda k: files[k].read_bytes())
        readers = {k: (lambda f=f: f.read_bytes()) for k, f in files.items()}
    else:
        try:
            zf = stack.enter_context(zipfile.ZipFile(path))
        except (OSError, zipfile.BadZipFile, UnicodeDecodeError) as exc:  # a name not UTF-8
            raise DataError(f"cannot open {opt('reference')} {path}: {exc}") from None
        entries = {PurePosixPath(i.filename): i for i in zf.infolist() if not i.is_dir()}
        fingerprints = {k: i.CRC for k, i in entries.items()}
        layout = select(list(entries), fingerprints, lambda k: _read_member(zf, entries[k]))
        readers = {k: (lambda i=i: _read_member(zf, i)) for k, i in entries.items()}
    if not isinstance(layout, MetadataLayout):
        raise DataError(
            f"{opt('reference')} {path} has no metadata file with lesion or patient ids "
            "(HAM10000, ISIC 2019 or 2020, or a data dir prepared by skincls fetch)"
        )
    name = _layout_title(layout.summary.get("layout")) or path.stem
    items = []
    for f in layout.files:
        row = layout.rows[str(f)]
        if row.lesion_id or row.patient_id:
            items.append((row, readers[PurePosixPath(*layout.prefix, *f.parts)]))
    return name, items


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > _MAX_IMAGE_BYTES:
        return b""
    try:
        return zf.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return b""


def _layout_title(layout: str | None) -> str | None:
    for spec in list_datasets():
        if spec.layout == layout:
            return spec.title.split(" (")[0]
    return None
