"""``pacs-ai echo`` and ``pacs-ai send`` against real peers on loopback: the reason a peer gave
for refusing an association, and files read one at a time as they are sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from factory import ct_series, write_series
from peers import free_port, run_receiver
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from listener.cli.common import EXIT_FAILED, EXIT_OK
from listener.cli.main import main
from listener.receive.status import StoreStatus

pytestmark = pytest.mark.integration


def test_echo_with_a_wrong_called_ae_title_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer that rejects our called AE title is reported with the A-ASSOCIATE-RJ reason
    (PS3.8 §9.3.4); a closed port is reported as nothing answering; the right title succeeds."""
    with run_receiver(tmp_path / "data") as (settings, _, _):
        port = str(settings.port)
        assert main(["echo", "127.0.0.1", port, "--aec", "WRONG"]) == EXIT_FAILED
        rejected = capsys.readouterr().err
        assert main(["echo", "127.0.0.1", port]) == EXIT_OK
        assert "success" in capsys.readouterr().out
    assert "Called AE Title Not Recognized" in rejected
    assert "rejected by WRONG@127.0.0.1" in rejected and "(permanent)" in rejected
    assert main(["echo", "127.0.0.1", str(free_port()), "--timeout", "5"]) == EXIT_FAILED
    closed = capsys.readouterr().err
    assert "nothing answered" in closed and "Not Recognized" not in closed


def test_send_with_a_wrong_called_ae_title_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Send reports every file as not sent, with the peer's reason."""
    write_series(ct_series(2), tmp_path / "ct")
    with run_receiver(tmp_path / "data") as (settings, journal, _):
        argv = ["send", "127.0.0.1", str(settings.port), "--aec", "WRONG", "--no-progress"]
        assert main([*argv, str(tmp_path / "ct")]) == EXIT_FAILED
        assert journal.studies() == []
    err = capsys.readouterr().err
    assert "sent 0, failed 2" in err
    assert err.count("Called AE Title Not Recognized") == 2


def test_send_reads_each_file_when_it_is_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Files are read one by one during the association, not all before it opens: a file that
    disappears while the first one is being stored is reported missing, and the others arrive."""
    files = write_series(ct_series(3), tmp_path / "ct")
    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        if len(received) == 1:
            files[1].unlink()  # the second file goes while the first is in flight
        return int(StoreStatus.SUCCESS)

    scp = AE(ae_title="PEER")
    scp.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    port = free_port()
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        argv = ["send", "127.0.0.1", str(port), "--aec", "PEER", "--no-progress"]
        assert main([*argv, *map(str, files)]) == EXIT_FAILED
    finally:
        server.shutdown()
    err = capsys.readouterr().err
    assert "sent 2, failed 1" in err
    assert f"{files[1]}: not readable as DICOM" in err
    assert len(received) == 2
