"""Developer tasks: `nox -s tests`, `nox -s lint`, `nox -s demo`, `nox -s docs`."""

from __future__ import annotations

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

# This pair imports together everywhere we test; pip takes it from a local wheel cache where one exists.
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (offline, CPU)."""
    session.install(*TORCH)
    session.install("-e", ".[test]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """Ruff lint and format check, and the import layers (`lint-imports`, contract in pyproject.toml)."""
    session.install("ruff>=0.5", "import-linter>=2.1")
    session.install("--no-deps", "-e", ".")  # lint-imports reads the source; no need for torch
    paths = ["skincls", "tests", "benchmarks", "noxfile.py"]
    session.run("ruff", "check", *paths)
    session.run("ruff", "format", "--check", *paths)
    session.run("lint-imports")


@nox.session
def demo(session: nox.Session) -> None:
    """The offline end-to-end demo on synthetic data."""
    session.install(*TORCH)
    session.install(".")
    session.run(
        "skincls", "demo", "--workdir", str(session.create_tmp()) + "/demo", *session.posargs
    )


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ in strict mode (any warning fails the build).

    torch is needed because mkdocs-click imports `skincls.cli` to render the CLI reference.
    `nox -s docs -- serve` runs a live-reloading server instead.
    """
    session.install(*TORCH)
    session.install("-e", ".[docs]")
    env = {"NO_MKDOCS_2_WARNING": "1"}  # mkdocs-material's end-of-life banner, not a build warning
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", "--strict", *session.posargs[1:], env=env)
    else:
        session.run("mkdocs", "build", "--strict", "--site-dir", "site", *session.posargs, env=env)
