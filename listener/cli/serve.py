"""``pacs-ai serve``: receive studies and run the pipeline (see :mod:`listener.serve.supervisor`).

Every flag overrides the setting it names; a flag not given leaves the setting from the
environment, the ``--config`` file or the embedded default.
"""

from __future__ import annotations

import argparse

from listener.cli.common import (
    Subparsers,
    add_config_flag,
    add_data_dir_flag,
    listen_port,
    positive_int,
    setting_default,
    settings_from_args,
)


def _setting(text: str, name: str) -> str:
    return f"{text} (setting {name}, default {setting_default(name)})"


def add_serve(sub: Subparsers) -> None:
    """Declare ``serve`` on the ``pacs-ai`` subparsers."""
    parser = sub.add_parser("serve", help="receive studies and run the pipeline")
    add_config_flag(parser)
    parser.add_argument("--host", help=_setting("address the DICOM listener binds to", "host"))
    parser.add_argument(
        "--port", type=listen_port, help=_setting("DICOM port (0: TLS port only)", "port")
    )
    parser.add_argument(
        "--ae-title",
        action="append",
        help=_setting("AE title to answer to (repeat for several)", "ae_titles"),
    )
    add_data_dir_flag(parser)
    parser.add_argument(
        "--quiet-period",
        type=float,
        help=_setting(
            "seconds without a new instance before a study is released", "quiet_period_s"
        ),
    )
    parser.add_argument(
        "--receivers",
        type=positive_int,
        help=_setting("number of receive processes sharing the port", "receive_processes"),
    )
    parser.add_argument(
        "--role",
        choices=["all", "receive", "work"],
        help=_setting(
            "what this host runs: receive (intake), work (release, jobs, sends) or all", "role"
        ),
    )
    parser.add_argument(
        "--executor-id",
        help=_setting("this host's stable name among the gateway's hosts", "executor_id"),
    )
    parser.add_argument(
        "--admin-host", help=_setting("address of the admin API and dashboard", "admin_host")
    )
    parser.add_argument(
        "--admin-port",
        type=int,
        help=_setting("port of the admin API and dashboard (0: a free port)", "admin_port"),
    )
    parser.add_argument(
        "--log-format",
        choices=["auto", "json", "console"],
        help=_setting("log output (auto: JSON unless on a terminal)", "log_format"),
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help=_setting("least severe log level written", "log_level"),
    )
    parser.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway until SIGTERM/SIGINT."""
    from listener.logging import configure_logging
    from listener.serve.supervisor import serve

    settings = settings_from_args(
        args,
        host=args.host,
        port=args.port,
        ae_titles=args.ae_title,
        quiet_period_s=args.quiet_period,
        receive_processes=args.receivers,
        role=args.role,
        executor_id=args.executor_id,
        admin_host=args.admin_host,
        admin_port=args.admin_port,
        log_format=args.log_format,
        log_level=args.log_level,
    )
    configure_logging(settings.log_level, settings.log_format)
    return serve(settings)
