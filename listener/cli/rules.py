"""``pacs-ai rules check FILE`` and ``pacs-ai rules test PATH...``: the rules from the command line.

``check`` validates a rules file (exit 0, or 2 with a message naming the rule and field).
``test`` reads the headers of DICOM files (or folders of them), groups them by study and prints,
per study, which rules match and what would happen, without doing any of it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from listener.cli.common import EXIT_FAILED, EXIT_OK, Subparsers, read_studies

if TYPE_CHECKING:
    from listener.route import AssociationFacts, RuleSet
    from listener.route.plan import StudyPlan
    from listener.security.settings import EgressPolicy


def add_rules(sub: Subparsers) -> None:
    """Declare ``rules check`` and ``rules test`` on the ``pacs-ai`` subparsers."""
    parser = sub.add_parser("rules", help="check routing rules or show what they would do")
    rules_sub = parser.add_subparsers(dest="rules_command", required=True, metavar="ACTION")
    check = rules_sub.add_parser("check", help="validate a rules file")
    check.add_argument("file", type=Path, metavar="FILE")
    check.set_defaults(func=_cmd_check)
    test = rules_sub.add_parser("test", help="show which rules match DICOM files and what happens")
    test.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="files or folders")
    test.add_argument("--rules", type=Path, help="rules file (default: the embedded rules)")
    test.add_argument("--calling-ae", help="the sender's AE title to assume")
    test.add_argument("--called-ae", help="our AE title the sender calls, to assume")
    test.add_argument("--peer", help="the sender's IP address to assume")
    test.add_argument("--config", type=Path, help="settings file (for the models' egress policy)")
    test.set_defaults(func=_cmd_test)


def _cmd_check(args: argparse.Namespace) -> int:
    return rules_check(args.file, sys.stdout)


def _cmd_test(args: argparse.Namespace) -> int:
    from listener.route import AssociationFacts
    from listener.settings import MODEL_NAMES, load_settings

    settings = load_settings(args.config)
    egress: dict[str, EgressPolicy] = {n: settings.models.get(n).egress for n in MODEL_NAMES}
    facts = AssociationFacts(args.calling_ae, args.called_ae, args.peer)
    return rules_test(args.paths, args.rules, facts, sys.stdout, egress)


def rules_check(path: Path, out: TextIO) -> int:
    """Validate ``path``; a problem raises ConfigError (the CLI turns it into exit status 2)."""
    from listener.route import load_rules

    ruleset = load_rules(path)
    out.write(
        f"{path}: valid: {len(ruleset.rules)} rules, {len(ruleset.destinations)} destinations\n"
    )
    return EXIT_OK


def rules_test(
    paths: Sequence[Path],
    rules_file: Path | None,
    facts: AssociationFacts | None,
    out: TextIO,
    egress: Mapping[str, EgressPolicy] | None = None,
) -> int:
    """Print the plan of every study found under ``paths``; exit 1 when there is no DICOM file.

    With ``egress`` (the models' policies) each task also says what would leave for its model:
    the images withheld and why, and CXRReportGen's text fields as they would be sent."""
    from listener.route import default_rules, load_rules
    from listener.route.plan import headers_from_dataset, plan_study

    ruleset = default_rules() if rules_file is None else load_rules(rules_file)
    source = "embedded default rules" if rules_file is None else str(rules_file)
    studies, skipped = read_studies(paths, headers_only=True)
    out.write(f"rules: {source}\n")
    if skipped:
        out.write(f"skipped {len(skipped)} files that are not readable DICOM with study UIDs\n")
    if not studies:
        out.write("no DICOM instances found\n")
        return EXIT_FAILED
    for study_uid, datasets in studies.items():
        headers = [headers_from_dataset(ds) for ds in datasets]
        if egress is not None:
            for ds, header in zip(datasets, headers, strict=True):
                _egress_preview(ds, header, egress)
        plan = plan_study(ruleset, headers, facts)
        out.write("\n")
        for line in describe_plan(study_uid, headers, plan, ruleset, egress):
            out.write(line + "\n")
    return EXIT_OK


def _egress_preview(ds: Any, headers: dict[str, Any], egress: Mapping[str, EgressPolicy]) -> None:
    from listener.infer.egress import EgressReport, outgoing_text, withheld_because
    from listener.infer.tasks import INDICATION_ATTRIBUTES, TECHNIQUE_ATTRIBUTES

    headers["_egress"] = {model: withheld_because(ds, policy) for model, policy in egress.items()}
    values = {
        "indication": next((str(ds.get(k)) for k in INDICATION_ATTRIBUTES if ds.get(k)), ""),
        "technique": next((str(ds.get(k)) for k in TECHNIQUE_ATTRIBUTES if ds.get(k)), ""),
    }
    policy = egress.get("cxrreportgen")
    if policy is not None:
        text = outgoing_text(values, ds, policy, EgressReport("cxrreportgen"))
        headers["_egress_text"] = text


def _egress_lines(
    model: str, headers: list[dict[str, Any]], egress: Mapping[str, Any]
) -> list[str]:
    from listener.infer.egress import describe

    lines = [f"    egress ({model}): {describe(egress[model])}"]
    withheld = [h["_egress"][model] for h in headers if h.get("_egress", {}).get(model)]
    if withheld:
        lines.append(f"    not sent: {len(withheld)} images ({'; '.join(sorted(set(withheld)))})")
    if model == "cxrreportgen":
        for h in headers[:1]:
            for name, value in h.get("_egress_text", {}).items():
                lines.append(f"    sent {name}: {value!r}")
    return lines


def describe_plan(
    study_uid: str,
    headers: list[dict[str, Any]],
    plan: StudyPlan,
    ruleset: RuleSet,
    egress: Mapping[str, Any] | None = None,
) -> list[str]:
    """The lines ``rules test`` prints for one study (no patient identifiers)."""
    modalities = sorted({str(h.get("Modality", "?")) for h in headers})
    lines = [f"study {study_uid}: {len(headers)} instances ({', '.join(modalities)})"]
    if not plan.matched:
        return [*lines, "  no rule matches: nothing would happen"]
    lines.append(f"  matched rules: {', '.join(plan.matched)} (priority {plan.priority})")
    if plan.discard:
        return [*lines, "  discard: the study would be dropped"]
    for task in plan.tasks:
        roles = ", ".join(f"{role} {len(uids)}" for role, uids in task.inputs.items())
        what = f" prompts {' & '.join(task.prompts)}" if task.prompts else ""
        what += f" labels {len(task.labels)}" if task.labels else ""
        what += f" window {task.window}" if task.window else ""
        target = ", ".join(task.result_destinations) or "no destination"
        lines.append(f"  task {task.rule}/{task.name}: {task.model} ({roles}){what} -> {target}")
        if egress is not None and task.model in egress:
            lines += _egress_lines(task.model, headers, egress)
        if task.routes or task.default_route:
            routes = "; ".join(f"{label} -> {dest}" for label, dest in task.routes.items())
            other = task.default_route or "not forwarded"
            lines.append(f"    route by top label: {routes}; otherwise {other}")
    for forward in plan.forwards:
        dest = ruleset.destinations[forward.destination]
        lines.append(
            f"  forward {len(forward.instance_uids)} instances to {forward.destination} "
            f"({dest.describe()}) [rule {forward.rule}]"
        )
    for exp in plan.expectations:
        state = "present" if exp.satisfied else "missing " + "; ".join(exp.missing)
        lines.append(
            f"  expected content ({exp.rule}): {state}; wait at most {exp.max_wait_s:g} s, "
            f"then {exp.on_timeout}"
        )
    if plan.quiet_period_s is not None:
        lines.append(f"  quiet period: {plan.quiet_period_s:g} s")
    if plan.result_destinations:
        lines.append(f"  results to: {', '.join(plan.result_destinations)}")
    return lines
