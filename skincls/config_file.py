"""Reading a config file as untrusted input: bounded size, UTF-8, YAML without aliases, one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "one_line", "read_config_file"]

# A config file is small; anything bigger is a mistake or hostile (it is read whole into memory).
MAX_CONFIG_BYTES = 1_000_000


def read_config_file(path: Path) -> dict[str, Any]:
    """The mapping in a YAML or JSON file (by suffix; `{}` for an empty one), read as untrusted input.

    Raises:
        ConfigError: unreadable, over `MAX_CONFIG_BYTES`, not UTF-8, malformed, with YAML aliases,
            nested too deeply, or not a mapping; one line saying which and where.
    """
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES:,} bytes; "
            "a config holds a few options, check the file"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (byte {data[exc.start]:#04x} at offset "
            f"{exc.start}); save it as UTF-8 YAML or JSON"
        ) from exc
    kind = "JSON" if path.suffix.lower() == ".json" else "YAML"
    try:
        raw = json.loads(text) if kind == "JSON" else yaml.load(text, Loader=_NoAliasLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"config file {path} is not valid YAML ({where}{problem})") from exc
    except (yaml.YAMLError, ValueError) as exc:  # JSONDecodeError; ints of over 4300 digits
        problem = one_line(exc)
        if "integer string conversion" in problem:
            problem = "it holds a number of thousands of digits"
        raise ConfigError(f"config file {path} is not valid {kind}: {problem}") from exc
    except RecursionError as exc:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from exc
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a mapping, not {type(raw).__name__}")
    return raw


class _NoAliasLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses aliases: nested ones expand exponentially (billion laughs).

    Anchors alone are harmless and allowed; a config never needs to repeat a node.
    """

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.MarkedYAMLError(
                problem=f"aliases (*{event.anchor}) are not allowed in a config; write the value out",
                problem_mark=event.start_mark,
            )
        return super().compose_node(parent, index)


# YAML 1.1 (PyYAML) reads `1e-3` and `1.0e3` as text: it wants a dot and a signed exponent. Read
# them as the numbers YAML 1.2 and JSON make of them, since config values are strictly typed.
_NoAliasLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def one_line(exc: BaseException) -> str:
    """An exception's message with its line breaks and runs of spaces folded."""
    return " ".join(str(exc).split())
