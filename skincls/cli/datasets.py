"""`skincls datasets`: the datasets `fetch --dataset` knows by name, and how each is read."""

from __future__ import annotations

import textwrap

import click

from ._common import friendly_errors


@click.command()
@friendly_errors
def datasets() -> None:
    """List the known datasets: name, aliases, layout, how to get them, and notes.

    Any other Kaggle OWNER/NAME works too; its layout is detected from the files.
    """
    from ..data.registry import list_datasets
    from ..errors import spell_options

    for spec in list_datasets():
        aliases = f" (also: {', '.join(spec.aliases)})" if spec.aliases else ""
        how = "Kaggle download" if spec.kaggle else "manual download"
        click.echo(f"{spec.name}{aliases}: {spec.title}; {spec.layout} layout; {how}")
        click.echo(
            textwrap.fill(
                spell_options(spec.notes),  # its options as flags
                96,
                initial_indent="    ",
                subsequent_indent="    ",
                break_on_hyphens=False,
            )
        )
