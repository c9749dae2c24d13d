"""C-STOREs served in the DUL thread, and the messages it leaves to pynetdicom, over loopback."""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from factory import ct_series, write_series
from peers import nodelay_env, run_receiver
from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.presentation import build_context

from listener.receive.server import prefer_requested_syntaxes, storage_contexts
from listener.receive.status import HANDLER_FAILURE, EchoStatus, StoreStatus
from listener.settings import Settings
from listener.store.journal import Journal
from listener.store.spool import Spool

# Every test here runs on both receive engines (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("receive_engine")

VERIFICATION = "1.2.840.10008.1.1"


def _serve(tmp_path: Path, **overrides: object) -> Iterator[tuple[Settings, Journal, Spool]]:
    with run_receiver(tmp_path, **overrides) as served:
        yield served


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[tuple[Settings, Journal, Spool]]:
    """A receiver with default settings on a free loopback port."""
    yield from _serve(tmp_path)


@pytest.fixture
def small_pdu_gateway(tmp_path: Path) -> Iterator[tuple[Settings, Journal, Spool]]:
    """A receiver that accepts P-DATA-TF PDUs of at most 4096 bytes."""
    yield from _serve(tmp_path, max_pdu_size=4096)


def _associate(settings: Settings, max_pdu: int = 0) -> object:
    ae = AE(ae_title="MODALITY")
    ae.maximum_pdu_size = max_pdu
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_requested_context(VERIFICATION)
    return ae.associate("127.0.0.1", settings.port, ae_title="PACSAI")


def test_echo_between_stores_on_one_association(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """A C-ECHO between two C-STOREs is answered, and both instances are stored."""
    settings, journal, spool = gateway
    first, second = ct_series(2)
    assoc = _associate(settings)
    assert assoc.send_c_store(first).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assert assoc.send_c_echo().Status == EchoStatus.SUCCESS  # type: ignore[attr-defined]
    assert assoc.send_c_store(second).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assert assoc.send_c_echo().Status == EchoStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert len(spool.files()) == 2
    (record,) = journal.associations()
    assert (record["received"], record["stored"], record["ended"]) == (2, 2, "released")


def test_each_association_gets_the_syntax_its_sender_prefers_at_the_same_time(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """Associations negotiated at once, half preferring explicit and half implicit VR for the
    same SOP class, each get their own first choice and store in it (the server's contexts
    are shared by all associations; each one's order is its own)."""
    settings, _journal, spool = gateway
    orders = [
        [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
    ]
    series = ct_series(8, uid_seed="preference")
    accepted: dict[int, str] = {}
    stored: dict[int, int] = {}

    def send(index: int) -> None:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage, orders[index % 2])
        assoc = ae.associate("127.0.0.1", settings.port, ae_title="PACSAI")
        assert assoc.is_established
        (context,) = assoc.accepted_contexts
        accepted[index] = str(context.transfer_syntax[0])
        stored[index] = int(assoc.send_c_store(series[index]).Status)
        assoc.release()

    threads = [threading.Thread(target=send, args=(index,)) for index in range(len(series))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert accepted == {index: str(orders[index % 2][0]) for index in range(len(series))}
    assert set(stored.values()) == {StoreStatus.SUCCESS}
    syntaxes: dict[str, str] = {}
    for relative in spool.files():
        meta = dcmread(spool.root / relative, stop_before_pixels=True).file_meta
        syntaxes[str(meta.MediaStorageSOPInstanceUID)] = str(meta.TransferSyntaxUID)
    assert syntaxes == {str(ds.SOPInstanceUID): accepted[index] for index, ds in enumerate(series)}


def test_the_association_limit_refuses_one_over_and_frees_a_slot_when_one_ends(
    tmp_path: Path,
) -> None:
    """``max_associations`` refuses the association over the limit (Rejected Transient, local
    limit exceeded, journalled with the reason), and a sender that comes back right after
    releasing is accepted again: associations that have ended do not count while their
    threads wind down."""
    with run_receiver(tmp_path, max_associations=2) as (settings, journal, _spool):
        held = [_associate(settings) for _ in range(2)]
        assert all(assoc.is_established for assoc in held)  # type: ignore[attr-defined]
        over = _associate(settings)
        assert over.is_rejected  # type: ignore[attr-defined]
        for _ in range(10):  # release both, and at once open two again
            for assoc in held:
                assoc.release()  # type: ignore[attr-defined]
            held = [_associate(settings) for _ in range(2)]
            assert all(assoc.is_established for assoc in held)  # type: ignore[attr-defined]
        for assoc in held:
            assoc.release()  # type: ignore[attr-defined]
        refused = [r for r in journal.associations() if r["ended"] == "rejected"]
        assert [str(r["error"]) for r in refused] == ["association limit of 2 reached"]


def test_preferred_order_leaves_the_servers_contexts_as_they_are() -> None:
    """The reordered contexts are copies: the list every association starts from is unchanged,
    and a context whose order already suits the sender is the server's own object."""
    server = storage_contexts()
    before = [list(context.transfer_syntax) for context in server]
    ct_index = next(i for i, cx in enumerate(server) if cx.abstract_syntax == CTImageStorage)
    requested = build_context(CTImageStorage, [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
    ordered = prefer_requested_syntaxes([requested], server)
    assert ordered[ct_index].transfer_syntax[:2] == [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    assert ordered[ct_index] is not server[ct_index]
    assert [list(context.transfer_syntax) for context in server] == before
    untouched = [i for i in range(len(server)) if i != ct_index]
    assert all(ordered[i] is server[i] for i in untouched)
    again = prefer_requested_syntaxes([requested], [ordered[ct_index]])
    assert again[0] is ordered[ct_index]  # already in the sender's order: no copy


def test_store_fragmented_over_many_pdus_is_kept_byte_for_byte(
    small_pdu_gateway: tuple[Settings, Journal, Spool],
) -> None:
    """An instance sent in many 4 KB PDUs is stored with exactly the bytes that were sent."""
    settings, _, spool = small_pdu_gateway
    ds = ct_series(1, rows=128, cols=128)[0]
    assoc = _associate(settings)
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    (stored,) = spool.files()
    sent = encode(ds, False, True)
    assert sent is not None and len(sent) > 8 * 4096
    on_disk = (spool.root / stored).read_bytes()
    assert on_disk.endswith(sent)
    assert dcmread(spool.root / stored).SOPInstanceUID == ds.SOPInstanceUID


def test_response_is_fragmented_for_a_peer_with_a_small_pdu_limit(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """A peer that takes only 128-byte PDUs still gets a C-STORE-RSP it can read."""
    settings, _, spool = gateway
    ds = ct_series(1)[0]
    assoc = _associate(settings, max_pdu=128)
    assert assoc.send_c_store(ds).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]
    assert len(spool.files()) == 1


def test_handler_failure_answers_processing_failure(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """A store that raises (journal gone) is answered with a failure; the association lives."""
    settings, journal, _ = gateway
    assoc = _associate(settings)
    journal.close()
    status = assoc.send_c_store(ct_series(1)[0]).Status  # type: ignore[attr-defined]
    assert status == StoreStatus.PROCESSING_FAILURE
    assert assoc.send_c_echo().Status == EchoStatus.SUCCESS  # type: ignore[attr-defined]
    assoc.release()  # type: ignore[attr-defined]


def test_unwritable_spool_answers_the_handler_failure_status_to_storescu(
    gateway: tuple[Settings, Journal, Spool], tmp_path: Path
) -> None:
    """DCMTK storescu sending to a receiver whose spool cannot take a file gets Processing
    Failure (0110H) for each instance on either engine, never pynetdicom's C211H nor an abort;
    the association is released and counts both as failed."""
    settings, journal, spool = gateway
    files = write_series(ct_series(2), tmp_path / "in")
    shutil.rmtree(spool.tmp)
    spool.tmp.write_bytes(b"")  # a file where the temporary folder was: no instance can start
    command = ["storescu", "-v", "-nh", "-aet", "MODALITY", "-aec", "PACSAI", "127.0.0.1"]
    out = subprocess.run(
        [*command, str(settings.port), *map(str, files)],
        capture_output=True,
        text=True,
        env=nodelay_env(),
        timeout=60,
    )
    responses = re.findall(r"Received Store Response \((.*)\)", out.stdout + out.stderr)
    assert responses == [f"Unknown Status: 0x{int(HANDLER_FAILURE):x}"] * 2, out.stdout
    assert HANDLER_FAILURE == 0x0110
    assert spool.files() == []
    (record,) = journal.associations()
    assert (record["received"], record["failed"], record["ended"]) == (2, 2, "released")


def test_abort_in_the_middle_of_a_store_keeps_nothing(
    gateway: tuple[Settings, Journal, Spool],
) -> None:
    """A peer that aborts halfway through a C-STORE leaves no file and an aborted association."""
    settings, journal, spool = gateway
    ds = ct_series(1, rows=128, cols=128)[0]
    assoc = _associate(settings)
    context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CTImageStorage)  # type: ignore[attr-defined]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CTImageStorage
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, context.transfer_syntax[0].is_implicit_VR, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(context.context_id, 4096))
    assert len(fragments) > 4
    for primitive in fragments[:3]:
        assoc.dul.send_pdu(primitive)  # type: ignore[attr-defined]
    assoc.abort()  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        records = journal.associations()
        if records and records[0]["ended"]:
            break
        time.sleep(0.02)
    (record,) = journal.associations()
    assert (record["ended"], record["received"]) == ("aborted", 0)
    assert spool.files() == []
    again = _associate(settings)
    assert again.send_c_store(ds).Status == StoreStatus.SUCCESS  # type: ignore[attr-defined]
    again.release()  # type: ignore[attr-defined]
    assert len(spool.files()) == 1
