"""DICOM audit messages (PS3.15 Annex A.5, the format IHE ATNA records), built as XML.

Each builder returns one ``AuditMessage`` document that validates against the RELAX NG schema of
PS3.15 A.5.1 (``docs/audit-message.rng`` in this repository, checked by the tests): an
EventIdentification with the event's DCM code (CID 400) and type (CID 401/403), the active
participants with their roles (CID 402), the audit source, and the participant objects (the
study with its SOP classes and instance counts, the patient). Patient IDs are carried, as ATNA
requires; patient names never are. Pure: no I/O, time passed in.
"""

from __future__ import annotations

import base64
import ipaddress
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum


class Outcome(StrEnum):
    """EventOutcomeIndicator (PS3.15 A.5.1): 0 success, 4 minor, 8 serious, 12 major failure."""

    SUCCESS = "0"
    MINOR_FAILURE = "4"
    SERIOUS_FAILURE = "8"
    MAJOR_FAILURE = "12"


@dataclass(frozen=True)
class Code:
    """A coded value: csd-code, codeSystemName, originalText (the code meaning)."""

    code: str
    meaning: str
    system: str = "DCM"


# CID 400 Audit Event ID
APPLICATION_ACTIVITY = Code("110100", "Application Activity")
BEGIN_TRANSFERRING = Code("110102", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = Code("110104", "DICOM Instances Transferred")
QUERY = Code("110112", "Query")
SECURITY_ALERT = Code("110113", "Security Alert")
# CID 401 Audit Event Type Code (Application Activity) and CID 403 (Security Alert)
APPLICATION_START = Code("110120", "Application Start")
APPLICATION_STOP = Code("110121", "Application Stop")
NODE_AUTHENTICATION = Code("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = Code("110131", "Software Configuration")
RESTRICTED_FUNCTION = Code("110132", "Use of Restricted Function")
# CID 402 Audit Active Participant Role ID
APPLICATION = Code("110150", "Application")
APPLICATION_LAUNCHER = Code("110151", "Application Launcher")
DESTINATION = Code("110152", "Destination Role ID")
SOURCE = Code("110153", "Source Role ID")
# CID 404 Audit Participant Object ID Type; RFC 3881 code 2 is the patient number
STUDY_UID = Code("110180", "Study Instance UID")
NODE_ID = Code("110182", "Node ID")
PATIENT_NUMBER = Code("2", "Patient Number", "RFC-3881")
# PS3.15 A.5.1 (RFC 3881 5.4.2) audit source type 4: application server process
APPLICATION_SERVER = Code("4", "Application Server Process", "RFC-3881")


@dataclass(frozen=True)
class Participant:
    """An ActiveParticipant: who (UserID, e.g. an AE title or a URL), where from, in what role."""

    user_id: str
    requestor: bool
    role: Code | None = None
    alternative_user_id: str | None = None
    user_name: str | None = None
    network_access_point: str | None = None

    @property
    def access_point_type(self) -> str:
        """NetworkAccessPointTypeCode: 1 machine name, 2 IP address."""
        try:
            ipaddress.ip_address(self.network_access_point or "")
        except ValueError:
            return "1"
        return "2"


@dataclass(frozen=True)
class StudyObject:
    """The study as a participant object, with its SOP classes and instance counts; the patient
    it belongs to comes along as a second object when known."""

    study_uid: str
    patient_id: str | None = None
    sop_classes: Mapping[str, int] = field(default_factory=dict)
    details: Mapping[str, str] = field(default_factory=dict)  # ParticipantObjectDetail pairs
    description: str | None = None


@dataclass(frozen=True)
class AuditEvent:
    """Everything one audit message says."""

    event: Code
    action: str  # EventActionCode: C create, R read, U update, D delete, E execute
    when: datetime
    outcome: Outcome
    participants: Sequence[Participant]
    source_id: str
    event_type: Code | None = None
    outcome_description: str | None = None
    study: StudyObject | None = None
    node: str | None = None  # a participant object naming a node (Node ID), e.g. a refusal
    site_id: str | None = None

    @property
    def study_uid(self) -> str | None:
        return self.study.study_uid if self.study else None


def _coded(parent: ET.Element, tag: str, code: Code) -> ET.Element:
    return ET.SubElement(
        parent,
        tag,
        {"csd-code": code.code, "codeSystemName": code.system, "originalText": code.meaning},
    )


def to_xml(event: AuditEvent) -> str:
    """The AuditMessage document of ``event`` (PS3.15 A.5.1), UTF-8 text with no declaration."""
    root = ET.Element("AuditMessage")
    ident = ET.SubElement(
        root,
        "EventIdentification",
        {
            "EventActionCode": event.action,
            "EventDateTime": event.when.astimezone(UTC).isoformat(timespec="milliseconds"),
            "EventOutcomeIndicator": event.outcome.value,
        },
    )
    _coded(ident, "EventID", event.event)
    if event.event_type is not None:
        _coded(ident, "EventTypeCode", event.event_type)
    if event.outcome_description:
        ET.SubElement(ident, "EventOutcomeDescription").text = event.outcome_description
    for person in event.participants:
        attributes = {"UserID": person.user_id}
        if person.alternative_user_id:
            attributes["AlternativeUserID"] = person.alternative_user_id
        if person.user_name:
            attributes["UserName"] = person.user_name
        attributes["UserIsRequestor"] = "true" if person.requestor else "false"
        if person.network_access_point:
            attributes["NetworkAccessPointID"] = person.network_access_point
            attributes["NetworkAccessPointTypeCode"] = person.access_point_type
        element = ET.SubElement(root, "ActiveParticipant", attributes)
        if person.role is not None:
            _coded(element, "RoleIDCode", person.role)
    source = {"AuditSourceID": event.source_id}
    if event.site_id:
        source["AuditEnterpriseSiteID"] = event.site_id
    audit_source = ET.SubElement(root, "AuditSourceIdentification", source)
    _coded(audit_source, "AuditSourceTypeCode", APPLICATION_SERVER)
    if event.study is not None:
        _study(root, event.study)
    if event.node is not None:
        node = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {"ParticipantObjectID": event.node, "ParticipantObjectTypeCode": "2"},
        )
        _coded(node, "ParticipantObjectIDTypeCode", NODE_ID)
    return ET.tostring(root, encoding="unicode")


def _study(root: ET.Element, study: StudyObject) -> None:
    element = ET.SubElement(
        root,
        "ParticipantObjectIdentification",
        {
            "ParticipantObjectID": study.study_uid,
            "ParticipantObjectTypeCode": "2",  # system object
            "ParticipantObjectTypeCodeRole": "3",  # report
        },
    )
    _coded(element, "ParticipantObjectIDTypeCode", STUDY_UID)
    for name, value in study.details.items():
        ET.SubElement(
            element,
            "ParticipantObjectDetail",
            {"type": name, "value": base64.b64encode(value.encode()).decode("ascii")},
        )
    if study.description:
        ET.SubElement(element, "ParticipantObjectDescription").text = study.description
    for uid, count in study.sop_classes.items():
        ET.SubElement(element, "SOPClass", {"UID": uid, "NumberOfInstances": str(count)})
    if study.patient_id:
        patient = ET.SubElement(
            root,
            "ParticipantObjectIdentification",
            {
                "ParticipantObjectID": study.patient_id,
                "ParticipantObjectTypeCode": "1",  # person
                "ParticipantObjectTypeCodeRole": "1",  # patient
            },
        )
        _coded(patient, "ParticipantObjectIDTypeCode", PATIENT_NUMBER)


def detail_values(xml: str) -> dict[str, str]:
    """The ParticipantObjectDetail pairs of a message, decoded (for the CLI and the tests)."""
    root = ET.fromstring(xml)
    return {
        str(el.get("type")): base64.b64decode(el.get("value", "")).decode()
        for el in root.iter("ParticipantObjectDetail")
    }
