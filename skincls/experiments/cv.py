"""Cross-validation: K grouped, stratified folds over the non-test images, each trained like `skincls train`.

Every non-test image is predicted once, by the fold model that did not train on it (out-of-fold). The
temperature and the operating threshold are chosen on those predictions, never on test; the report is
the one `evaluate` gives, plus per-fold values and their spread. The K fold models become one ensemble
checkpoint; optionally a refit trains one model on all non-test images for the epochs the folds chose.
A killed run resumes with the fold it was in (`cv_state.json` is rewritten atomically after each fold).
"""

from __future__ import annotations

import copy
import csv
import functools
import io
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..atomic import atomic_write
from ..config import RunConfig, save_config
from ..data.dataset import ManifestDataset, build_transform
from ..data.splits import load_manifest
from ..errors import ConfigError
from ..evaluation.evaluator import Evaluator, Outputs
from ..inference.decision import positive_index, softmax
from ..locks import DirLock
from ..models.checkpoint import atomic_save, load_checkpoint
from ..preprocessing import Preprocessing
from ..training.callbacks import Callback
from ..training.pool import FeaturePool
from ..training.run import train_from_config
from .ensemble import create_ensemble, file_sha256
from .folds import assign_folds, fold_manifest, folds_fingerprint, pool_records, record_group
from .oof import heldout_logits
from .report import CVReport, FoldResult, summarise_folds

__all__ = ["CV_STATE", "OOF_SPLIT", "CVResult", "cross_validate"]

CV_STATE = "cv_state.json"
OOF_SPLIT = "out-of-fold"
_FORMAT = "skincls-cv-v1"


@dataclass
class CVResult:
    """What `cross_validate` wrote: the report and the paths of its artefacts."""

    cv_dir: Path
    report: CVReport
    ensemble: Path
    oof_csv: Path
    refit: Path | None


def _locking_out(fn: Callable[..., CVResult]) -> Callable[..., CVResult]:
    """Run `fn` holding the CV folder's lock (as `train` holds its run dir): one writer at a time."""

    @functools.wraps(fn)
    def locked(config: RunConfig, *args: Any, **kwargs: Any) -> CVResult:
        cv_dir = Path(config.out or "runs/cv")
        advice = "wait for it to finish, or give another --out"
        with DirLock(cv_dir, "skincls cv", advice=advice) as lock:
            lock.clean_stale_temps()
            return fn(config, *args, **kwargs)

    return locked


@_locking_out
def cross_validate(
    config: RunConfig,
    folds: int = 5,
    *,
    resume: bool = False,
    refit: bool = False,
    calibrate: bool = True,
    target_sensitivity: float | None = None,
    threshold: float | None = None,
    tta: bool = False,
    n_bootstrap: int = 1000,
    progress: bool = True,
    backbone: nn.Module | None = None,
    preprocessing: Preprocessing | None = None,
    callbacks: list[Callback] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> CVResult:
    """K-fold cross-validation of the recipe in `config`, written to `config.out`.

    Args:
        config: The same recipe `skincls train` takes; `out` is the CV directory. Fold k trains with
            seed `config.train.seed + k`.
        folds: K (>= 2). Folds are grouped (see `folds.record_group`) and stratified, seeded with
            `config.train.seed`.
        resume: Continue the CV in `config.out`: completed folds are kept, the fold in progress
            continues from its `last.pt`.
        refit: Also train one model on all non-test images for the median best epoch of the folds.
        calibrate: Fit one temperature on the out-of-fold predictions (every member uses it).
        target_sensitivity: Choose the largest threshold reaching it on the out-of-fold predictions.
        threshold: Or a fixed threshold on P(positive).
        tta: Out-of-fold predictions over the 8 flips and turns (also what the threshold assumes).
        n_bootstrap: Bootstrap resamples for the out-of-fold confidence intervals.
        progress: Progress bars and per-epoch lines while training.
        backbone: A custom backbone (copied for every fold); `preprocessing` says what it needs.
        callbacks: Extra trainer callbacks for every fold.
        log: Receives one line per step ("fold 2/5: ...").

    Raises:
        ConfigError: `resume` without a CV to resume, a CV directory that holds another CV, or an
            existing CV without `resume`.
        DataError: no manifest, or too few groups for K folds.
        LockError: another process writes into `config.out` (a CV or a training run).
    """
    start = time.perf_counter()
    if target_sensitivity is not None and threshold is not None:
        raise ConfigError("give a target sensitivity or a fixed threshold, not both")
    manifest = load_manifest(config.data.data_dir)
    records = pool_records(manifest)
    fold = assign_folds(records, manifest.classes, folds, seed=config.train.seed)
    cv_dir = Path(config.out or "runs/cv")
    signature = {
        "format": _FORMAT,
        "folds": folds,
        "assignment": folds_fingerprint(records, fold),
        "config": config.model_dump(mode="json", exclude={"out"}),
        "tta": tta,
    }
    state = _open_state(cv_dir, signature, resume)
    _write_folds_csv(cv_dir / "folds.csv", records, fold)
    save_config(config, cv_dir / "config.json")
    pool = FeaturePool(manifest.root, manifest.classes, records)
    done: dict[int, dict[str, Any]] = {int(r["fold"]): r for r in state["completed"]}
    for k in range(folds):
        if k in done:
            _check_fold_file(cv_dir, done[k])
            log(f"fold {k + 1}/{folds}: done earlier (best epoch {done[k]['best_epoch']}), kept")
            continue
        fm = fold_manifest(manifest, records, fold, k)
        run = config.model_copy(
            update={
                "out": cv_dir / f"fold{k}",
                "train": config.train.model_copy(update={"seed": config.train.seed + k}),
            }
        )
        again = resume and (run.out / "last.pt").is_file()
        log(
            f"fold {k + 1}/{folds}: training on {int((fold != k).sum())} images, holding out "
            f"{int((fold == k).sum())}" + (" (resuming from its last.pt)" if again else "")
        )
        t0 = time.perf_counter()
        result = train_from_config(
            run,
            progress=progress,
            resume=again,
            overwrite=not again,  # a fold without last.pt starts over (its CV is resumed or new)
            backbone=copy.deepcopy(backbone) if backbone is not None else None,
            preprocessing=preprocessing,
            callbacks=callbacks,
            manifest=fm,
            feature_pool=pool,
        )
        ckpt = load_checkpoint(result.best_checkpoint)
        held_out = ManifestDataset(fm, "val", build_transform(ckpt.preprocessing))
        logits, source = heldout_logits(
            ckpt, held_out, pool, config.train, tta=tta, backbone=backbone
        )
        rows = np.flatnonzero(fold == k)
        with atomic_write(run.out / "oof.npz") as fh:
            np.savez(fh, rows=rows, logits=logits, labels=np.asarray(held_out.targets))
        done[k] = {
            "fold": k,
            "best_epoch": result.history.best_epoch,
            "checkpoint": f"fold{k}/best.pt",
            "sha256": file_sha256(result.best_checkpoint),
            "oof": f"fold{k}/oof.npz",
            "seconds": time.perf_counter() - t0,
            "n_train": int((fold != k).sum()),
            "n_heldout": len(rows),
            "oof_source": source,
        }
        state["completed"] = [done[i] for i in sorted(done)]
        _save_state(cv_dir, state)
        log(f"fold {k + 1}/{folds}: best epoch {result.history.best_epoch}; held-out {source}")

    logits, labels = _gather_oof(cv_dir, done, len(records))
    pre = load_checkpoint(cv_dir / done[0]["checkpoint"]).preprocessing
    # The evaluator's model is never run: every split below is given as precomputed logits.
    ev = Evaluator(
        nn.Identity(), classes=manifest.classes, preprocessing=pre, device="cpu", tta=tta
    )
    oof = Outputs(OOF_SPLIT, logits, labels)
    if calibrate:
        ev.calibrate(oof, OOF_SPLIT)
    if target_sensitivity is not None or threshold is not None:
        ev.choose_threshold(
            oof, OOF_SPLIT, target_sensitivity=target_sensitivity, threshold=threshold
        )
    oof_report = ev.evaluate(oof, OOF_SPLIT, n_bootstrap=n_bootstrap, seed=config.train.seed)
    per_fold = []
    for k in range(folds):
        sel = fold == k
        r = ev.evaluate(Outputs(f"fold {k}", logits[sel], labels[sel]), n_bootstrap=0)
        per_fold.append(r.model_dump())
    mean, std = summarise_folds(per_fold)

    oof_csv = cv_dir / "oof.csv"
    _write_oof_csv(oof_csv, records, fold, ev, logits, manifest.classes)
    members = [cv_dir / done[k]["checkpoint"] for k in range(folds)]
    for k in range(folds):
        _check_fold_file(cv_dir, done[k])
    summary = oof_report.model_dump(
        exclude={"per_class", "plots", "calibration", "threshold_choice"}
    )
    cv_info = {
        "folds": folds,
        "seed": config.train.seed,
        "best_epochs": [done[k]["best_epoch"] for k in range(folds)],
        "n_images": len(records),
    }
    ensemble = create_ensemble(
        members,
        cv_dir / "ensemble.pt",
        temperatures=[ev.temperature] * folds,
        backbone=backbone,
        threshold=ev.threshold if ev.binary else None,
        threshold_info=_choice_for_ensemble(ev),
        calibration=ev.calibration.model_dump() if ev.calibration else None,
        metrics={OOF_SPLIT: summary},
        train_config=config.model_dump(mode="json"),
        ensemble={"cv": cv_info},
    )
    refit_path, refit_epochs = None, None
    if refit:
        refit_epochs = max(1, round(statistics.median(e or 1 for e in cv_info["best_epochs"])))
        log(f"refit: training on all {len(records)} non-test images for {refit_epochs} epochs")
        refit_path = _refit(
            config, cv_dir, manifest, records, fold, pool, refit_epochs, state, ev, backbone,
            preprocessing, callbacks, progress,
        )  # fmt: skip
    report = CVReport(
        folds=folds,
        seed=config.train.seed,
        n_images=len(records),
        n_groups=len({record_group(r) for r in records}),
        grouping=_grouping(records),
        fold_results=[
            FoldResult(metrics={m: per_fold[k].get(m) for m in mean}, **_fold_fields(done[k]))
            for k in range(folds)
        ],
        mean=mean,
        std=std,
        oof=oof_report,
        member_temperature=ev.temperature,
        ensemble=str(ensemble.path),
        refit=str(refit_path) if refit_path else None,
        refit_epochs=refit_epochs,
        oof_csv=str(oof_csv),
        wall_seconds=time.perf_counter() - start,
    )
    with atomic_write(cv_dir / "cv_report.json", "w") as fh:
        fh.write(report.model_dump_json(indent=2) + "\n")
    state["finished"] = True
    _save_state(cv_dir, state)
    return CVResult(cv_dir, report, ensemble.path, oof_csv, refit_path)


def _open_state(cv_dir: Path, signature: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The CV's state: a new one, or (with `resume`) the saved one after checking it is this CV."""
    path = cv_dir / CV_STATE
    if not resume:
        if path.exists():
            raise ConfigError(
                f"{cv_dir} already holds a cross-validation; add --resume to continue it, or "
                "choose another --out"
            )
        state = {**signature, "completed": [], "finished": False}
        _save_state(cv_dir, state)
        return state
    if not path.is_file():
        raise ConfigError(f"nothing to resume: {path} does not exist; run without --resume")
    state = json.loads(path.read_text())
    for key, value in signature.items():
        if state.get(key) != value:
            what = {"assignment": "fold assignment (data or seed changed)"}.get(key, key)
            raise ConfigError(
                f"cannot resume the cross-validation in {cv_dir}: its {what} differs from this "
                "run's; resume with the same options, or choose another --out"
            )
    return state


def _save_state(cv_dir: Path, state: dict[str, Any]) -> None:
    with atomic_write(cv_dir / CV_STATE, "w") as fh:
        fh.write(json.dumps(state, indent=2) + "\n")


def _check_fold_file(cv_dir: Path, entry: dict[str, Any]) -> None:
    path = cv_dir / entry["checkpoint"]
    if not path.is_file() or file_sha256(path) != entry["sha256"]:
        raise ConfigError(
            f"{path} is missing or changed since its fold finished; delete {cv_dir / CV_STATE} "
            "to start the cross-validation over"
        )


def _gather_oof(
    cv_dir: Path, done: dict[int, dict[str, Any]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every fold's held-out logits put back in pool order: each image exactly once."""
    logits: np.ndarray | None = None
    labels = np.full(n, -1, dtype=np.int64)
    seen = np.zeros(n, dtype=np.int64)
    for k in sorted(done):
        with np.load(cv_dir / done[k]["oof"]) as z:
            rows, lg, lb = z["rows"], z["logits"], z["labels"]
        if logits is None:
            logits = np.zeros((n, *lg.shape[1:]), dtype=np.float32)
        logits[rows], labels[rows] = lg, lb
        seen[rows] += 1
    if logits is None or not (seen == 1).all():
        raise ConfigError(f"{cv_dir}: out-of-fold predictions do not cover every image once")
    return logits, labels


def _choice_for_ensemble(ev: Evaluator) -> dict[str, Any] | None:
    """The OOF threshold choice, restated for the ensemble's output (already calibrated: T = 1)."""
    if ev.threshold_choice is None:
        return None
    return ev.threshold_choice.model_copy(update={"temperature": 1.0}).model_dump()


def _fold_fields(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("fold", "n_train", "n_heldout", "best_epoch", "checkpoint", "sha256", "seconds")
    return {k: entry[k] for k in keys}


def _grouping(records) -> str:
    if any(getattr(r, "group", None) not in (None, "", -1) for r in records):
        return "group column"
    return "duplicate clusters" if any(r.cluster >= 0 for r in records) else "none (single images)"


def _write_folds_csv(path: Path, records, fold: np.ndarray) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "group", "fold"])
    for r, k in zip(records, fold):
        writer.writerow([r.path, r.label, record_group(r), int(k)])
    with atomic_write(path, "w", newline="") as fh:
        fh.write(buf.getvalue())


def _write_oof_csv(path: Path, records, fold, ev: Evaluator, logits, classes) -> None:
    """One row per non-test image: its fold, calibrated probabilities and the decision at the threshold."""
    from ..inference.decision import predict_labels

    probs = softmax(logits, ev.temperature)
    pred = predict_labels(probs, ev.threshold if ev.binary else None, positive_index(classes))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "group", "fold", *(f"p_{c}" for c in classes), "predicted"])
    for r, k, p, y in zip(records, fold, probs, pred):
        writer.writerow(
            [r.path, r.label, record_group(r), int(k), *(f"{v:.6f}" for v in p), classes[y]]
        )
    with atomic_write(path, "w", newline="") as fh:
        fh.write(buf.getvalue())


def _refit(
    config, cv_dir, manifest, records, fold, pool, epochs, state, ev, backbone, preprocessing,
    callbacks, progress,
) -> Path:  # fmt: skip
    """One model on all non-test images for `epochs` (head + fine-tuning as the recipe splits them)."""
    t = config.train
    head = min(epochs, t.epochs)
    train = t.model_copy(
        update={"epochs": head, "finetune_epochs": max(0, epochs - t.epochs), "patience": None}
    )
    run = config.model_copy(update={"out": cv_dir / "refit", "train": train})
    again = (run.out / "last.pt").is_file() and state.get("refit_started")
    state["refit_started"] = True
    _save_state(cv_dir, state)
    train_from_config(
        run,
        progress=progress,
        resume=bool(again),
        overwrite=not again,
        backbone=copy.deepcopy(backbone) if backbone is not None else None,
        preprocessing=preprocessing,
        callbacks=callbacks,
        manifest=fold_manifest(manifest, records, fold, None),
        feature_pool=pool,
    )
    # The last epoch's weights (no validation data: "best" would be the lowest training loss).
    data = dict(load_checkpoint(run.out / "last.pt").data)
    data.pop("training_state", None)
    extra = {
        "threshold": ev.threshold if ev.binary else None,
        "threshold_info": ev.threshold_choice.model_dump() if ev.threshold_choice else None,
        "temperature": ev.temperature,
        "calibration": ev.calibration.model_dump() if ev.calibration else None,
        "refit": {"epochs": epochs, "n_images": len(records), "from_cv": str(cv_dir)},
    }
    data.update(json.loads(json.dumps(extra)))
    path = cv_dir / "refit.pt"
    atomic_save(data, path)
    return path
