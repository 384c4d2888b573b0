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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ..atomic import atomic_write
from ..config import RunConfig, save_config
from ..data.dataset import ManifestDataset, build_transform
from ..data.splits import Manifest, load_manifest
from ..errors import ConfigError, opt
from ..evaluation.measure import OperatingPoint
from ..evaluation.store import report_summary
from ..evaluation.subgroups import MIN_GROUP_N
from ..inference.metadata import context_rows, metadata_encoder, uses_patient_context
from ..locks import DirLock
from ..models.checkpoint import Checkpoint, atomic_save, load_checkpoint
from ..preprocessing import Preprocessing
from ..runtime import plan_precision, resolve_device
from ..training.callbacks import Callback
from ..training.pool import FeaturePool
from ..training.run import train_from_config
from .ensemble import create_ensemble, file_sha256
from .folds import (
    GROUP_BY,
    assign_folds,
    fold_groups,
    fold_manifest,
    folds_fingerprint,
    pool_records,
    record_group,
)
from .oof import (
    OOF_SPLIT,
    OOFMeasured,
    fit_operating_point,
    gather_oof,
    heldout_logits,
    measure_oof,
    plot_oof_subgroups,
    subgroup_columns,
    write_oof_csv,
)
from .report import CVReport, FoldResult

__all__ = ["CV_STATE", "OOF_SPLIT", "CVPlan", "CVResult", "FoldTraining", "cross_validate"]

CV_STATE = "cv_state.json"
_FORMAT = "skincls-cv-v1"


@dataclass
class CVResult:
    """What `cross_validate` wrote: the report and the paths of its artefacts."""

    cv_dir: Path
    report: CVReport
    ensemble: Path | None  # None for models with patient context
    oof_csv: Path
    refit: Path | None


def _locking_out(fn: Callable[..., CVResult]) -> Callable[..., CVResult]:
    """Run `fn` holding the CV folder's lock (as `train` holds its run dir): one writer at a time."""

    @functools.wraps(fn)
    def locked(config: RunConfig, *args: Any, **kwargs: Any) -> CVResult:
        cv_dir = Path(config.out or "runs/cv")
        advice = f"wait for it to finish, or give another {opt('out')}"
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
    by: list[str] | None = None,
    min_group_n: int = MIN_GROUP_N,
    group_by: str | None = None,
    progress: bool = True,
    backbone: nn.Module | None = None,
    preprocessing: Preprocessing | None = None,
    callbacks: list[Callback] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> CVResult:
    """K-fold cross-validation of the recipe in `config`, written to `config.out`.

    A chain of stages, each handing a record to the next: plan (folds, state, resume) → train the
    folds → gather their out-of-fold predictions → choose temperature and threshold on them →
    measure → ensemble → refit → report.

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
        by: Manifest columns to report subgroups of on the out-of-fold predictions (the report's
            `subgroups`, forest plots in `config.out`; `age_band` from `age`); checked first.
        min_group_n: Groups with fewer images are flagged and left out of the largest gap.
        group_by: Hold out whole values of this manifest column per fold (`folds.GROUP_BY`:
            site, source, patient, lesion, or any column): leave-site-out / leave-source-out
            folds; with K equal to the number of values, one value per fold.
        progress: Progress bars and per-epoch lines while training.
        backbone: A custom backbone (copied for every fold); `preprocessing` says what it needs.
        callbacks: Extra trainer callbacks for every fold.
        log: Receives one line per step ("fold 2/5: ...").

    Raises:
        ConfigError: `resume` without a CV to resume, a CV directory that holds another CV, an
            existing CV without `resume`, or a `by` column no pool image has a value of.
        DataError: no manifest, or too few groups for K folds (with `group_by`: too few values,
            or a fold whose training images would lack a class).
        LockError: another process writes into `config.out` (a CV or a training run).
    """
    start = time.perf_counter()
    if target_sensitivity is not None and threshold is not None:
        raise ConfigError("give a target sensitivity or a fixed threshold, not both")
    plan = plan_cv(config, folds, resume=resume, tta=tta, by=by, group_by=group_by)
    training = FoldTraining(progress, backbone, preprocessing, callbacks, log)
    completed = train_folds(plan, training)
    oof = gather_oof(plan.cv_dir, completed, len(plan.records))
    point = fit_operating_point(
        oof, plan.classes, calibrate=calibrate, target_sensitivity=target_sensitivity,
        threshold=threshold, tta=tta,
    )  # fmt: skip
    measured = measure_oof(
        oof, plan.fold, plan.classes, point, tta=tta, precision=plan.precision,
        n_bootstrap=n_bootstrap, seed=config.train.seed, columns=plan.subgroups,
        min_group_n=min_group_n,
    )  # fmt: skip
    plot_oof_subgroups(measured.report, plan.cv_dir)
    write_oof_csv(
        plan.cv_dir / "oof.csv", plan.records, plan.fold, oof, plan.classes, point, plan.groups
    )
    ensemble = None
    if not plan.config.model.patient_context:  # fused members: each keeps its own encoder
        ensemble = build_ensemble(plan, completed, point, measured, backbone)
    else:  # each fold's context comes from its own backbone's embeddings
        log("no ensemble.pt: the fold models take patient context, computed by each one's backbone")
    refitted = refit_model(plan, completed, point, training) if refit else None
    return write_report(plan, completed, measured, point, ensemble, refitted, start)


# -- plan -----------------------------------------------------------------------------------------
@dataclass
class CVPlan:
    """Where the CV stands: its pool of non-test images, their folds, and its saved state."""

    config: RunConfig
    folds: int
    cv_dir: Path
    manifest: Manifest
    records: list  # the pool's `Record`s, in pool order
    fold: np.ndarray  # each record's fold
    state: dict[str, Any]  # what cv_state.json holds
    resume: bool = False
    tta: bool = False
    subgroups: dict[str, list[str]] = field(default_factory=dict)  # `by` column → value per record
    group_by: str | None = None  # the column whose values folds hold out whole
    groups: list[str] = field(default_factory=list)  # what each record's fold keeps whole
    pool: FeaturePool = field(init=False)

    def __post_init__(self):
        self.pool = FeaturePool(self.manifest.root, self.manifest.classes, self.records)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes

    @property
    def precision(self) -> str:
        """What the recipe runs inference in (the held-out predictions' precision)."""
        t = self.config.train
        return plan_precision(t.precision, resolve_device(t.device)).inference

    def completed(self) -> dict[int, dict[str, Any]]:
        """The finished folds' entries in the state, by fold."""
        return {int(r["fold"]): r for r in self.state["completed"]}

    def fold_run(self, k: int) -> RunConfig:
        """Fold k's recipe: its own run directory and seed."""
        c = self.config
        train = c.train.model_copy(update={"seed": c.train.seed + k})
        return c.model_copy(update={"out": self.cv_dir / f"fold{k}", "train": train})

    def fold_action(self, k: int) -> str:
        """What fold k needs: "done" (finished earlier), "resume" (from its last.pt) or "train"."""
        if k in self.completed():
            return "done"
        return "resume" if self.resume and (self.fold_run(k).out / "last.pt").is_file() else "train"

    def finish_fold(self, entry: dict[str, Any]) -> None:
        """Record a finished fold in the state file (atomically rewritten)."""
        done = {**self.completed(), int(entry["fold"]): entry}
        self.state["completed"] = [done[i] for i in sorted(done)]
        self.save_state()

    def save_state(self) -> None:
        _save_state(self.cv_dir, self.state)


def plan_cv(
    config: RunConfig,
    folds: int,
    *,
    resume: bool = False,
    tta: bool = False,
    by: list[str] | None = None,
    group_by: str | None = None,
) -> CVPlan:
    """Assign the folds, open (or, with `resume`, check) the state, write folds.csv and config.json.

    The `by` and `group_by` columns are read (and refused) before anything is written."""
    manifest = load_manifest(config.data.data_dir)
    records = pool_records(manifest)
    subgroups = subgroup_columns(records, manifest.classes, by)
    fold = assign_folds(records, manifest.classes, folds, seed=config.train.seed, group_by=group_by)
    groups = fold_groups(records, group_by)
    cv_dir = Path(config.out or "runs/cv")
    signature = {
        "format": _FORMAT,
        "folds": folds,
        "assignment": folds_fingerprint(records, fold),
        "config": config.model_dump(mode="json", exclude={"out"}),
        "tta": tta,
        **({"group_by": group_by} if group_by else {}),
    }
    state = _open_state(cv_dir, signature, resume)
    _write_folds_csv(cv_dir / "folds.csv", records, fold, groups)
    save_config(config, cv_dir / "config.json")
    return CVPlan(
        config, folds, cv_dir, manifest, records, fold, state, resume, tta, subgroups,
        group_by, groups,
    )  # fmt: skip


# -- training the folds ---------------------------------------------------------------------------
@dataclass
class FoldTraining:
    """How every fold and the refit train, beyond the recipe: shared by the training stages."""

    progress: bool = True
    backbone: nn.Module | None = None
    preprocessing: Preprocessing | None = None
    callbacks: list[Callback] | None = None
    log: Callable[[str], None] = lambda _: None

    def train(self, run: RunConfig, manifest: Manifest, pool: FeaturePool, resume: bool):
        """`train_from_config` on `manifest`; a run not resumed starts over in its folder."""
        return train_from_config(
            run,
            progress=self.progress,
            resume=resume,
            overwrite=not resume,
            backbone=copy.deepcopy(self.backbone) if self.backbone is not None else None,
            preprocessing=self.preprocessing,
            callbacks=self.callbacks,
            manifest=manifest,
            feature_pool=pool,
        )


def train_folds(plan: CVPlan, training: FoldTraining) -> list[dict[str, Any]]:
    """Train every fold not finished yet (each entry saved as it ends); all folds' entries, in order."""
    n = plan.folds
    for k in range(n):
        action = plan.fold_action(k)
        if action == "done":
            entry = plan.completed()[k]
            _check_fold_file(plan.cv_dir, entry)
            training.log(f"fold {k + 1}/{n}: done earlier (best epoch {entry['best_epoch']}), kept")
            continue
        n_train, n_out = int((plan.fold != k).sum()), int((plan.fold == k).sum())
        training.log(
            f"fold {k + 1}/{n}: training on {n_train} images, holding out {n_out}"
            + (" (resuming from its last.pt)" if action == "resume" else "")
        )
        entry = _train_fold(plan, k, training, resume=action == "resume")
        plan.finish_fold(entry)
        training.log(
            f"fold {k + 1}/{n}: best epoch {entry['best_epoch']}; held-out {entry['oof_source']}"
        )
    completed = plan.completed()
    return [completed[k] for k in range(n)]


def _train_fold(plan: CVPlan, k: int, training: FoldTraining, *, resume: bool) -> dict[str, Any]:
    """Train fold k, save its held-out logits (`oof.npz`); its entry for the state file."""
    t0 = time.perf_counter()
    fm = fold_manifest(plan.manifest, plan.records, plan.fold, k)
    run = plan.fold_run(k)
    result = training.train(run, fm, plan.pool, resume)
    ckpt = load_checkpoint(result.best_checkpoint)
    encoder = metadata_encoder(ckpt)  # a fused model: its fold's own encoder (fitted on its train)
    tf = build_transform(ckpt.preprocessing)
    extra = None
    if encoder is not None and uses_patient_context(ckpt):  # from the held-out images only
        device = resolve_device(plan.config.train.device)
        model = ckpt.build_model(copy.deepcopy(training.backbone) if training.backbone else None)
        extra = context_rows(model.to(device), fm, "val", tf, device)
    held_out = ManifestDataset(fm, "val", tf, metadata=encoder, extra=extra)
    logits, source = heldout_logits(
        ckpt, held_out, plan.pool, plan.config.train, tta=plan.tta, backbone=training.backbone
    )
    rows = np.flatnonzero(plan.fold == k)
    with atomic_write(run.out / "oof.npz") as fh:
        np.savez(fh, rows=rows, logits=logits, labels=np.asarray(held_out.targets))
    return {
        "fold": k,
        "best_epoch": result.history.best_epoch,
        "checkpoint": f"fold{k}/best.pt",
        "sha256": file_sha256(result.best_checkpoint),
        "oof": f"fold{k}/oof.npz",
        "seconds": time.perf_counter() - t0,
        "n_train": int((plan.fold != k).sum()),
        "n_heldout": len(rows),
        "oof_source": source,
    }


# -- ensemble, refit, report ----------------------------------------------------------------------
def build_ensemble(
    plan: CVPlan,
    completed: list[dict[str, Any]],
    point: OperatingPoint,
    measured: OOFMeasured,
    backbone: nn.Module | None = None,
) -> Checkpoint:
    """The fold models as one checkpoint (ensemble.pt), every member at the out-of-fold temperature."""
    for entry in completed:
        _check_fold_file(plan.cv_dir, entry)
    choice = point.threshold_choice
    return create_ensemble(
        [plan.cv_dir / e["checkpoint"] for e in completed],
        plan.cv_dir / "ensemble.pt",
        temperatures=[point.temperature] * len(completed),
        backbone=backbone,
        threshold=point.threshold if len(plan.classes) == 2 else None,
        # The OOF threshold choice, restated for the ensemble's (already calibrated) output: T = 1.
        threshold_info=choice.model_copy(update={"temperature": 1.0}).model_dump()
        if choice
        else None,
        calibration=point.calibration.model_dump() if point.calibration else None,
        metrics={OOF_SPLIT: report_summary(measured.report)},
        train_config=plan.config.model_dump(mode="json"),
        ensemble={"cv": _cv_info(plan, completed)},
    )


@dataclass
class Refit:
    """The model refitted on every non-test image, and for how many epochs."""

    path: Path
    epochs: int


def refit_model(
    plan: CVPlan, completed: list[dict[str, Any]], point: OperatingPoint, training: FoldTraining
) -> Refit:
    """One model on all non-test images for the folds' median best epoch (refit.pt), at `point`."""
    epochs = max(1, round(statistics.median(e["best_epoch"] or 1 for e in completed)))
    training.log(f"refit: training on all {len(plan.records)} non-test images for {epochs} epochs")
    t = plan.config.train
    head = min(epochs, t.epochs)
    train = t.model_copy(
        update={"epochs": head, "finetune_epochs": max(0, epochs - t.epochs), "patience": None}
    )
    run = plan.config.model_copy(update={"out": plan.cv_dir / "refit", "train": train})
    again = (run.out / "last.pt").is_file() and plan.state.get("refit_started")
    plan.state["refit_started"] = True
    plan.save_state()
    everything = fold_manifest(plan.manifest, plan.records, plan.fold, None)
    training.train(run, everything, plan.pool, bool(again))
    # The last epoch's weights (no validation data: "best" would be the lowest training loss).
    data = dict(load_checkpoint(run.out / "last.pt").data)
    data.pop("training_state", None)
    choice = point.threshold_choice
    extra = {
        "threshold": point.threshold if len(plan.classes) == 2 else None,
        "threshold_info": choice.model_dump() if choice else None,
        "temperature": point.temperature,
        "calibration": point.calibration.model_dump() if point.calibration else None,
        "refit": {"epochs": epochs, "n_images": len(plan.records), "from_cv": str(plan.cv_dir)},
    }
    data.update(json.loads(json.dumps(extra)))
    atomic_save(data, plan.cv_dir / "refit.pt")
    return Refit(plan.cv_dir / "refit.pt", epochs)


def write_report(
    plan: CVPlan,
    completed: list[dict[str, Any]],
    measured: OOFMeasured,
    point: OperatingPoint,
    ensemble: Checkpoint | None,
    refit: Refit | None,
    start: float,
) -> CVResult:
    """cv_report.json (and the state marked finished); `start` is when the CV began (perf_counter)."""
    info = _cv_info(plan, completed)
    report = CVReport(
        folds=plan.folds,
        seed=info["seed"],
        n_images=info["n_images"],
        n_groups=len(set(plan.groups)),
        grouping=_grouping(plan.records, plan.group_by),
        fold_results=[
            FoldResult(metrics={m: fold.get(m) for m in measured.mean}, **_fold_fields(entry))
            for entry, fold in zip(completed, measured.per_fold)
        ],
        mean=measured.mean,
        std=measured.std,
        oof=measured.report,
        member_temperature=point.temperature,
        ensemble=str(ensemble.path) if ensemble else None,
        refit=str(refit.path) if refit else None,
        refit_epochs=refit.epochs if refit else None,
        oof_csv=str(plan.cv_dir / "oof.csv"),
        wall_seconds=time.perf_counter() - start,
    )
    with atomic_write(plan.cv_dir / "cv_report.json", "w") as fh:
        fh.write(report.model_dump_json(indent=2) + "\n")
    plan.state["finished"] = True
    plan.save_state()
    path = refit.path if refit else None
    ensemble_path = ensemble.path if ensemble else None
    return CVResult(plan.cv_dir, report, ensemble_path, plan.cv_dir / "oof.csv", path)


def _cv_info(plan: CVPlan, completed: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "folds": plan.folds,
        "seed": plan.config.train.seed,
        "best_epochs": [e["best_epoch"] for e in completed],
        "n_images": len(plan.records),
    }


# -- files ----------------------------------------------------------------------------------------
def _open_state(cv_dir: Path, signature: dict[str, Any], resume: bool) -> dict[str, Any]:
    """The CV's state: a new one, or (with `resume`) the saved one after checking it is this CV."""
    path = cv_dir / CV_STATE
    if not resume:
        if path.exists():
            raise ConfigError(
                f"{cv_dir} already holds a cross-validation; add {opt('resume=True')} to "
                f"continue it, or choose another {opt('out')}"
            )
        state = {**signature, "completed": [], "finished": False}
        _save_state(cv_dir, state)
        return state
    if not path.is_file():
        raise ConfigError(
            f"nothing to resume: {path} does not exist; run without {opt('resume=True')}"
        )
    state = json.loads(path.read_text())
    for key, value in signature.items():
        if state.get(key) != value:
            what = {"assignment": "fold assignment (data or seed changed)"}.get(key, key)
            raise ConfigError(
                f"cannot resume the cross-validation in {cv_dir}: its {what} differs from this "
                f"run's; resume with the same options, or choose another {opt('out')}"
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


def _fold_fields(entry: dict[str, Any]) -> dict[str, Any]:
    keys = ("fold", "n_train", "n_heldout", "best_epoch", "checkpoint", "sha256", "seconds")
    return {k: entry[k] for k in keys}


def _grouping(records, group_by: str | None = None) -> str:
    if group_by is not None:
        column = GROUP_BY.get(group_by, group_by)
        missing = sum(not r.column(column) for r in records)
        return f"whole {column} values held out per fold, lesions and patients joined" + (
            f"; {missing} images without a {column} kept in their own groups" if missing else ""
        )
    if any(getattr(r, "group", None) not in (None, "", -1) for r in records):
        return "group column"
    return "duplicate clusters" if any(r.cluster >= 0 for r in records) else "none (single images)"


def _write_folds_csv(path: Path, records, fold: np.ndarray, groups: list[str]) -> None:
    """Per pool image: its own group, the unit its fold held out whole (`fold_groups`), its fold."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "label", "group", "fold_group", "fold"])
    for r, k, g in zip(records, fold, groups):
        writer.writerow([r.path, r.label, record_group(r), g, int(k)])
    with atomic_write(path, "w", newline="") as fh:
        fh.write(buf.getvalue())
