"""`skincls fetch`: prepare a dataset and show what was kept, skipped, de-duplicated and moved."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.markup import escape
from rich.table import Table

from ..data.download import DEFAULT_DATASET, default_cache_dir
from ._common import console, friendly_errors

if TYPE_CHECKING:
    from ..data.info import DatasetInfo

# Constants of skincls.data.dedup, .info and .splits, written out: those modules load numpy,
# scikit-learn and pydantic, which `--help` must not wait for (tests/cli/test_lazy_imports.py checks
# that they agree).
DEFAULT_NEAR_DUP_DISTANCE = 2
DATASET_JSON = "dataset.json"
MANIFEST_NAME = "manifest.csv"
SKIPPED_NAME = "skipped.csv"


def _default_cache_dir_shown() -> str:
    """The default cache dir for the help, the home folder written as `~` (same on every machine)."""
    try:
        path = default_cache_dir()
        return "~/" + path.relative_to(Path.home()).as_posix()
    except ValueError:  # XDG_CACHE_HOME outside the home folder
        return str(path)
    except RuntimeError:  # no home folder at all
        return "none: set XDG_CACHE_HOME or --cache-dir"


@click.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help=f"Where images/, {MANIFEST_NAME} and {DATASET_JSON} are written.",
)
@click.option(
    "--dataset",
    default=None,
    help=f"Kaggle OWNER/NAME or a known name (`skincls datasets`), downloaded when no other source "
    f"is given [default: {DEFAULT_DATASET}]. With --archive/--source-dir/--synthetic: read (or "
    "generate) the source in that dataset's layout instead of detecting it.",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Offline: a zip as Kaggle serves it (split/class/*.jpg; a second data/ copy is ignored).",
)
@click.option(
    "--source-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Offline: a folder in split/class/*.jpg (or class/*.jpg) layout; symbolic links are followed.",
)
@click.option(
    "--synthetic",
    type=click.IntRange(min=4),
    default=None,
    help="Generate N synthetic lesion images instead of downloading (offline).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help=f"Where Kaggle downloads are kept and reused [{_default_cache_dir_shown()}].",
)
@click.option("--force", is_flag=True, help="Download and prepare again even when up to date.")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of training images held out for validation.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share held out for test when the source has no test split.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for splits and synthetic data."
)
@click.option(
    "--near-dup-distance",
    type=click.IntRange(-1, 16),
    default=DEFAULT_NEAR_DUP_DISTANCE,
    show_default=True,
    help="Max pHash Hamming distance (bits) for near duplicates; -1 turns them off.",
)
@click.option(
    "--task",
    type=click.Choice(["binary", "multiclass"]),
    default=None,
    help="For datasets with diagnoses: benign vs malignant by the documented map, or one class per "
    "diagnosis [default: binary].",
)
@click.option(
    "--malignant",
    default=None,
    metavar="CODES",
    help="Binary task: the diagnosis codes counted as malignant, comma-separated "
    "[default: mel,bcc,akiec,scc]; the other known codes count as benign.",
)
@click.option(
    "--labels-csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Any dataset: a CSV naming each image (file name, stem or relative path) and its label, "
    "with optional group columns.",
)
@click.option(
    "--image-column", default="image", show_default=True, help="--labels-csv: the image column."
)
@click.option(
    "--label-column", default="label", show_default=True, help="--labels-csv: the label column."
)
@click.option(
    "--group-column",
    "group_columns",
    multiple=True,
    help="--labels-csv: a column whose shared values keep images in one split (repeatable) "
    "[default: lesion_id, patient_id and group, where present].",
)
@click.option(
    "--reference",
    "references",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="A dataset with lesion/patient ids (archive, folder or prepared data dir, e.g. HAM10000): "
    "images that are copies of its images inherit their ids, and the report says per class which "
    "source the images came from (repeatable).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Processes that decode and hash the images; the result does not depend on it "
    "[default: every core].",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def fetch(
    data_dir,
    dataset,
    archive,
    source_dir,
    synthetic,
    cache_dir,
    force,
    val_fraction,
    test_fraction,
    seed,
    near_dup_distance,
    task,
    malignant,
    labels_csv,
    image_column,
    label_column,
    group_columns,
    references,
    workers,
    quiet,
):
    """Prepare a dataset: verified images, leak-free splits and the manifest every later step reads.

    With no source option the Kaggle dataset is downloaded (credentials: KAGGLE_API_TOKEN,
    ~/.kaggle/access_token or ~/.kaggle/kaggle.json). Running it again with the same inputs is a no-op.
    """
    from ..data.fetch import fetch as run_fetch

    with _fetch_progress(quiet) as on_progress:
        report = run_fetch(
            data_dir,
            source_dir=source_dir,
            archive=archive,
            synthetic=synthetic,
            dataset=dataset,
            cache_dir=cache_dir,
            force=force,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            near_dup_distance=near_dup_distance,
            on_progress=on_progress,
            task=task,
            malignant=malignant.split(",") if malignant is not None else None,
            labels_csv=labels_csv,
            image_column=image_column,
            label_column=label_column,
            group_columns=list(group_columns) or None,
            reference=list(references) or None,
            workers=workers,
        )
    # From dataset.json: the manifest is read only where an old dataset.json lacks the counts.
    _print_counts(
        report.data_dir, report.info.classes, report.info.counts or report.manifest.counts()
    )
    _print_fetch_details(report)


@contextlib.contextmanager
def _fetch_progress(quiet: bool):
    """A rich progress bar per fetch stage, fed by the library's (stage, done, total) callback."""
    if quiet:
        yield None
        return
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    labels = {
        "download": "downloading",
        "extract": "extracting",
        "copy": "copying",
        "verify": "verifying + hashing",
        "reference": "hashing reference",
    }
    tasks: dict[str, int] = {}
    bars = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),  # the ETA; blank while the total is unknown (a download)
        console=console,
    )

    def update(stage: str, done: int, total: int | None) -> None:
        # Downloads count bytes with no known total; the other stages count files.
        detail = f"{done / 2**20:.1f} MiB" if stage == "download" else f"{done}/{total}"
        if stage not in tasks:
            bars.start()  # lazily: a run with nothing to show (up to date, an error) draws nothing
            tasks[stage] = bars.add_task(labels.get(stage, stage), total=total, detail=detail)
        bars.update(tasks[stage], completed=done, total=total, detail=detail)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


def _print_fetch_details(report) -> None:
    info = report.info
    data_dir = report.data_dir
    if not report.changed:
        console.print(
            f"[green]already up to date[/]: {data_dir} was prepared from the same inputs and "
            "options; nothing was rewritten"
        )
    skipped = report.skipped
    kept = len(report.manifest.records) if info.n_kept is None else info.n_kept
    console.print(
        f"{kept} images kept, {len(skipped)} skipped"
        f" ({'?' if info.n_files is None else info.n_files} files in the source's dataset tree)"
    )
    _print_skipped(skipped, data_dir / SKIPPED_NAME)
    copies = info.source.ignored_copies if info.source else {}
    for root, n in copies.items():
        console.print(f"ignored a second copy of the dataset under {root}/ ({n} files)")
    d = info.duplicates
    if d is not None:
        console.print(
            f"duplicates: {len(d.exact_groups)} exact-copy groups ({d.exact_images} images); "
            f"{d.near_pairs} pairs within {info.near_dup_distance} bits "
            f"({d.near_pairs_exact} at distance 0, {d.near_pairs_across_source_splits} across source "
            f"splits) → {len(d.clusters)} clusters of {d.images_in_clusters} images, "
            "each kept in one split"
        )
        if d.rejected_pairs:
            console.print(
                f"  {len(d.rejected_pairs)} pHash look-alike pairs not confirmed by dHash "
                "(different lesions) were left apart"
            )
        for c in d.label_conflicts:
            console.print(f"  [red]label conflict[/] cluster {c.id}: {', '.join(c.paths)}")
    _print_metadata(info)
    _print_skin_tones(info)
    _print_provenance(info.provenance)
    if info.moved:
        console.print(f"moved {len(info.moved)} duplicates of held-out images out of train:")
        for m in info.moved:
            console.print(f"  {m.path}: {m.from_split} → {m.to} (cluster {m.cluster})")
    console.print(f"manifest: {data_dir / MANIFEST_NAME}\ndetails:  {data_dir / DATASET_JSON}")
    console.print(f"images:   {data_dir / 'images'}")


def _print_skin_tones(info: DatasetInfo) -> None:
    from ..data.skintone import describe_skin_tones

    line = describe_skin_tones(info.skin_tone)
    if line:
        console.print(escape(line))


def _print_metadata(info: DatasetInfo) -> None:
    """Where classes came from (a metadata file and its map) and the groups kept within one split."""
    meta, labels = info.metadata, info.labels
    if meta is not None:
        layout = info.dataset.layout if info.dataset else meta.layout
        console.print(
            f"metadata: {', '.join(meta.metadata_files)} ({layout} layout): "
            f"{meta.rows} rows, {meta.rows_used} matched to an image with a class"
        )
        if meta.rows_without_image:
            console.print(
                f"  [yellow]{meta.rows_without_image} rows name an image that is not in the "
                f"source[/] (e.g. {', '.join(meta.rows_without_image_examples[:3])})"
            )
        if meta.rows_unreadable:
            console.print(f"  [yellow]{len(meta.rows_unreadable)} rows unreadable[/]")
        if meta.rows_repeating_an_image:
            console.print(
                f"  {meta.rows_repeating_an_image} rows repeat an image an earlier row names, with "
                "the same label: counted once"
            )
        _print_lesion_conflicts(meta)
        if meta.label_disagreements:
            differ = ", ".join(f"{k} {v}" for k, v in meta.label_disagreements.items())
            console.print(
                f"[bold yellow]warning:[/] {sum(meta.label_disagreements.values())} images take "
                f"the binary map's class against the dataset's own benign/malignant label "
                f"({escape(differ)}); see label_notes in dataset.json",
                soft_wrap=True,
            )
        diagnoses = ", ".join(f"{k} {v}" for k, v in meta.diagnoses.items())
        console.print(f"  diagnoses: {diagnoses}")
    if labels is not None and labels.task == "binary":
        mapping = labels.map or {}
        side = {c: sorted(k for k, v in mapping.items() if v == c) for c in ("benign", "malignant")}
        console.print(
            f"task: binary; malignant = {', '.join(side['malignant'])}; benign = "
            f"{', '.join(side['benign'])}"
        )
    elif labels is not None and labels.task in ("multiclass", "as_given"):
        console.print(f"task: {labels.task}; {labels.rule}")
    g = info.groups
    if g is not None:
        sizes = ", ".join(f"{k}: {v}" for k, v in g.images_per_group.items())
        kinds = ", ".join(f"{v} by {k}" for k, v in g.groups_by_kind.items())
        console.print(
            f"groups kept within one split: {g.n_groups} for {g.n_images} images ({kinds}); "
            f"images per group {sizes}; {g.groups_across_splits} groups across splits"
        )
        if g.groups_with_several_images:
            top = "; ".join(f"{x.group} ({x.images})" for x in g.largest[:5])
            console.print(f"  largest: {top}")
        if g.duplicates_joining_ids:
            console.print(
                f"  {g.duplicates_joining_ids} duplicate clusters join images filed under "
                "different lesion/patient ids; their groups were joined"
            )


def _print_lesion_conflicts(meta) -> None:
    """One warning line for lesions whose photos carry different diagnoses (kept, as labelled)."""
    n = meta.lesions_with_several_diagnoses
    if not n:
        return
    shown = "; ".join(
        f"{lesion} ({', '.join(f'{dx} {k}' for dx, k in counts.items())})"
        for lesion, counts in list(meta.lesion_conflict_examples.items())[:3]
    )
    console.print(
        f"[bold yellow]warning:[/] {n} {'lesion has' if n == 1 else 'lesions have'} photos with "
        "different diagnoses "
        f"({meta.lesions_with_several_classes} of them in different classes), e.g. {escape(shown)}; "
        "each photo keeps its own label and each lesion stays in one split",
        soft_wrap=True,
    )


def _print_skipped(skipped, listing: Path, first: int = 5) -> None:
    """How many entries were skipped for each kind of reason, the first few, and the full list's file."""
    if not skipped:
        return
    kinds = Counter(reason.split(":")[0] for _, reason in skipped)
    for kind, n in kinds.most_common():
        console.print(f"  [yellow]skipped[/] {n} × {kind}")
    for path, reason in skipped[:first]:
        console.print(f"    {path}: {reason}", soft_wrap=True, markup=False)
    more = f"… and {len(skipped) - first} more; " if len(skipped) > first else ""
    console.print(f"    {more}full list: {listing}", soft_wrap=True, markup=False)


def _print_provenance(prov) -> None:
    """Per class, how many images are copies of each reference; loud when a source tells classes apart."""
    if prov is None:
        return
    refs = ", ".join(f"{r.name} ({r.images} images)" for r in prov.references)
    console.print(
        f"provenance: {prov.matched} images are copies of reference images ({refs}) and "
        "inherit their lesion/patient ids"
        + (f"; {prov.ambiguous} match several lesions (joined)" if prov.ambiguous else "")
    )
    for label, sources in prov.per_class.items():
        total = sum(sources.values())
        parts = ", ".join(f"{s} {n} ({100 * n / total:.0f}%)" for s, n in sources.items())
        console.print(f"  {label}: {parts}")
    for warning in prov.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")


def _print_counts(data_dir, classes: list[str], counts: dict[str, dict[str, int]]) -> None:
    table = Table(title=f"dataset in {data_dir}")
    table.add_column("split")
    for c in classes:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    for split, row in counts.items():
        table.add_row(split, *map(str, row.values()), str(sum(row.values())))
    console.print(table)
