"""Import behaviour: `import skincls` and `skincls --help` load no heavy library and change nothing.

Each check runs in a fresh interpreter, since this test process has long imported torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import skincls
from skincls.cli import main

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "torchvision", "sklearn", "scipy", "matplotlib", "numpy", "PIL", "starlette")


def _python(code: str, env: dict[str, str] | None = None) -> str:
    """Run `code` in a new interpreter importing this checkout's skincls; return its stdout."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), env.get("PYTHONPATH"))))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_skincls_loads_no_heavy_library():
    out = _python(f"import sys, skincls; print([m for m in {HEAVY!r} if m in sys.modules])")
    assert out.strip() == "[]"


def test_import_skincls_leaves_the_environment_unchanged():
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    code = "import os; before = dict(os.environ); import skincls; print(dict(os.environ) == before)"
    assert _python(code, env).strip() == "True"


def test_every_public_name_resolves_and_is_listed():
    for name in skincls.__all__:
        assert getattr(skincls, name) is not None, name
    assert set(skincls.__all__) <= set(dir(skincls))
    namespace: dict = {}
    exec("from skincls import *", namespace)
    assert set(skincls.__all__) <= set(namespace)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        skincls.nope  # noqa: B018


def test_public_names_and_submodules_load_on_first_use():
    code = (
        "import sys, skincls\n"
        "from skincls import load_config\n"
        "print(load_config.__module__, 'skincls.config' in sys.modules,"
        " skincls.data.download.DEFAULT_DATASET)"
    )
    assert _python(code).split() == [
        "skincls.config",
        "True",
        "fanconic/skin-cancer-malignant-vs-benign",
    ]


@pytest.mark.slow
def test_listing_models_enumerates_no_weights():
    code = (
        "import sys, skincls\n"
        "names = skincls.list_models()\n"
        "print('vgg16' in names, 'torchvision' in sys.modules)"
    )
    assert _python(code).split() == ["True", "False"]


def test_help_of_every_command_loads_no_heavy_library():
    commands = ["", *sorted(main.commands)]
    code = f"""
import contextlib, io, json, sys
from skincls.cli import main
loaded = {{}}
for command in {commands!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*command.split(), "--help"], prog_name="skincls")
    loaded[command or "skincls"] = [m for m in {HEAVY!r} if m in sys.modules]
print(json.dumps(loaded))
"""
    loaded = json.loads(_python(code))
    assert loaded == {name: [] for name in loaded} and len(loaded) == len(commands)


def test_cli_enables_huge_pages_before_torch_loads():
    """THP_MEM_ALLOC_ENABLE works only if set before PyTorch's first CPU allocation."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    code = """
import os, sys
from skincls.cli import main

@main.command()
def probe():
    print(os.environ.get("THP_MEM_ALLOC_ENABLE"), "torch" in sys.modules)

main(["probe"], standalone_mode=False)
"""
    assert _python(code, env).split() == ["1", "False"]
    assert _python(code, {**env, "THP_MEM_ALLOC_ENABLE": "0"}).split() == ["0", "False"]


def test_cli_constants_match_the_library():
    """The CLI writes these out (the modules defining them load numpy, torch...); they must agree."""
    from skincls.cli.evaluate import EXPORT_FORMATS
    from skincls.cli.fetch import (
        DATASET_JSON,
        DEFAULT_NEAR_DUP_DISTANCE,
        MANIFEST_NAME,
        SKIPPED_NAME,
    )
    from skincls.data import dedup, info, splits
    from skincls.inference import export

    assert EXPORT_FORMATS == export.FORMATS
    assert DEFAULT_NEAR_DUP_DISTANCE == dedup.DEFAULT_NEAR_DUP_DISTANCE
    assert DATASET_JSON == info.DATASET_JSON
    assert (MANIFEST_NAME, SKIPPED_NAME) == (splits.MANIFEST_NAME, splits.SKIPPED_NAME)
