"""Result objects sent to a real PACS (Orthanc) over C-STORE and filed under the source study."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from peers import Orthanc, nodelay_env
from pydicom import Dataset

# The converter tests' shared inputs (sources, masks, findings) live next to them.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters"))

from result_cases import (
    SOURCE_KINDS,
    block_masks,
    findings_for,
    frontal_of,
    load_sources,
    provenance,
)

from converters.model_outputs import Embeddings
from converters.results import (
    build_classification_results,
    build_parse_results,
    build_report_results,
)
from converters.seg import Prompt, SourceMasks

PROMPTS = (Prompt("liver", "liver"), Prompt("tumor", "tumor"), Prompt("cyst", "other lesion"))


def all_results(sources: list[Dataset]) -> list[Dataset]:
    """Every kind of result object for one source study: SEG, three SRs, a presentation state."""
    frontal = frontal_of(sources)
    masks = SourceMasks(PROMPTS, block_masks(sources, len(PROMPTS)))
    objects = list(build_parse_results(sources, masks, provenance()).objects)
    objects += build_report_results(
        sources, frontal, findings_for(frontal.image), provenance("cxrreportgen")
    )
    vectors = np.eye(3, 8, dtype=np.float32)
    embeddings = Embeddings(vectors[0], vectors, 4.5)
    labels = ("normal", "abnormal", "other")
    objects += build_classification_results(
        sources, frontal, labels, embeddings, provenance("medimageinsight")
    ).objects
    return objects


def dcmsend(orthanc: Orthanc, paths: list[Path]) -> None:
    """C-STORE files with DCMTK's dcmsend (it proposes exactly the contexts the files need)."""
    args = ["dcmsend", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port)]
    run = subprocess.run(
        [*args, *map(str, paths)], env=nodelay_env(), capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr


def write_all(datasets: list[Dataset], folder: Path) -> list[Path]:
    """Write each data set as a DICOM file under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(folder / f"{i:04d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.integration
def test_orthanc_files_every_result_under_its_source_study(
    orthanc: Orthanc, tmp_path: Path
) -> None:
    """Orthanc accepts each result over C-STORE and lists it as a new series of the source study."""
    for kind in SOURCE_KINDS:
        sources = load_sources(kind)
        study_uid = sources[0].StudyInstanceUID
        dcmsend(orthanc, write_all(sources, tmp_path / kind / "sources"))
        (study,) = orthanc.find("Study", {"StudyInstanceUID": study_uid})
        before = len(study["Series"])
        results = all_results(sources)
        dcmsend(orthanc, write_all(results, tmp_path / kind / "results"))
        (study,) = orthanc.find("Study", {"StudyInstanceUID": study_uid})
        assert len(study["Series"]) == before + len({ds.SeriesInstanceUID for ds in results})
        series = orthanc.find("Series", {"StudyInstanceUID": study_uid})
        found = {s["MainDicomTags"]["SeriesInstanceUID"] for s in series}
        assert {ds.SeriesInstanceUID for ds in results} <= found
        modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in series)
        assert modalities.count("SEG") == 1 and modalities.count("SR") == 3
        assert modalities.count("PR") == 1, kind


@pytest.mark.integration
def test_a_rerun_duplicates_nothing(orthanc: Orthanc, tmp_path: Path) -> None:
    """A re-run's results are byte-identical to the first run's, so Orthanc, which keeps the
    first copy of a UID (OverwriteInstances false by default), holds exactly one of each and it
    is the right one."""
    sources = load_sources("mr_small")
    dcmsend(orthanc, write_all(sources, tmp_path / "sources"))
    first = write_all(all_results(sources), tmp_path / "first")
    dcmsend(orthanc, first)
    count = orthanc.instance_count()
    second = write_all(all_results(sources), tmp_path / "second")
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    dcmsend(orthanc, second)
    assert orthanc.instance_count() == count
