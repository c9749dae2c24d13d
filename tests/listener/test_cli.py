"""The command line: invalid settings stop start-up with a message naming the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.cli.main import EXIT_CONFIG, build_parser, main

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
    assert main(["serve", "--data-dir", str(tmp_path), *flags]) == EXIT_CONFIG
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
    assert main(["serve", "--data-dir", str(tmp_path)]) == EXIT_CONFIG
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
    assert main(["serve", "--config", str(config)]) == EXIT_CONFIG
    assert setting in capsys.readouterr().err


def test_every_command_is_registered() -> None:
    """serve, echo, send and studies are subcommands of pacs-ai."""
    text = build_parser().format_help()
    for command in ("serve", "echo", "send", "studies"):
        assert command in text


def test_example_settings_file_matches_the_defaults() -> None:
    """config/pacs-ai.example.yaml loads and equals the embedded defaults, option for option."""
    import yaml

    from listener.settings import Settings, load_settings

    example = Path(__file__).resolve().parents[2] / "config" / "pacs-ai.example.yaml"
    loaded = load_settings(example)
    assert loaded.model_dump() == Settings().model_dump()
    assert set(yaml.safe_load(example.read_text())) == set(Settings.model_fields)
