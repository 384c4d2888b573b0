"""Docs: the CLI reference page shows every command and option that `--help` does; the API page and nav
cover every module and page.

The CLI page is rendered in-process through the mkdocs-click Markdown extension (the same code
`mkdocs build` runs on `docs/cli.md`), which takes well under a second; the full strict site build is
`nox -s docs`.
"""

from __future__ import annotations

import re
from pathlib import Path

import click
import markdown
import pytest
import yaml
from click.testing import CliRunner

from skincls.cli import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


@pytest.fixture(scope="module")
def cli_html() -> str:
    md = markdown.Markdown(
        extensions=["mkdocs-click", "tables", "attr_list", "pymdownx.superfences"]
    )
    return md.convert((DOCS / "cli.md").read_text())


def _section(html: str, name: str) -> str:
    """The part of the page from `name`'s heading to the next heading of a command."""
    match = re.search(rf"<h3[^>]*>{re.escape(name)}</h3>(.*?)(?=<h3|\Z)", html, re.S)
    assert match, f"no section for command {name!r} in the CLI reference"
    return match.group(1)


def test_cli_page_lists_every_command_that_help_shows(cli_html):
    help_text = CliRunner().invoke(main, ["--help"]).output
    listed = re.findall(r"^  (\w[\w-]*)\s", help_text.split("Commands:")[1], re.M)
    assert set(listed) == set(main.commands), "--help and the Click group disagree"
    for name in main.commands:
        assert f"skincls {name} [OPTIONS]" in _section(cli_html, name)


@pytest.mark.parametrize("name", sorted(main.commands))
def test_cli_page_lists_every_option_and_argument(cli_html, name):
    command = main.commands[name]
    section = _section(cli_html, name)
    help_text = CliRunner().invoke(main, [name, "--help"]).output
    for param in command.params:
        if isinstance(param, click.Argument):
            assert param.human_readable_name in section, f"{name}: argument {param.name}"
            continue
        for opt in (*param.opts, *param.secondary_opts):
            assert opt in help_text, f"{name} --help lacks {opt}"  # sanity: the test sees options
            assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", section), (
                f"CLI reference: `skincls {name}` lacks option {opt}"
            )


def test_group_options_documented(cli_html):
    head = cli_html.split("<h3")[0]
    for opt in ("--version", "--help"):
        assert opt in head


def test_api_page_covers_every_public_module():
    api = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: (skincls(?:\.\w+)+)", api, re.M))
    modules = {
        ".".join(("skincls", *p.relative_to(ROOT / "skincls").with_suffix("").parts))
        for p in (ROOT / "skincls").rglob("*.py")
        if not any(part.startswith("_") for part in p.relative_to(ROOT / "skincls").parts)
        and p.relative_to(ROOT / "skincls").parts[0] != "cli"  # the CLI has its own generated page
    }
    assert "skincls.training.trainer" in modules and "skincls.config" in modules
    missing = modules - documented
    assert not missing, f"add these modules to docs/api.md: {sorted(missing)}"


def test_nav_pages_exist():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(node):
        if isinstance(node, str):
            yield node
        elif isinstance(node, dict):
            for v in node.values():
                yield from pages(v)
        elif isinstance(node, list):
            for v in node:
                yield from pages(v)

    listed = list(pages(config["nav"]))
    for page in listed:
        assert (DOCS / page).is_file(), f"mkdocs.yml nav names missing page {page}"
    # `*-table.md` files are fragments that pages include (see exclude_docs in mkdocs.yml).
    on_disk = {
        str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if not p.stem.endswith("-table")
    }
    assert on_disk <= set(listed), f"pages not in the nav: {sorted(on_disk - set(listed))}"
