"""Every SR kind we emit passes PixelMed's SR template validator (DicomSRValidator) without errors.

IHE AI Results connectathon testing runs PixelMed's validator on each SR and accepts warnings but
no errors. PixelMed checks the SR against its tables of the PS3.16 templates (TID 1500 and what it
includes) and context groups. Its command line takes one file per JVM, and each JVM spends seconds
loading the template tables, so a small Java runner validates all files in one JVM.

Warnings it gives on our SRs, accepted (PixelMed's 2022-06 tables predate or omit them):
"Content Item not in template" for Algorithm Manufacturer (TID 4019 row 2b, newer than the
tables), for qualitative evaluations and free-text findings in measurement groups, and for the
Finding Category and Algorithm Identification items of volumetric groups (its TID 1411 table
lacks them).

Prompts that MedImageParse found nothing for are recorded at the document root (TID 1500 rows 12
to 14), not as image-level groups beside the volumetric ones: PixelMed checks every group of an
Imaging Measurements container that references a segment against TID 1411, and an image-level
group there fails its region rows (5, 7 and 10) with "Missing conditional content item".
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import factory
import numpy as np
import pytest
from pydicom import Dataset
from result_cases import (
    block_masks,
    findings_for,
    frontal_of,
    load_sources,
    provenance,
    root_evaluations,
    write,
)

from converters.grounding import PixelFinding
from converters.model_outputs import Embeddings
from converters.results import (
    build_classification_results,
    build_parse_results,
    build_report_results,
)
from converters.seg import Prompt, SourceMasks

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")  # Debian package pixelmed-apps
# Java 17's default JAXP limits stop PixelMed's template stylesheets (JAXP0801003); lift them.
JAXP_LIMITS = (
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
SEPARATOR = "==== "
# Runs with java's single-file source launcher. The options are those of DicomSRValidator's own
# main() without flags: no describe, match code meaning case, no ambiguous-template,
# content-item-order or template-identifier checks.
RUNNER = """
import com.pixelmed.validate.DicomSRValidator;

public class ValidateAll {
    public static void main(String[] args) throws Exception {
        DicomSRValidator validator = new DicomSRValidator();
        for (String path : args) {
            System.out.println("SEPARATOR" + path);
            System.out.print(validator.validate(path, false, true, false, false, false));
        }
    }
}
""".replace("SEPARATOR", SEPARATOR)

# How PixelMed names the root-level container (TID 1500 row 12) where missed prompts go, in the
# path of any line about one of its items.
ROOT_EVALUATIONS = (
    '/CONTAINER (126000,DCM,"Imaging Measurement Report")'
    '/CONTAINER (C0034375,UMLS,"Qualitative Evaluations")'
)
LABELS = ("normal chest radiograph", "pneumonia", "pleural effusion")


@dataclass(frozen=True)
class Validated:
    """One SR as written and the lines PixelMed printed for it."""

    sr: Dataset
    lines: list[str]


def report_sr(kind: str, boxes: bool) -> Dataset:
    """CXRReportGen draft report: planar groups for boxed findings, or image-level ones only."""
    sources = load_sources(kind)
    frontal = frontal_of(sources)
    findings = findings_for(frontal.image)
    if not boxes:
        findings = [PixelFinding(finding.text) for finding in findings]
    return build_report_results(sources, frontal, findings, provenance("cxrreportgen"))[0]


def report_one_boxed_one_unboxed(order: str) -> Dataset:
    """A boxed and an unboxed finding side by side, in either order."""
    sources = load_sources("cr_chest")
    frontal = frontal_of(sources)
    findings = findings_for(frontal.image)
    pair = {"ub": [findings[0], findings[2]], "bu": [findings[2], findings[0]]}[order]
    return build_report_results(sources, frontal, pair, provenance("cxrreportgen"))[0]


def classification_sr(kind: str) -> Dataset:
    """MedImageInsight zero-shot classification of three labels."""
    sources = load_sources(kind)
    vectors = np.random.default_rng(7).normal(size=(4, 1024))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    embeddings = Embeddings(vectors[0].astype(np.float32), vectors[1:].astype(np.float32), 4.51)
    model = provenance("medimageinsight")
    results = build_classification_results(sources, frontal_of(sources), LABELS, embeddings, model)
    return results.objects[0]


def seg_sr(sources: list[Dataset], missed: bool) -> Dataset:
    """MedImageParse SEG-linked SR: two found prompts, and a third that found nothing if asked."""
    prompts = (Prompt("liver", "liver"), Prompt("mass", "tumor"), Prompt("stone", "other lesion"))
    masks = block_masks(sources, 3)  # the last prompt's mask is empty
    if not missed:
        prompts, masks = prompts[:2], masks[:2]
    return build_parse_results(sources, SourceMasks(prompts, masks), provenance()).objects[-1]


def all_missed_sr(sources: list[Dataset]) -> Dataset:
    """MedImageParse SR without a SEG: both prompts found nothing."""
    prompts = (Prompt("mass", "tumor"), Prompt("stone", "other lesion"))
    masks = np.zeros((2, *block_masks(sources, 1).shape[1:]), dtype=np.bool_)
    return build_parse_results(sources, SourceMasks(prompts, masks), provenance()).objects[-1]


CASES: dict[str, Callable[[], Dataset]] = {
    "report_with_boxes": lambda: report_sr("cr_chest", boxes=True),
    "report_without_boxes": lambda: report_sr("cr_chest", boxes=False),
    "report_unboxed_then_boxed": lambda: report_one_boxed_one_unboxed("ub"),
    "report_boxed_then_unboxed": lambda: report_one_boxed_one_unboxed("bu"),
    "classification_mr": lambda: classification_sr("mr_small"),
    "classification_capture": lambda: classification_sr("rgb_capture"),
    "seg_found_and_missed_ct": lambda: seg_sr(factory.ct_series(4), missed=True),
    "seg_found_multiframe": lambda: seg_sr(load_sources("enhanced_ct"), missed=False),
    "seg_all_missed": lambda: all_missed_sr(factory.ct_series(4)),
}


def run_pixelmed(paths: list[Path], folder: Path) -> dict[str, list[str]]:
    """PixelMed's output lines per file name, from one JVM for all ``paths``."""
    runner = folder / "ValidateAll.java"
    runner.write_text(RUNNER)
    command = ["java", *JAXP_LIMITS, "-cp", str(PIXELMED_JAR), str(runner), *map(str, paths)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, f"PixelMed runner failed: {run.stderr[-2000:]}"
    output: dict[str, list[str]] = {}
    lines: list[str] = []
    for line in run.stdout.splitlines():
        if line.startswith(SEPARATOR):
            lines = output.setdefault(Path(line[len(SEPARATOR) :]).stem, [])
        else:
            lines.append(line)
    return output


@pytest.fixture(scope="module")
def validated(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Validated]:
    """Every case built, written and validated by PixelMed in one run."""
    folder = tmp_path_factory.mktemp("pixelmed")
    srs = {name: build() for name, build in CASES.items()}
    output = run_pixelmed([write(sr, folder, name) for name, sr in srs.items()], folder)
    return {name: Validated(sr, output.get(name, [])) for name, sr in srs.items()}


@pytest.mark.parametrize("case", CASES)
def test_pixelmed_finds_no_template_errors(case: str, validated: dict[str, Validated]) -> None:
    """PixelMed checks the SR as TID 1500 and prints no Error line."""
    result = validated[case]
    assert "Found Root Template TID_1500 (MeasurementReport)" in result.lines, result.lines[:5]
    assert "IOD validation complete" in result.lines, result.lines[-5:]
    errors = [line for line in result.lines if line.startswith("Error")]
    assert not errors, "\n".join(errors)


def test_missed_prompts_sit_in_template_at_the_root(validated: dict[str, Validated]) -> None:
    """Missed prompts are root-level Qualitative Evaluations that PixelMed finds in template."""
    for case in ("seg_found_and_missed_ct", "seg_all_missed"):
        result = validated[case]
        coded, texts = root_evaluations(result.sr)
        assert coded and len(coded) == len(texts), case
        flagged = [line for line in result.lines if ROOT_EVALUATIONS in line]
        assert not flagged, "\n".join(flagged)
