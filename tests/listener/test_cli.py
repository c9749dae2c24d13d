"""The command line: invalid settings stop start-up with a message naming the setting."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from listener.cli.common import EXIT_USAGE
from listener.cli.main import build_parser, main

LONG_TITLE = "A" * 17


@pytest.mark.parametrize(
    ("flags", "setting"),
    [
        (["--ae-title", LONG_TITLE], "ae_titles"),
        (["--port", "70000"], "port"),
        (["--quiet-period", "-1"], "quiet_period_s"),
    ],
)
def test_bad_flag_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], setting: str
) -> None:
    """A bad command-line value exits with status 2 and one line naming the setting."""
    assert main(["serve", "--data-dir", str(tmp_path), *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert setting in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("variable", "value", "setting"),
    [("PACSAI_PORT", "70000", "port"), ("PACSAI_AE_TITLES", f'["{LONG_TITLE}"]', "ae_titles")],
)
def test_bad_environment_variable_names_the_setting(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    value: str,
    setting: str,
) -> None:
    """A bad PACSAI_* variable stops start-up with a message naming the setting."""
    monkeypatch.setenv(variable, value)
    assert main(["serve", "--data-dir", str(tmp_path)]) == EXIT_USAGE
    assert setting in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "setting"),
    [("port: 70000\n", "port"), (f"ae_titles: [{LONG_TITLE}]\n", "ae_titles")],
)
def test_bad_settings_file_names_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, setting: str
) -> None:
    """A bad value in the YAML settings file stops start-up with a message naming it."""
    config = tmp_path / "settings.yaml"
    config.write_text(text)
    assert main(["serve", "--config", str(config)]) == EXIT_USAGE
    assert setting in capsys.readouterr().err


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommands registered on a parser, by name (argparse's subparsers action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_command_is_registered() -> None:
    """Every documented command is a registered subcommand of pacs-ai (the parser's names, not
    its help text, in which a command's name can appear in another's description)."""
    commands = _subcommands(build_parser())
    assert set(commands) == {
        "serve",
        "echo",
        "send",
        "studies",
        "rules",
        "emulator",
        "process",
        "jobs",
        "similar",
        "audit",
        "adapter",
        "drift",
    }
    assert set(_subcommands(commands["adapter"])) == {"train", "list", "show"}
    assert set(_subcommands(commands["jobs"])) == {"list", "show", "retry", "cancel"}
    assert set(_subcommands(commands["rules"])) == {"check", "test"}


def test_example_settings_file_matches_the_defaults() -> None:
    """config/pacs-ai.example.yaml loads and equals the embedded defaults, option for option."""
    import yaml

    from listener.settings import Settings, load_settings

    example = Path(__file__).resolve().parents[2] / "config" / "pacs-ai.example.yaml"
    loaded = load_settings(example)
    assert loaded.model_dump() == Settings().model_dump()
    assert set(yaml.safe_load(example.read_text())) == set(Settings.model_fields)
