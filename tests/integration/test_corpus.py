"""The result corpus: every stressing input, through the path ``pacs-ai process`` takes.

Inputs: pydicom's and pydicom-data's RG1_UNCR and RG1_J2KR (one CR chest, MONOCHROME1, in two
transfer syntaxes, same UIDs), MR-SIEMENS-DICOM-WithOverlays and examples_overlay (two images of
one MR study), MR_small, the Enhanced CT eCT_Supplemental, chrX1 (UTF-8) and chrH31 (ISO 2022);
and synthetic ones with fixed UIDs: axial, oblique and gantry-tilted CT series, CR chests in
MONOCHROME1 and with VOI LUT Data as OW and as US, CT series in UTF-8, in Latin-1 and without a
character set, each asked non-ASCII prompts, a thin CT for MedImageParse 3D and one rule with
two tasks of the same model. Each input is processed alone by
:func:`listener.cli.process.process_paths` (emulator over loopback HTTP, fixed clock) with the
embedded default rules and three corpus rules.

Checked on every output: dciodvfy finds no error; PixelMed's SR validator finds no error in any
SR; dcentvfy finds no error across the results of each study (several inputs share a study);
one SOP Instance UID never names two different contents; and each output's SHA-256 equals the
one stored in ``corpus_digests.json`` (keyed by input, task and modality), which proves that a
re-run gives the same bytes. dcmqi reads every SEG but the gantry-tilted one into volumes, a
distinct colour per segment, and every SEG-linked SR (tid1500reader).

After a deliberate change of the results' bytes (or of a library that writes them), regenerate
the stored digests with ``UPDATE_CORPUS_DIGESTS=1 pytest tests/integration/test_corpus.py``
and review the diff of ``corpus_digests.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import factory
import pytest
from pydicom import Dataset, dcmread
from pydicom.data import get_charset_files, get_testdata_file

from listener.cli.process import process_paths
from listener.route.defaults import default_rule_data
from listener.route.model import RuleSet
from listener.settings import MODEL_NAMES, Settings, load_settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "converters"))

from test_sr_template import run_pixelmed  # the PixelMed runner (one JVM for all files)

pytestmark = pytest.mark.integration

DIGESTS = Path(__file__).with_name("corpus_digests.json")
UPDATE = os.environ.get("UPDATE_CORPUS_DIGESTS") == "1"
CLOCK = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=1)))
DCMQI = Path(sys.executable).parent
NON_ASCII_PROMPTS = ["pneumothorax – large", "肺炎", "liver"]
TILTED = "ct_gantry_tilted"
CORPUS_RULES: list[dict[str, Any]] = [
    {
        "name": "text-prompts",
        "priority": 300,
        "match": {"attribute": "PatientID", "one_of": ["SYN-UTF8", "SYN-LATIN1", "SYN-NOCS"]},
        "tasks": [
            {
                "name": "segment",
                "model": "medimageparse",
                "prompts": NON_ASCII_PROMPTS,
                "window": "ct-abdomen",
            }
        ],
        "on_match": "stop",
    },
    {
        "name": "ct-3d",
        "priority": 300,
        "match": {"attribute": "PatientID", "equals": "SYN-3D"},
        "tasks": [
            {
                "name": "segment3d",
                "model": "medimageparse3d",
                "prompts": ["liver", "kidney", "tumor"],
                "window": "ct-abdomen",
            }
        ],
        "on_match": "stop",
    },
    {
        "name": "two-tasks",
        "priority": 300,
        "match": {"attribute": "PatientID", "equals": "SYN-TWO"},
        "tasks": [
            {"name": "organs", "model": "medimageparse", "prompts": ["liver", "kidney"]},
            {"name": "lesions", "model": "medimageparse", "prompts": ["tumor", "cyst"]},
        ],
        "on_match": "stop",
    },
]


def _pydicom_file(name: str) -> Callable[[], list[Dataset]]:
    def load() -> list[Dataset]:
        path = get_testdata_file(name) or next(iter(get_charset_files(name)), None)
        assert path is not None, f"{name} missing: install the dev dependency pydicom-data"
        return [dcmread(path)]

    return load


def _ct(seed: str, patient_id: str = "SYN-CT", n: int = 6, **options: Any) -> list[Dataset]:
    series = factory.ct_series(n, uid_seed=seed, body_part="ABDOMEN", **options)
    for ds in series:
        ds.PatientID = patient_id
    return series


def _text_ct(seed: str, patient_id: str, charset: str | None, name: str) -> list[Dataset]:
    series = _ct(seed, patient_id, n=4)
    for ds in series:
        if charset is None:
            del ds.SpecificCharacterSet
        else:
            ds.SpecificCharacterSet = charset
        ds.PatientName = name
    return series


def _cr(seed: str, voi_lut: str | None = None) -> list[Dataset]:
    ds = factory.chest_radiograph(seed)
    return [factory.with_voi_lut(ds, voi_lut) if voi_lut else ds]


INPUTS: dict[str, Callable[[], list[Dataset]]] = {
    "RG1_UNCR": _pydicom_file("RG1_UNCR.dcm"),
    "RG1_J2KR": _pydicom_file("RG1_J2KR.dcm"),
    "MR-SIEMENS": _pydicom_file("MR-SIEMENS-DICOM-WithOverlays.dcm"),
    "examples_overlay": _pydicom_file("examples_overlay.dcm"),
    "MR_small": _pydicom_file("MR_small.dcm"),
    "eCT_Supplemental": _pydicom_file("eCT_Supplemental.dcm"),
    "chrX1": _pydicom_file("chrX1.dcm"),
    "chrH31": _pydicom_file("chrH31.dcm"),
    "ct_axial": lambda: _ct("corpus-axial"),
    "ct_oblique": lambda: _ct("corpus-oblique", oblique_deg=20.0),
    TILTED: lambda: _ct("corpus-tilted", gantry_tilt_deg=15.0),
    "ct_thin_3d": lambda: _ct("corpus-3d", "SYN-3D", n=8, thickness=1.5),
    "ct_two_tasks": lambda: _ct("corpus-two", "SYN-TWO", n=4),
    "ct_utf8": lambda: _text_ct("corpus-utf8", "SYN-UTF8", "ISO_IR 192", "Wang^XiaoDong=王^小東"),
    "ct_latin1": lambda: _text_ct("corpus-latin1", "SYN-LATIN1", "ISO_IR 100", "Müller^Jürgen"),
    "ct_no_charset": lambda: _text_ct("corpus-nocs", "SYN-NOCS", None, "Doe^John"),
    "cr_monochrome1": lambda: _cr("corpus-cr"),
    "cr_voi_lut_ow": lambda: _cr("corpus-voi-ow", "OW"),
    "cr_voi_lut_us": lambda: _cr("corpus-voi-us", "US"),
}


@dataclass(frozen=True)
class Output:
    """One result object the corpus produced."""

    input: str
    task: str
    path: Path
    modality: str
    study_uid: str
    sop_instance_uid: str
    digest: str

    @property
    def key(self) -> str:
        return f"{self.input} {self.task} {self.modality}"


@dataclass(frozen=True)
class Corpus:
    """Every output of the corpus run, and the tasks that failed (none expected)."""

    outputs: list[Output]
    failures: list[str]
    folder: Path


def _allowing_burned_in(settings: Settings) -> Settings:
    """The settings with every model's egress policy letting images that may carry burned-in
    text leave: pydicom's chrX1/chrH31 are secondary captures that do not say Burned In
    Annotation NO, which the default policy withholds (a site allows such images by setting);
    the corpus is about the result objects, not the egress policy (tests/listener/test_egress.py
    is)."""
    models = {
        name: settings.models.get(name).model_copy(
            update={
                "egress": settings.models.get(name).egress.model_copy(
                    update={"allow_burned_in": True}
                )
            }
        )
        for name in MODEL_NAMES
    }
    return settings.model_copy(update={"models": settings.models.model_copy(update=models)})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Each input processed alone, the way ``pacs-ai process`` does it."""
    root = tmp_path_factory.mktemp("corpus")
    settings = _allowing_burned_in(load_settings(None, data_dir=root / "var"))
    data = default_rule_data()
    rules = RuleSet.model_validate({**data, "rules": [*CORPUS_RULES, *data["rules"]]})
    outputs, failures = [], []
    for name, make in INPUTS.items():
        paths = factory.write_series(make(), root / "in" / name)
        for line in process_paths(paths, root / "out" / name, settings, rules, lambda: CLOCK):
            if line.path is None:
                failures.append(f"{name} {line.task}: {line.description}")
                continue
            ds = dcmread(line.path, stop_before_pixels=True)
            digest = hashlib.sha256(line.path.read_bytes()).hexdigest()
            outputs.append(
                Output(
                    name,
                    line.task,
                    line.path,
                    str(ds.Modality),
                    line.study_uid,
                    str(ds.SOPInstanceUID),
                    digest,
                )
            )
    return Corpus(outputs, failures, root)


def test_every_input_gets_its_results(corpus: Corpus) -> None:
    """No task fails, every input has results, and the keys are unique."""
    assert not corpus.failures, "\n".join(corpus.failures)
    assert {o.input for o in corpus.outputs} == set(INPUTS)
    keys = [o.key for o in corpus.outputs]
    assert len(keys) == len(set(keys))


def test_outputs_are_byte_identical_to_the_stored_digests(corpus: Corpus) -> None:
    """Each output's SHA-256 equals the stored one: a re-run gives the same bytes."""
    digests = {o.key: o.digest for o in sorted(corpus.outputs, key=lambda o: o.key)}
    if UPDATE:
        DIGESTS.write_text(json.dumps(digests, indent=1, ensure_ascii=False) + "\n")
    stored = json.loads(DIGESTS.read_text())
    changed = sorted(k for k in digests.keys() & stored.keys() if digests[k] != stored[k])
    assert not changed, f"outputs whose bytes changed: {changed}"
    assert digests.keys() == stored.keys()


def test_one_uid_names_one_content(corpus: Corpus) -> None:
    """No SOP Instance UID names two contents; two inputs of one study (RG1_UNCR and RG1_J2KR,
    MR-SIEMENS and examples_overlay) and two tasks of one rule with one model share no UID."""
    by_uid: dict[str, set[str]] = {}
    for o in corpus.outputs:
        by_uid.setdefault(o.sop_instance_uid, set()).add(o.digest)
    assert all(len(d) == 1 for d in by_uid.values())

    def uids(name: str) -> set[str]:
        return {o.sop_instance_uid for o in corpus.outputs if o.input == name}

    for first, second in (("RG1_UNCR", "RG1_J2KR"), ("MR-SIEMENS", "examples_overlay")):
        studies = {o.study_uid for o in corpus.outputs if o.input in (first, second)}
        assert len(studies) == 1 and uids(first) and not uids(first) & uids(second)
    tasks = {o.task for o in corpus.outputs if o.input == "ct_two_tasks"}
    assert tasks == {"two-tasks/organs", "two-tasks/lesions"}
    two = [o for o in corpus.outputs if o.input == "ct_two_tasks"]
    assert len(uids("ct_two_tasks")) == len(two) >= 3  # SR of each, SEG of what was found


def _problems(command: list[str], prefix: str = "Error") -> list[str]:
    run = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    return [line for line in (run.stderr + run.stdout).splitlines() if line.startswith(prefix)]


def _unique(outputs: list[Output]) -> list[Output]:
    return list({o.sop_instance_uid: o for o in outputs}.values())


def test_dciodvfy_finds_no_error(corpus: Corpus) -> None:
    """The dicom3tools validator dciodvfy reports no error on any output."""
    errors = {o.key: e for o in corpus.outputs if (e := _problems(["dciodvfy", str(o.path)]))}
    assert not errors, json.dumps(errors, indent=1, ensure_ascii=False)


def test_dcentvfy_finds_no_error_per_study(corpus: Corpus) -> None:
    """The dicom3tools entity checker dcentvfy reports no error across the results of each
    study (entities consistent, no duplicate instance UIDs within a series)."""
    studies: dict[str, list[Output]] = {}
    for o in _unique(corpus.outputs):
        studies.setdefault(o.study_uid, []).append(o)
    assert len(studies) < len(INPUTS)  # some inputs share a study
    errors = {
        uid: e
        for uid, outputs in studies.items()
        if (e := _problems(["dcentvfy", *(str(o.path) for o in outputs)]))
    }
    assert not errors, json.dumps(errors, indent=1, ensure_ascii=False)


def test_pixelmed_finds_no_error_in_any_sr(corpus: Corpus) -> None:
    """PixelMed's DicomSRValidator finds TID 1500 and no error in every SR."""
    srs = [o for o in _unique(corpus.outputs) if o.modality == "SR"]
    folder = corpus.folder / "pixelmed"
    folder.mkdir(exist_ok=True)
    named = {}
    for o in srs:
        named[o.key.replace(" ", "_").replace("/", "-")] = o
        shutil.copy(o.path, folder / f"{o.key.replace(' ', '_').replace('/', '-')}.dcm")
    output = run_pixelmed([folder / f"{name}.dcm" for name in named], folder)
    assert set(output) == set(named)
    for name, lines in output.items():
        assert "Found Root Template TID_1500 (MeasurementReport)" in lines, (name, lines[:5])
        errors = [line for line in lines if line.startswith("Error")]
        assert not errors, (name, errors)


def _seg_outputs(corpus: Corpus) -> list[Output]:
    return [o for o in _unique(corpus.outputs) if o.modality == "SEG" and o.input != TILTED]


def test_dcmqi_reads_every_seg_with_a_colour_per_segment(corpus: Corpus) -> None:
    """segimage2itkimage turns every SEG (but the gantry-tilted one) into one volume per
    segment, and its metadata gives each segment its own recommended display colour."""
    segs = _seg_outputs(corpus)
    assert len(segs) >= 8
    for o in segs:
        folder = corpus.folder / "dcmqi" / o.key.replace(" ", "_").replace("/", "-")
        folder.mkdir(parents=True)
        command = [str(DCMQI / "segimage2itkimage"), "--inputDICOM", str(o.path)]
        run = subprocess.run(
            [*command, "--outputDirectory", str(folder), "-t", "nrrd"],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert run.returncode == 0, (o.key, run.stdout[-1000:], run.stderr[-1000:])
        meta = json.loads((folder / "meta.json").read_text())
        segments = [s for group in meta["segmentAttributes"] for s in group]
        volumes = sorted(folder.glob("*.nrrd"))
        n_segments = len(dcmread(o.path, stop_before_pixels=True).SegmentSequence)
        assert len(segments) == len(volumes) == n_segments, o.key
        colours = [tuple(s["recommendedDisplayRGBValue"]) for s in segments]
        assert len(set(colours)) == len(colours), (o.key, colours)


def test_tid1500reader_reads_every_seg_linked_sr(corpus: Corpus) -> None:
    """The dcmqi tid1500reader reads each SR that accompanies a SEG, and finds its measurement
    groups (one per segment)."""
    segs = _seg_outputs(corpus)
    for seg in segs:
        (sr,) = [
            o
            for o in corpus.outputs
            if o.input == seg.input and o.task == seg.task and o.modality == "SR"
        ]
        out = corpus.folder / "tid1500" / f"{sr.sop_instance_uid}.json"
        out.parent.mkdir(exist_ok=True)
        command = [str(DCMQI / "tid1500reader"), "--inputDICOM", str(sr.path)]
        run = subprocess.run(
            [*command, "--outputMetadata", str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert run.returncode == 0, (sr.key, run.stdout[-1000:], run.stderr[-1000:])
        meta = json.loads(out.read_text())
        n_segments = len(dcmread(seg.path, stop_before_pixels=True).SegmentSequence)
        assert len(meta["Measurements"]) == n_segments, sr.key
