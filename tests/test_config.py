"""Config files are untrusted input: bounded, alias-free, validated, and every failure is one line."""

from __future__ import annotations

import tracemalloc

import pytest
from click.testing import CliRunner

from skincls.cli import main
from skincls.config import MAX_CONFIG_BYTES, load_config, save_config
from skincls.errors import ConfigError

# Nested aliases (billion laughs): each level repeats the one before 9 times. Six levels expand to
# 9**6 ≈ 531,000 strings, enough to measure the expansion (and for old code to fail fast instead of
# exhausting memory); three more levels would be 387 million.
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcde", "bcdef")
)


def _one_line_cli_error(result, *needles):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1, result.output
    for needle in needles:
        assert needle in errors[0], result.output
    return errors[0]


def test_alias_bomb_is_refused_before_it_expands(tmp_path):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(ALIAS_BOMB)
    assert cfg.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=r"aliases \(\*a\) are not allowed"):
            load_config(cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000  # refused while parsing, not after building the expanded tree


@pytest.mark.slow
def test_alias_bomb_through_the_cli_is_one_line(tmp_path, tiny_data):
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(ALIAS_BOMB)
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--data-dir", str(tiny_data)])
    _one_line_cli_error(r, "bomb.yaml", "line 2", "aliases")


def test_anchors_without_aliases_still_load(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text("train: &t\n  epochs: 3\n")
    assert load_config(cfg).train.epochs == 3


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("latin1.yaml", "train:\n  lr: 0.001 # é\n".encode("latin-1"), "not UTF-8 text"),
        ("binary.json", b"\x89PNG\r\n\x1a\n\x00\x00", "not UTF-8 text"),
        ("broken.yaml", b"train:\n  epochs: [1,\n", "not valid YAML (line 3"),
        ("broken.json", b'{"train": ', "not valid JSON"),
        ("digits.yaml", b"train:\n  epochs: " + b"9" * 5000 + b"\n", "thousands of digits"),
        ("deep.json", b"[" * 50_000, "nested too deeply"),
        ("list.yaml", b"- 1\n- 2\n", "must hold a mapping"),
        ("big.yaml", b"#" * (MAX_CONFIG_BYTES + 1), "larger than 1,000,000 bytes"),
    ],
)
def test_malformed_config_files_are_one_line_errors(tmp_path, tiny_data, name, content, says):
    cfg = tmp_path / name
    cfg.write_bytes(content)
    with pytest.raises(ConfigError, match=says.replace("(", r"\(")) as info:
        load_config(cfg)
    assert "\n" not in str(info.value)
    r = CliRunner().invoke(main, ["train", "--config", str(cfg), "--data-dir", str(tiny_data)])
    _one_line_cli_error(r, name, says)


@pytest.mark.parametrize(
    ("yaml_text", "says"),
    [
        (
            "train:\n  epochs: 100000000000000000000000000000\n",
            "train.epochs must be at most 10000",
        ),
        ("train:\n  batch_size: 1000000000\n", "train.batch_size must be at most 4096"),
        ("model:\n  head: [4096, 100000000000]\n", "model.head.1 must be at most 65536"),
        ("train:\n  seed: 100000000000000000000000000000\n", "train.seed must be at most"),
        ("train:\n  lr: .nan\n", "train.lr must be a finite number (got nan)"),
        ("train:\n  weight_decay: .inf\n", "train.weight_decay must be a finite number"),
        ("train:\n  lr: 1.0e+30\n", "train.lr must be at most 10"),
        ("data:\n  image_size: 100000\n", "data.image_size must be at most 1024"),
        ("train:\n  epochz: 3\n", "unknown key train.epochz in config file"),
        ("model:\n  freeze: 2.5\n", "model.freeze must be 'backbone' or 'none' or a whole number"),
    ],
)
def test_absurd_values_are_refused_in_plain_words(tmp_path, yaml_text, says):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    message = str(info.value)
    assert says in message and str(cfg) in message
    # pydantic's own wording and links are not the user's words
    for internal in ("Input should be", "errors.pydantic.dev", "validation error", "type="):
        assert internal not in message


def test_nan_in_a_json_config_is_refused(tmp_path):
    cfg = tmp_path / "c.json"
    cfg.write_text('{"train": {"lr": NaN, "epochs": 2}}')
    with pytest.raises(ConfigError, match=r"train\.lr must be a finite number \(got nan\)"):
        load_config(cfg)


def test_unknown_key_suggests_the_right_one(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  batchsize: 3\n")
    with pytest.raises(ConfigError, match=r"did you mean train\.batch_size\?"):
        load_config(cfg)


def test_every_unknown_key_is_named_with_the_key_it_likely_means(tmp_path):
    cfg = tmp_path / "c.yaml"
    # A typo in a key hides behind another: fixing one at a time would take a run per typo.
    cfg.write_text("train:\n  lrr: 0.1\n  epochs: 0\ndata:\n  dat_dir: x\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value) == (
        f"unknown keys data.dat_dir, train.lrr in config file {cfg} "
        "(did you mean data.data_dir, train.lr?)"
    )
    r = CliRunner().invoke(main, ["train", "--config", str(cfg)])
    assert _one_line_cli_error(r) == f"Error: {info.value}"

    # A key without a likely meaning: each guess says which key it is for.
    cfg.write_text("train:\n  lrr: 0.1\nzzzqq: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value) == (
        f"unknown keys train.lrr, zzzqq in config file {cfg} (did you mean train.lr for train.lrr?)"
    )
    with pytest.raises(ConfigError, match=r"^unknown keys train\.qqqq, zzzqq in the config$"):
        load_config(None, {"train.qqqq": 1, "zzzqq": 2})


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--lr", "nan"], "--lr: must be a finite number (got nan)"),
        (["--epochs", "100000000000000000000"], "'--epochs': 100000000000000000000 is not in"),
        (["--seed", "100000000000000000000000"], "--seed: must be at most"),
        (["--warmup-epochs", "inf"], "--warmup-epochs"),
    ],
)
def test_option_errors_name_the_option(tiny_data, tmp_path, args, says):
    r = CliRunner().invoke(
        main, ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "r"), *args]
    )
    line = _one_line_cli_error(r, says)
    assert "train." not in line and "Input should be" not in line
    assert not (tmp_path / "r").exists()


def test_an_option_overrides_a_bad_file_value_and_is_named(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"in .*c\.yaml: train\.epochs must be at least 1"):
        load_config(cfg)
    assert load_config(cfg, {"train.epochs": 2}).train.epochs == 2
    with pytest.raises(ConfigError, match=r"^--batch-size: must be at most 4096"):
        load_config(
            cfg,
            {"train.epochs": 2, "train.batch_size": 10**6},
            names={"train.batch_size": "--batch-size"},
        )


@pytest.mark.parametrize(
    ("yaml_text", "says"),
    [
        ("train:\n  batch_size: true\n", "train.batch_size must be a whole number (got True)"),
        ("train:\n  epochs: '3'\n", "train.epochs must be a whole number (got '3')"),
        ("train:\n  epochs: 3.0\n", "train.epochs must be a whole number (got 3.0)"),
        ("train:\n  lr: '0.01'\n", "train.lr must be a number (got '0.01')"),
        ("data:\n  augment: 'yes'\n", "data.augment must be true or false (got 'yes')"),
        ("data:\n  augment: 1\n", "data.augment must be true or false (got 1)"),
    ],
)
def test_config_file_values_of_the_wrong_type_are_refused_not_converted(tmp_path, yaml_text, says):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert says in str(info.value) and str(cfg) in str(info.value)


def test_config_file_numbers_and_paths_still_load(tmp_path):
    cfg = tmp_path / "c.yaml"
    # `1e-3` is text to YAML 1.1; it is read as the number it means (as in JSON and YAML 1.2).
    cfg.write_text(
        "data:\n  data_dir: d\n  augment: true\nmodel:\n  head: [8, 4]\n  freeze: 2\n"
        "train:\n  epochs: 10\n  lr: 1e-3\n  weight_decay: 1.0e-4\n  warmup_epochs: 1\n"
    )
    config = load_config(cfg, {"train.batch_size": 8, "out": tmp_path / "r"})
    assert config.train.lr == 1e-3 and config.train.weight_decay == 1e-4
    assert config.train.epochs == 10 and config.train.warmup_epochs == 1.0
    assert config.model.head == (8, 4) and config.model.freeze == 2 and config.data.augment
    assert str(config.data.data_dir) == "d" and config.out == tmp_path / "r"
    saved = tmp_path / "config.json"  # what a run writes is read back as it was (--resume)
    save_config(config, saved)
    assert load_config(saved) == config
