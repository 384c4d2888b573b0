"""The `skincls` command line: each command parses options, makes one library call, renders the result.

One module per stage (fetch, train, cv, evaluate, runs, serve); nothing in the library imports this package.
"""

from __future__ import annotations

import os

import click

from .._version import __version__
from ._common import show_library_messages
from .cv import cv
from .datasets import datasets
from .evaluate import evaluate, export, predict
from .fetch import fetch
from .runs import runs
from .serve import serve
from .train import demo, models, train

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skincls")
def main() -> None:
    """Skin-lesion classification (benign vs malignant) by transfer learning.

    Research software, not a medical device. Typical flow: fetch → train → evaluate → predict.
    """
    # Large CPU tensors (e.g. a VGG head's 400 MB gradient, allocated every step) on transparent huge
    # pages: far fewer page faults. PyTorch reads this at its first CPU allocation, so it must be set
    # before any command runs; no command module imports torch before its own function is called.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    show_library_messages()


for _command in (fetch, datasets, train, cv, evaluate, predict, runs, models, demo, export, serve):
    main.add_command(_command)


if __name__ == "__main__":  # pragma: no cover
    main()
