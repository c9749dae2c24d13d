"""Settings problems found at start-up, in the command's own process: unknown PACSAI_* variables
with the nearest valid name, optional extras a setting needs, and the start-up summary of
destinations, models and where results go."""

from __future__ import annotations

from pathlib import Path

import pytest

from listener.cli.common import EXIT_USAGE
from listener.cli.main import main
from listener.errors import ConfigError
from listener.route.load import effective_rules
from listener.serve.summary import startup_summary
from listener.settings import ENTRA_MODULE, load_settings, module_available, unknown_environment


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("PACSAI_PROT", "PACSAI_PORT"),
        ("PACSAI_ADMINPORT", "PACSAI_ADMIN_PORT"),
        ("PACSAI_DESTINATION__PACS__AE_TITLE", "PACSAI_DESTINATIONS__PACS__AE_TITLE"),
        ("PACSAI_DESTINATIONS__PACS__AETITLE", "PACSAI_DESTINATIONS__PACS__AE_TITLE"),
        ("PACSAI_MODELS__CXRREPORGEN__ENDPOINT", "PACSAI_MODELS__CXRREPORTGEN__ENDPOINT"),
        ("pacsai_log_levle", "PACSAI_LOG_LEVEL"),
    ],
)
def test_misspelled_variable_stops_start_up_with_the_nearest_name(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    variable: str,
    suggestion: str,
) -> None:
    """A PACSAI_* variable that names no setting is an error saying which one was meant, on one
    line, exit status 2, before anything is created."""
    monkeypatch.setenv(variable, "1")
    data_dir = tmp_path / "data"
    assert main(["serve", "--data-dir", str(data_dir)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert f"{variable.upper()}: unknown setting, did you mean {suggestion}?" in err
    assert len(err.splitlines()) == 1
    assert not data_dir.exists()


def test_every_documented_variable_is_known() -> None:
    """Valid names, nested ones and destination names of any spelling pass; a part under a
    setting that is set whole does not."""
    environ = {
        "PACSAI_PORT": "1",
        "PACSAI_CONFIG": "x.yaml",
        "PACSAI_DESTINATIONS__CHEST_READING__HOST": "h",
        "PACSAI_MODELS__MEDIMAGEPARSE3D__KEY": "k",
        "PACSAI_EMULATOR__LATENCY_MS": "1",
        "PACSAI_ALLOWED_CALLERS": "[]",
        "PATH": "/bin",
    }
    assert unknown_environment(environ) == []
    assert unknown_environment({"PACSAI_PORT__X": "1"}) == [
        "PACSAI_PORT__X: port is set as a whole, not part by part"
    ]
    assert "unknown setting (see" in unknown_environment({"PACSAI_QQQQQQ": "1"})[0]


def test_unknown_receive_engine_stops_start_up_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PACSAI_RECEIVE_ENGINE other than fast or stock is a settings error naming
    receive_engine and its choices, before anything is created; both names load."""
    assert load_settings(None).receive_engine == "fast"
    assert load_settings(None, receive_engine="stock").receive_engine == "stock"
    monkeypatch.setenv("PACSAI_RECEIVE_ENGINE", "turbo")
    assert main(["serve", "--data-dir", str(tmp_path / "data")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "receive_engine: Input should be 'fast' or 'stock'" in err and "turbo" in err
    assert not (tmp_path / "data").exists()


@pytest.mark.skipif(module_available(ENTRA_MODULE), reason="the entra extra is installed")
def test_entra_without_its_extra_stops_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """auth: entra without azure-identity is a settings error naming the setting and the extra,
    at load (not in a job runner that would crash-loop)."""
    with pytest.raises(ConfigError, match=r"models\.cxrreportgen\.auth: .*'entra' extra"):
        load_settings(None, models={"cxrreportgen": {"auth": "entra"}})
    monkeypatch.setenv("PACSAI_MODELS__MEDIMAGEPARSE__AUTH", "entra")
    assert main(["serve", "--data-dir", str(tmp_path / "data")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "models.medimageparse.auth" in err and "pacs-ai-listener[entra]" in err
    assert not (tmp_path / "data").exists()


def test_summary_names_destinations_models_and_results(tmp_path: Path) -> None:
    """One line per destination and per model (endpoint without its query, or the emulator),
    and where results go; with no destination, a warning that results stay local."""
    settings = load_settings(
        None,
        data_dir=tmp_path,
        destinations={"pacs": {"ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242}},
        models={"cxrreportgen": {"endpoint": "https://x.example/score?code=s3cret", "key": "k"}},
    )
    lines = startup_summary(settings, effective_rules(settings), "http://127.0.0.1:5000")
    by_event: dict[str, list[dict[str, object]]] = {}
    for line in lines:
        by_event.setdefault(line.event, []).append(line.fields)
    assert by_event["destination_configured"] == [
        {"destination": "pacs", "peer": "ORTHANC@10.0.0.5:4242"}
    ]
    models = {str(fields["model"]): fields for fields in by_event["model_configured"]}
    assert set(models) == {"medimageinsight", "cxrreportgen", "medimageparse", "medimageparse3d"}
    assert models["cxrreportgen"]["source"] == "endpoint"
    assert models["cxrreportgen"]["endpoint"] == "https://x.example/score"
    assert models["cxrreportgen"]["key_set"] is True
    assert models["medimageparse"]["source"] == "emulator"
    assert "emulator" in str(models["medimageparse"]["notice"])
    assert by_event["results_destinations"][0]["destinations"] == ["pacs"]
    assert "s3cret" not in repr(lines) and "'k'" not in repr(lines)

    alone = load_settings(None, data_dir=tmp_path)
    (local,) = [
        line
        for line in startup_summary(alone, effective_rules(alone), None)
        if line.event == "results_kept_locally"
    ]
    assert local.level == "warning"
    assert (
        local.fields["message"] == f"results kept only under {tmp_path / 'results'}: no destination"
    )
