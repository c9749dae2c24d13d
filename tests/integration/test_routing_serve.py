"""Routing through ``pacs-ai serve`` with DCMTK storescu as the modality: rules on the sender's
address, expected content with a maximum wait, and the hard ceiling on a study's wait."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from factory import ct_series, write_series
from peers import (
    Gateway,
    StoreSCP,
    free_port,
    run_gateway,
    run_storescp,
    send_with_storescu,
    wait_for,
    written_uids,
)
from pydicom import dcmread

from listener.store.outbox import Outbox

pytestmark = pytest.mark.integration


def _wait_for(what: str, check: Callable[[], Any], timeout: float = 120.0) -> Any:
    """:func:`peers.wait_for` with this file's shorter default."""
    return wait_for(what, check, timeout)


def _received(scp: StoreSCP) -> set[str]:
    return written_uids(scp.folder)


def _destination(name: str, port: int) -> str:
    return f"  {name}: {{ae_title: {name.upper()}, host: 127.0.0.1, port: {port}}}\n"


def _rules(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return {"PACSAI_RULES_FILE": str(path)}


def _forwarded(gateway: Gateway, destination: str) -> list[str]:
    outbox = Outbox(gateway.data_dir / "journal.sqlite")
    try:
        return [e.sop_instance_uid for e in outbox.entries(destination=destination)]
    finally:
        outbox.close()


def test_rule_on_the_senders_network(tmp_path: Path) -> None:
    """A study from storescu on loopback is forwarded by the rule on 127.0.0.0/8 and not by the
    rule on 10.20.0.0/16, both evaluated in the same plan."""
    files = write_series(ct_series(3), tmp_path / "ct")
    with run_storescp(tmp_path / "local", "LOCAL") as local:
        rules = (
            "destinations:\n"
            + _destination("local", local.port)
            + _destination("remote", free_port())
            + "rules:\n"
            "  - name: from-loopback\n"
            "    match: {association: peer, networks: [127.0.0.0/8]}\n"
            "    forward_to: [local]\n"
            "  - name: from-the-ed\n"
            "    match: {association: peer, networks: [10.20.0.0/16]}\n"
            "    forward_to: [remote]\n"
        )
        env = _rules(tmp_path, rules)
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            send_with_storescu(gateway.port, files)
            expected = {str(dcmread(p).SOPInstanceUID) for p in files}
            _wait_for("the loopback forward", lambda: _received(local) == expected)
            assert _forwarded(gateway, "remote") == []
            (planned,) = gateway.events("study_planned")
            assert planned["rules"] == ["from-loopback"]


def _chest_views(folder: Path) -> tuple[Path, Path]:
    """A PA and a lateral view of one chest study (as CR)."""
    pa, lateral = ct_series(2)
    for ds, view in ((pa, "PA"), (lateral, "LL")):
        ds.Modality = "CR"
        ds.ViewPosition = view
        ds.BodyPartExamined = "CHEST"
    paths = write_series([pa, lateral], folder)
    return paths[0], paths[1]


def _chest_pair_rules(local_port: int, max_wait_s: float) -> str:
    return (
        "destinations:\n" + _destination("local", local_port) + "rules:\n"
        "  - name: chest-pair\n"
        "    match: {attribute: Modality, equals: CR}\n"
        "    expect:\n"
        "      conditions:\n"
        "        - {attribute: ViewPosition, one_of: [PA, AP]}\n"
        "        - {attribute: ViewPosition, one_of: [LL, LATERAL]}\n"
        f"      max_wait_s: {max_wait_s}\n"
        "      on_timeout: process\n"
        "    forward_to: [local]\n"
    )


def test_expected_pair_sent_in_two_associations_is_planned_once_complete(tmp_path: Path) -> None:
    """A PA sent alone waits (its lateral is expected); the lateral sent later in another
    association completes it, and the study is planned once, with both views."""
    pa, lateral = _chest_views(tmp_path / "cr")
    with run_storescp(tmp_path / "local", "LOCAL") as local:
        env = _rules(tmp_path, _chest_pair_rules(local.port, 600))
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            send_with_storescu(gateway.port, [pa])
            _wait_for("the PA to wait for its lateral", lambda: gateway.events("study_waiting"))
            send_with_storescu(gateway.port, [lateral])
            (planned,) = _wait_for("the plan", lambda: gateway.events("study_planned"))
            assert planned["forwards"] == 2
            expected = {str(dcmread(p).SOPInstanceUID) for p in (pa, lateral)}
            _wait_for("both views forwarded", lambda: _received(local) == expected)


def test_expected_content_missing_is_processed_after_its_maximum_wait(tmp_path: Path) -> None:
    """A PA whose lateral never comes is processed (forwarded) once the rule's max wait ends."""
    pa, _lateral = _chest_views(tmp_path / "cr")
    with run_storescp(tmp_path / "local", "LOCAL") as local:
        env = _rules(tmp_path, _chest_pair_rules(local.port, 3))
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            send_with_storescu(gateway.port, [pa])
            expected = {str(dcmread(pa).SOPInstanceUID)}
            _wait_for("the PA forwarded alone", lambda: _received(local) == expected)
            assert gateway.events("study_waiting")


def test_study_is_released_at_the_maximum_study_wait(tmp_path: Path) -> None:
    """With a quiet period of ten minutes and max_study_wait_s of 2 s, a study is released (and
    forwarded) after the ceiling, not after the quiet period."""
    files = write_series(ct_series(2), tmp_path / "ct")
    with run_storescp(tmp_path / "local", "LOCAL") as local:
        rules = (
            "destinations:\n" + _destination("local", local.port) + "rules:\n"
            "  - name: everything\n"
            "    match: {attribute: Modality, equals: CT}\n"
            "    forward_to: [local]\n"
        )
        env = {**_rules(tmp_path, rules), "PACSAI_MAX_STUDY_WAIT_S": "2"}
        with run_gateway(tmp_path / "var", "--quiet-period", "600", env=env) as gateway:
            send_with_storescu(gateway.port, files)
            expected = {str(dcmread(p).SOPInstanceUID) for p in files}
            _wait_for("the forward after the ceiling", lambda: _received(local) == expected)
