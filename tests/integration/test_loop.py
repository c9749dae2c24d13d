"""The whole loop, PACS to PACS: storescu -> pacs-ai serve (example rules) -> emulator -> Orthanc.

Every peer is real: DCMTK storescu is the modality, Orthanc the PACS, storescp the archive and
reading workstations, the emulator answers over loopback HTTP, and the gateway runs as its own
process tree (`pacs-ai serve`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from factory import ct_series, write_series
from peers import (
    Gateway,
    Orthanc,
    free_port,
    nodelay_env,
    run_gateway,
    run_orthanc,
    run_storescp,
    wait_for,
)
from pydicom import dcmread
from pydicom.data import get_testdata_file

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "rules.yaml"
PACS_AI = str(Path(sys.executable).parent / "pacs-ai")

pytestmark = pytest.mark.integration


def _destination_env(name: str, aet: str, port: int) -> dict[str, str]:
    prefix = f"PACSAI_DESTINATIONS__{name.upper().replace('-', '_')}__"
    return {f"{prefix}AE_TITLE": aet, f"{prefix}HOST": "127.0.0.1", f"{prefix}PORT": str(port)}


def _storescu(port: int, paths: list[Path], *, aet: str = "MODALITY", aec: str = "PACSAI") -> None:
    subprocess.run(
        ["storescu", "-aet", aet, "-aec", aec, "127.0.0.1", str(port), *map(str, paths)],
        check=True,
        env=nodelay_env(),
        timeout=120,
    )


def _series_modalities(orthanc: Orthanc, study_uid: str) -> list[str]:
    studies = orthanc.find("Study", {"StudyInstanceUID": study_uid})
    if not studies:
        return []
    series = orthanc.get(f"/studies/{studies[0]['ID']}/series")
    return sorted(s["MainDicomTags"].get("Modality", "") for s in series)


def _cr_chest(folder: Path) -> Path:
    source = get_testdata_file("RG1_UNCR.dcm")
    assert source is not None
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "cr.dcm"
    target.write_bytes(Path(source).read_bytes())
    return target


def _jobs(data_dir: Path) -> dict[str, Any]:
    result = subprocess.run(
        [PACS_AI, "jobs", "list", "--json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def _dataset_bytes(path: Path) -> bytes:
    """The dataset part of a DICOM file (after the file meta), as sent on the wire."""
    ds = dcmread(path, stop_before_pixels=False)
    data = path.read_bytes()
    meta_end = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    return data[meta_end:]


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[Orthanc]:
    """Orthanc as the PACS, in its default configuration."""
    with run_orthanc(tmp_path / "orthanc") as orthanc:
        yield orthanc


def test_cr_and_ct_results_reach_the_pacs_and_originals_are_forwarded(
    tmp_path: Path, pacs: Orthanc
) -> None:
    """A chest CR gets its report SR, classification SR and GSPS in Orthanc, a 64-slice CT its
    SEG and SR, all in the source studies; the forwarding rule delivers the CT originals to the
    archive byte-identical."""
    cr = _cr_chest(tmp_path / "cr")
    ct_files = write_series(ct_series(64, body_part="CHEST"), tmp_path / "ct")
    with run_storescp(tmp_path / "archive", "ARCHIVE") as archive:
        env = {
            "PACSAI_RULES_FILE": str(RULES),
            **_destination_env("pacs", pacs.aet, pacs.dicom_port),
            **_destination_env("archive", archive.aet, archive.port),
        }
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            _storescu(gateway.port, [cr])
            _storescu(gateway.port, ct_files, aet="CT_SCANNER1")
            cr_uid = str(dcmread(cr).StudyInstanceUID)
            ct_uid = str(dcmread(ct_files[0]).StudyInstanceUID)
            wait_for(
                "CR results in Orthanc",
                lambda: (
                    _series_modalities(pacs, cr_uid).count("SR") == 2
                    and "PR" in _series_modalities(pacs, cr_uid)
                ),
            )
            wait_for("CT SEG in Orthanc", lambda: "SEG" in _series_modalities(pacs, ct_uid))
            wait_for(
                "CT originals in the archive", lambda: len(list(archive.folder.iterdir())) == 64
            )
        assert "CR" not in _series_modalities(pacs, cr_uid)  # results only, originals stay put
        forwarded = {dcmread(p).SOPInstanceUID: _dataset_bytes(p) for p in archive.folder.iterdir()}
        for sent in ct_files:
            assert forwarded[dcmread(sent).SOPInstanceUID] == _dataset_bytes(sent)
        (seg_series,) = pacs.find("Series", {"StudyInstanceUID": ct_uid, "Modality": "SEG"})
        (instance_id,) = seg_series["Instances"]
        seg = dcmread(BytesIO(pacs.client.get(f"/instances/{instance_id}/file").content))
        labels = {str(segment.SegmentLabel) for segment in seg.SegmentSequence}
        assert labels and labels <= {"lung", "tumor"}  # the prompts of rule ct-mr-chest


def test_routing_by_classification_sends_each_study_to_its_label(
    tmp_path: Path, pacs: Orthanc
) -> None:
    """Studies sent to the sorting AE go to the destination mapped to their top label."""
    studies = {
        "cr": [_cr_chest(tmp_path / "cr")],
        "head": write_series(ct_series(3, body_part="HEAD"), tmp_path / "head"),
    }
    with (
        run_storescp(tmp_path / "chest", "CHESTWS") as chest,
        run_storescp(tmp_path / "neuro", "NEUROWS") as neuro,
    ):
        env = {
            "PACSAI_RULES_FILE": str(RULES),
            "PACSAI_AE_TITLES": '["PACSAI", "PACSAI_SORT"]',
            **_destination_env("pacs", pacs.aet, pacs.dicom_port),
            **_destination_env("chest-reading", chest.aet, chest.port),
            **_destination_env("neuro-reading", neuro.aet, neuro.port),
        }
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
            for files in studies.values():
                _storescu(gateway.port, files, aec="PACSAI_SORT")
            done = wait_for(
                "both classification jobs",
                lambda: (
                    [j for j in _jobs(gateway.data_dir)["jobs"] if j["state"] == "COMPLETED"]
                    if len(
                        [j for j in _jobs(gateway.data_dir)["jobs"] if j["state"] == "COMPLETED"]
                    )
                    == 2
                    else None
                ),
            )
            routes = {"chest x-ray": chest, "head CT": neuro, "brain MRI": neuro}
            for job in done:
                sr = dcmread(
                    gateway.data_dir / "results" / job["study_uid"] / f"{job['outputs'][0]}.dcm"
                )
                top = _top_label(sr)
                expected = routes.get(top)
                count = len(_files(studies, job["study_uid"]))
                if expected is None:
                    wait_for(
                        "study in the PACS",
                        lambda uid=job["study_uid"]: pacs.find("Study", {"StudyInstanceUID": uid}),
                    )
                else:
                    wait_for(
                        f"{top} study at {expected.aet}",
                        lambda e=expected, uid=job["study_uid"], n=count: (
                            _received(e.folder, uid) == n
                        ),
                    )
                for other in (chest, neuro):
                    if other is not expected:
                        assert _received(other.folder, job["study_uid"]) == 0


def _files(studies: dict[str, list[Path]], study_uid: str) -> list[Path]:
    return next(f for f in studies.values() if str(dcmread(f[0]).StudyInstanceUID) == study_uid)


def _received(folder: Path, study_uid: str) -> int:
    return sum(1 for p in folder.iterdir() if str(dcmread(p).StudyInstanceUID) == study_uid)


def _top_label(sr: Any) -> str:
    """The label whose probability is highest in a classification SR (TID 1500 groups)."""
    best: tuple[float, str] = (-1.0, "")

    def walk(items: Any) -> None:
        nonlocal best
        for item in items:
            children = item.get("ContentSequence", [])
            label = next(
                (
                    str(c.ConceptCodeSequence[0].CodeMeaning)
                    for c in children
                    if c.ValueType == "CODE" and c.ConceptNameCodeSequence[0].CodeValue == "121071"
                ),
                None,
            )
            value = next(
                (
                    float(c.MeasuredValueSequence[0].NumericValue)
                    for c in children
                    if c.ValueType == "NUM"
                ),
                None,
            )
            if label is not None and value is not None and value > best[0]:
                best = (value, label)
            walk(children)

    walk(sr.ContentSequence)
    return best[1]


def test_destination_down_then_back_gets_results_once(tmp_path: Path) -> None:
    """With the PACS down while the study is processed (and the emulator failing 30% of calls),
    the results arrive once it is back, with no duplicates."""
    cr = _cr_chest(tmp_path / "cr")
    port = free_port()
    env = {
        "PACSAI_RULES_FILE": str(RULES),
        "PACSAI_SEND_RETRY_BASE_S": "0.5",
        "PACSAI_EMULATOR__FAULT_RATE": "0.3",
        "PACSAI_EMULATOR__RETRY_AFTER_S": "0",
        **_destination_env("pacs", "ORTHANC", port),
    }
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        _storescu(gateway.port, [cr])
        wait_for("the jobs to finish", lambda: _all_completed(gateway, 2))
        wait_for("a failed send", lambda: gateway.events("send_association_failed"))
        with run_orthanc(tmp_path / "orthanc", DicomPort=port) as pacs:
            uid = str(dcmread(cr).StudyInstanceUID)
            wait_for(
                "results in Orthanc", lambda: _series_modalities(pacs, uid) == ["PR", "SR", "SR"]
            )
            time.sleep(3)
            assert pacs.instance_count() == 3


def _all_completed(gateway: Gateway, count: int) -> bool:
    jobs = _jobs(gateway.data_dir)["jobs"]
    return len(jobs) == count and all(j["state"] == "COMPLETED" for j in jobs)


def test_permanent_rejection_goes_to_dead_letter_and_retry_delivers(tmp_path: Path) -> None:
    """A PACS that rejects our called AE title dead-letters the results; `jobs list` shows them;
    after the AE title is corrected, `jobs retry` delivers them."""
    cr = _cr_chest(tmp_path / "cr")
    uid = str(dcmread(cr).StudyInstanceUID)
    with run_orthanc(tmp_path / "orthanc", DicomCheckCalledAet=True) as pacs:
        wrong = {
            "PACSAI_RULES_FILE": str(RULES),
            **_destination_env("pacs", "WRONG_AE", pacs.dicom_port),
        }
        with run_gateway(tmp_path / "var", "--quiet-period", "1", env=wrong) as gateway:
            _storescu(gateway.port, [cr])
            listing = wait_for(
                "dead letters",
                lambda: (lambda j: j if len(j["dead_letters"]) == 3 else None)(
                    _jobs(gateway.data_dir)
                ),
            )
        text = subprocess.run(
            [PACS_AI, "jobs", "list", "--data-dir", str(gateway.data_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "DEAD LETTERS" in text and "rejected" in text.lower()
        assert pacs.instance_count() == 0
        right = {**wrong, **_destination_env("pacs", pacs.aet, pacs.dicom_port)}
        with run_gateway(
            tmp_path / "var", "--quiet-period", "1", env=right, log_name="serve2.log"
        ) as gateway:
            for job_id in {int(d["job_id"]) for d in listing["dead_letters"]}:
                subprocess.run(
                    [PACS_AI, "jobs", "retry", str(job_id), "--data-dir", str(gateway.data_dir)],
                    check=True,
                    env=nodelay_env(**{k: v for k, v in right.items()}),
                )
            wait_for("results in Orthanc", lambda: len(_series_modalities(pacs, uid)) == 3)


def test_kill_during_inference_completes_every_study_exactly_once(
    tmp_path: Path, pacs: Orthanc
) -> None:
    """Kill -9 of the whole service while models are answering: after a restart every study
    completes and each result is in the PACS exactly once."""
    cr = _cr_chest(tmp_path / "cr")
    ct_files = write_series(ct_series(8, body_part="CHEST"), tmp_path / "ct")
    env = {
        "PACSAI_RULES_FILE": str(RULES),
        "PACSAI_EMULATOR__LATENCY_MS": "1500",
        **_destination_env("pacs", pacs.aet, pacs.dicom_port),
    }
    with run_gateway(tmp_path / "var", "--quiet-period", "1", env=env) as gateway:
        _storescu(gateway.port, [cr])
        _storescu(gateway.port, ct_files)
        wait_for(
            "jobs in progress",
            lambda: any(j["state"] == "IN PROGRESS" for j in _jobs(gateway.data_dir)["jobs"]),
        )
        gateway.kill_hard()
    with run_gateway(
        tmp_path / "var", "--quiet-period", "1", env=env, log_name="again.log"
    ) as gateway:
        wait_for("every job completed", lambda: _all_completed(gateway, 3))
        cr_uid = str(dcmread(cr).StudyInstanceUID)
        ct_uid = str(dcmread(ct_files[0]).StudyInstanceUID)
        wait_for("CR results", lambda: len(_series_modalities(pacs, cr_uid)) == 3)
        wait_for("CT results", lambda: _series_modalities(pacs, ct_uid) == ["SEG", "SR"])
        time.sleep(2)
    per_series = [
        len(pacs.get(f"/series/{s['ID']}/instances"))
        for uid in (cr_uid, ct_uid)
        for s in pacs.find("Series", {"StudyInstanceUID": uid})
    ]
    assert per_series == [1] * 5


def test_invalid_rules_file_stops_start_up_naming_rule_and_field(tmp_path: Path) -> None:
    """`pacs-ai serve` with a broken rules file exits 2 and names the rule and the field."""
    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - name: broken-rule\n    match: {attribute: Modality, regex: '(['}\n")
    result = subprocess.run(
        [PACS_AI, "serve", "--port", str(free_port()), "--data-dir", str(tmp_path / "var")],
        capture_output=True,
        text=True,
        env=nodelay_env(PACSAI_RULES_FILE=str(bad)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "broken-rule" in result.stderr and "match.regex" in result.stderr
