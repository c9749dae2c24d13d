"""The prior chest image CXRReportGen compares with: from the PACS, or from the gateway's own
studies.

With a ``priors.source`` (a destination's name; a rule's task may name another with its
``priors_source`` parameter) the PACS is asked first (:mod:`listener.infer.pacs`), in a worker
thread that the job waits for at most ``priors.timeout_s``: a slow or unreachable PACS delays the
job that long and then the job goes on without it. Answers, a "none" included, are cached for
``priors.cache_s`` per patient, issuer, date and source (a failed or timed-out look-up is not
cached). Without a source, or when the PACS has no prior, the studies the gateway received are
looked at through the chest index (:class:`~listener.store.priors.ChestIndex`: one indexed query
on patient, issuer and date). The prior's report is the PACS's radiologist SR text first, else
the gateway's own draft (LOINC 18782-3 text at its result SR's root).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from converters.codes import DRAFT_REPORT
from listener.errors import ConfigError
from listener.infer.pacs import DimseSource, PriorQuery, PriorSource, WebSource, find_prior
from listener.infer.tasks import PriorImage
from listener.logging import get_logger
from listener.route.defaults import FRONTAL_VIEWS
from listener.settings import Destination, PriorsSettings
from listener.store.journal import Journal, instance_paths
from listener.store.priors import ChestIndex

_log = get_logger("jobs")
_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="prior")


@dataclass
class PriorFinder:
    """Finds a study's prior (see the module docstring); called from a job's worker thread."""

    journal: Journal
    spool_dir: Path
    results_dir: Path
    settings: PriorsSettings = field(default_factory=PriorsSettings)
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    calling_ae: str = "PACSAI"
    clock: Callable[[], float] = time.time
    # Spool files not on this host come from the bucket (listener.store.objects).
    fetch: Callable[[Path], Path] | None = None

    def __post_init__(self) -> None:
        self.index = ChestIndex(self.journal.path)
        self._cache: dict[tuple[str, ...], tuple[float, PriorImage | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, current: Dataset, source: str | None = None) -> PriorImage | None:
        patient_id = str(current.get("PatientID", "") or "")
        if not patient_id:
            return None
        query = PriorQuery(
            patient_id=patient_id,
            issuer=str(current.get("IssuerOfPatientID", "") or ""),
            study_uid=str(current.StudyInstanceUID),
            study_date=str(current.get("StudyDate", "") or ""),
        )
        name = source or self.settings.source
        prior = self._from_pacs(name, query) if name else None
        return prior or self._from_gateway(query)

    # --- the PACS -------------------------------------------------------------------------

    def source(self, name: str) -> PriorSource:
        """The prior source of the destination ``name``."""
        dest = self.destinations.get(name)
        if dest is None:
            raise ConfigError(f"priors.source: no destination named {name!r}")
        timeout = self.settings.timeout_s
        if dest.kind == "dicomweb":
            return WebSource(dest, timeout)
        return DimseSource(dest, self.calling_ae, timeout)

    def _from_pacs(self, name: str, query: PriorQuery) -> PriorImage | None:
        key = (name, query.patient_id, query.issuer, query.study_date, query.study_uid)
        now = self.clock()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            return cached[1]
        source = self.source(name)
        future = _POOL.submit(find_prior, source, query, self.settings.max_studies)
        try:
            prior = future.result(timeout=self.settings.timeout_s)
        except FutureTimeout:
            _log.warning("prior_lookup_timed_out", source=name, timeout_s=self.settings.timeout_s)
            return None
        except Exception as exc:  # any failure of the PACS: the job goes on without it
            _log.warning("prior_lookup_failed", source=name, error=f"{type(exc).__name__}: {exc}")
            return None
        if prior is not None and prior.report is None:
            own = self.report_text(str(prior.dataset.StudyInstanceUID))
            prior = PriorImage(prior.dataset, prior.study_date, own)
        _log.info("prior_lookup", source=name, found=prior is not None)
        with self._lock:
            self._cache[key] = (now + self.settings.cache_s, prior)
        return prior

    # --- the gateway's own studies --------------------------------------------------------

    def _from_gateway(self, query: PriorQuery) -> PriorImage | None:
        self._index_patient(query.patient_id)
        found = self.index.latest_before(
            query.patient_id, query.issuer, query.study_date, query.study_uid
        )
        if found is None or found.frontal_path is None:
            return None
        frontal = self.spool_dir / found.frontal_path
        dataset = dcmread(self.fetch(frontal) if self.fetch else frontal)
        return PriorImage(
            dataset, found.study_date or "unknown date", self.report_text(found.study_uid)
        )

    def _index_patient(self, patient_id: str) -> None:
        """Index the patient's studies the index does not know as they are now."""
        for study in self.index.stale_studies(patient_id):
            date, issuer, frontal = "", "", None
            paths = instance_paths(self.journal, self.spool_dir, study.study_uid, self.fetch)
            for path in paths.values():
                try:
                    header = dcmread(path, stop_before_pixels=True)
                except (OSError, InvalidDicomError):
                    continue
                date = date or str(header.get("StudyDate", "") or "")
                issuer = issuer or str(header.get("IssuerOfPatientID", "") or "")
                view = str(header.get("ViewPosition", "")).upper()
                if frontal is None and view in FRONTAL_VIEWS:
                    frontal = path.relative_to(self.spool_dir).as_posix()
            self.index.put(
                study, patient_id=patient_id, issuer=issuer, study_date=date, frontal_path=frontal
            )

    def report_text(self, study_uid: str) -> str | None:
        """The draft report the gateway made for a study, from its result SRs."""
        folder = self.results_dir / study_uid
        for path in sorted(folder.glob("*.dcm")) if folder.is_dir() else []:
            sr = dcmread(path)
            if sr.Modality != "SR":
                continue
            for item in sr.get("ContentSequence", []):
                code = item.ConceptNameCodeSequence[0]
                if code.CodeValue == DRAFT_REPORT.value and "TextValue" in item:
                    return str(item.TextValue)
        return None
