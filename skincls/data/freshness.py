"""Is a data dir up to date? A fingerprint of what a prepared data dir was made from, and the check.

A second `skincls fetch` with the same inputs and options finds the fingerprint in `dataset.json` and
writes nothing; anything else (another archive, a changed source folder, other options, a newer
preparation format, images deleted by hand) rebuilds the data dir.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..errors import DataError
from .hdf5 import hdf5_member
from .listing import list_source
from .splits import Manifest, load_manifest

__all__ = ["FORMAT_VERSION", "inputs_fingerprint", "up_to_date"]

# Bump when the preparation itself changes, so old data dirs are rebuilt rather than trusted.
FORMAT_VERSION = 5  # 5: a labels CSV path names that file only; rows resolve per file


def inputs_fingerprint(source: dict, archive, source_dir, options: dict) -> str:
    """Hash of what the result depends on: the input's content (or listing) and the options."""
    h = hashlib.sha256(json.dumps([FORMAT_VERSION, source.get("kind"), options]).encode())
    if archive is not None:
        with Path(archive).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    elif source_dir is not None:
        # The listing fetch copies from (links followed), so a changed link target is noticed, and
        # the entries it skips, so the list of skipped entries stays true.
        found = list_source(source_dir)
        for rel, st in sorted(found.stats.items()):
            line = f"{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n"
            h.update(line.encode("utf-8", "surrogateescape"))  # a name's bytes, even if not UTF-8
        h.update(json.dumps([sorted(found.hidden), sorted(found.unusable.items())]).encode())
    else:
        h.update(str(source.get("n")).encode())
    return h.hexdigest()


def up_to_date(data_dir: Path, fingerprint: str) -> Manifest | None:
    """The data dir's manifest when it was prepared from the same inputs and options, else None."""
    try:
        manifest = load_manifest(data_dir)
    except (OSError, ValueError, DataError):
        return None
    if manifest.info.fingerprint != fingerprint:
        return None
    # Someone may have deleted images by hand; then the data dir is rebuilt, not trusted.
    if not all(
        (data_dir / r.path).is_file() or hdf5_member(data_dir / r.path) for r in manifest.records
    ):
        return None
    return manifest
