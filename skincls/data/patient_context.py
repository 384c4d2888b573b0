"""Patient context: how an image relates to the same patient's other images ("ugly duckling").

Computed from one set of images at a time (one split: `contexts` never sees another), from their
image embeddings (a frozen backbone's features) and patient ids. Per image, as metadata columns
(`CONTEXT_COLUMNS`, numbers as text, "" where undefined) that the metadata encoder standardises:

- `patient_images`: log(1 + images of its patient in this set) (SIIM-ISIC 2020 winners' feature);
- `patient_distance`: Euclidean distance of its L2-normalised embedding to the mean of its
  patient's *other* images (undefined for a patient's only image);
- `patient_rank`: that distance's rank among the patient's images, 0 (most typical) to 1 (the
  outlier, the "ugly duckling").

An image without a patient id has no context (all three undefined).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["CONTEXT_COLUMNS", "patient_contexts"]

CONTEXT_COLUMNS = ("patient_images", "patient_distance", "patient_rank")


def patient_contexts(embeddings: np.ndarray, patients: Sequence[str]) -> list[dict[str, str]]:
    """One row of `CONTEXT_COLUMNS` per image, from this set's own images only.

    Args:
        embeddings: (N, D) image features, in the order of `patients`.
        patients: Patient id per image ("" where not recorded).
    """
    if len(embeddings) != len(patients):
        raise ValueError(f"{len(embeddings)} embeddings for {len(patients)} patient ids")
    emb = np.asarray(embeddings, dtype=np.float64).reshape(len(patients), -1)
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    rows: list[dict[str, str]] = [dict.fromkeys(CONTEXT_COLUMNS, "") for _ in patients]
    members: dict[str, list[int]] = {}
    for i, p in enumerate(patients):
        if p:
            members.setdefault(p, []).append(i)
    for idx in members.values():
        n = len(idx)
        count = f"{math.log1p(n):.6g}"
        if n == 1:
            rows[idx[0]]["patient_images"] = count
            continue
        group = emb[idx]
        others = (group.sum(0, keepdims=True) - group) / (n - 1)  # mean of the other images
        dist = np.linalg.norm(group - others, axis=1)
        ranks = np.argsort(np.argsort(dist, kind="stable"), kind="stable") / (n - 1)
        for i, d, r in zip(idx, dist, ranks):
            rows[i].update(
                patient_images=count, patient_distance=f"{d:.6g}", patient_rank=f"{r:.6g}"
            )
    return rows
