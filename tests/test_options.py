"""Settings declared once: the boolean env parser, env-over-default-under-flag, and fast help."""
from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from rakuten_common.env import env_bool, parse_bool
from rakuten_common.options import HelpFormatter, add_options, from_args, option
from tests.support.servers import REPO


@pytest.mark.parametrize("text, value", [
    ("1", True), ("true", True), ("TRUE", True), ("yes", True), ("on", True), (" On ", True),
    ("0", False), ("false", False), ("False", False), ("no", False), ("off", False)])
def test_parse_bool(text, value):
    assert parse_bool(text) is value


@pytest.mark.parametrize("text", ["", "2", "maybe", "enabled"])
def test_parse_bool_refuses_anything_else(text):
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(text)


def test_env_bool_reads_false_as_false_and_empty_as_the_default(monkeypatch):
    monkeypatch.setenv("FLAG", "false")
    assert env_bool("FLAG", True) is False  # the old bug: bool("false") is True
    monkeypatch.setenv("FLAG", "")
    assert env_bool("FLAG", True) is True
    monkeypatch.setenv("FLAG", "perhaps")
    with pytest.raises(ValueError, match="FLAG"):
        env_bool("FLAG", False)


@dataclass(frozen=True)
class Example:
    epochs: int = option(8, env="EXAMPLE_EPOCHS", help="training epochs")
    ablation: bool = option(False, env="EXAMPLE_ABLATION", help="also train each branch alone")
    uri: str = option("/mnt/models", env=("EXAMPLE_URI", "EXAMPLE_STORAGE_URI"), help="where")
    internal: int = 3


def parse(argv):
    import argparse

    parser = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_options(parser, Example)
    return from_args(Example, parser.parse_args(argv)), parser


def test_default_then_env_then_flag(monkeypatch):
    assert parse([])[0] == Example()
    monkeypatch.setenv("EXAMPLE_EPOCHS", "12")
    monkeypatch.setenv("EXAMPLE_ABLATION", "false")
    monkeypatch.setenv("EXAMPLE_STORAGE_URI", "s3://b/p")
    settings, parser = parse([])
    assert (settings.epochs, settings.ablation, settings.uri) == (12, False, "s3://b/p")
    assert parse(["--epochs", "3", "--ablation"])[0].epochs == 3
    assert parse(["--ablation"])[0].ablation is True
    assert parse(["--ablation=no"])[0].ablation is False
    help_text = parser.format_help()
    assert "training epochs (default: 12; env EXAMPLE_EPOCHS)" in help_text
    assert "env EXAMPLE_URI or EXAMPLE_STORAGE_URI" in help_text and "--internal" not in help_text


def test_a_bad_env_value_names_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("EXAMPLE_EPOCHS", "many")
    with pytest.raises(SystemExit):
        parse([])
    assert "EXAMPLE_EPOCHS='many'" in capsys.readouterr().err


@pytest.mark.parametrize("argv, env, message", [
    (["--max_queued_rows=0"], {}, "argument --max_queued_rows: '0' must be at least 1"),
    ([], {"MAX_BATCH_SIZE": "-3"}, "environment variable MAX_BATCH_SIZE='-3': '-3' must be at least 1"),
    (["--request_timeout_seconds=0"], {}, "argument --request_timeout_seconds: '0' must be above 0"),
    (["--drift_low_confidence=nan"], {}, "argument --drift_low_confidence: 'nan' must be at least 0.0"),
    (["--drift_low_confidence=1.5"], {}, "'1.5' must be at most 1.0"),
    (["--http_port=70000"], {}, "argument --http_port: '70000' must be at most 65535"),
])
def test_server_settings_that_could_not_serve_are_refused_at_start(argv, env, message, monkeypatch, capsys):
    """A queue of 0 rows would refuse every request; a 0 s timeout would time every one out."""
    from model_server.settings import parse_settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        parse_settings(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_bounded_types_keep_the_values_within_their_bounds():
    from model_server.settings import parse_settings

    settings = parse_settings(["--max_queued_rows=1", "--drain_seconds=0", "--metrics_port=0", "--drift_low_confidence=1"])
    assert (settings.max_queued_rows, settings.drain_seconds, settings.metrics_port) == (1, 0.0, 0)


@pytest.mark.process
@pytest.mark.parametrize("module", ["training_job", "model_server"])
def test_help_is_fast_and_free_of_tensorflow(module):
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=60)
    seconds = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "(default:" in done.stdout and "env " in done.stdout
    assert "tensorflow" not in (done.stdout + done.stderr).lower() and "absl" not in done.stderr
    print(f"python -m {module} --help: {seconds:.2f} s")


@pytest.mark.process
def test_help_imports_neither_tensorflow_nor_kserve():
    """The cause of slow help, checked directly: what `--help` imports."""
    code = ("import sys; from training_job.__main__ import build_parser as t; from model_server.settings import "
            "build_parser as s; t(); s(); print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'kserve', 'mlflow')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
