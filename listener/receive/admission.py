"""Association admission (PS3.8 §7.1.1.9): called AE titles, the calling-AE/host allow-list and
the association limit shared by all receive processes, decided before any presentation context
is negotiated, with the A-ASSOCIATE-RJ result, source and reason to answer.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from listener.settings import AllowedCaller


@dataclass(frozen=True)
class Rejection:
    """An A-ASSOCIATE-RJ (PS3.8 §9.3.4): result, source, reason, and why in words."""

    result: int
    source: int
    reason: int
    why: str


# PS3.8 Table 9-21: result 1 = rejected-permanent, 2 = rejected-transient; source 1 = service
# user, 3 = service provider (presentation); reasons for source 1: 3 = calling AE title not
# recognized, 7 = called AE title not recognized; for source 3: 2 = local limit exceeded.
REJECT_CALLING_AE = (1, 1, 3)
REJECT_CALLED_AE = (1, 1, 7)
REJECT_LIMIT = (2, 3, 2)


def admission(
    *,
    calling_ae: str,
    called_ae: str,
    peer_host: str,
    peer_cn: str | None = None,
    ae_titles: Sequence[str],
    allowed: Sequence[AllowedCaller],
    active: int,
    limit: int,
) -> Rejection | None:
    """Decide whether to accept an association request; None accepts it.

    ``active`` counts the associations already open (in every receive process) including this
    one. An empty allow-list accepts any calling AE; an entry with a host also requires the peer
    address to be in that host or network, and one with a ``tls_subject`` a verified DICOM TLS
    client certificate whose subject CN is ``peer_cn`` (PS3.15 B.1: the certificate
    authenticates the node).
    """
    calling, called = calling_ae.strip(), called_ae.strip()
    if called not in ae_titles:
        return Rejection(*REJECT_CALLED_AE, why=f"called AE {called!r} is not one of ours")
    if allowed and not any(
        _caller_matches(entry, calling, peer_host, peer_cn) for entry in allowed
    ):
        known = any(entry.ae_title == calling for entry in allowed)
        why = (
            f"calling AE {calling!r} is not allowed from {peer_host}"
            if known
            else f"calling AE {calling!r} is not on the allow-list"
        )
        return Rejection(*REJECT_CALLING_AE, why=why)
    if active > limit:
        return Rejection(*REJECT_LIMIT, why=f"association limit of {limit} reached")
    return None


def _caller_matches(
    entry: AllowedCaller, calling_ae: str, peer_host: str, peer_cn: str | None
) -> bool:
    if entry.ae_title != calling_ae:
        return False
    if entry.tls_subject is not None and entry.tls_subject != peer_cn:
        return False
    if entry.host is None:
        return True
    try:
        return ipaddress.ip_address(peer_host) in ipaddress.ip_network(entry.host, strict=False)
    except ValueError:
        return False


class AssociationCounter:
    """How many associations are open across receive processes.

    ``shared`` is one integer slot per receive process (a ``multiprocessing.Array`` from the
    supervisor, which zeroes the slot of a crashed child); without it the count is local.
    """

    def __init__(self, shared: Any = None, slot: int = 0) -> None:
        self._shared = shared
        self._slot = slot

    def total(self, local: int) -> int:
        """The open associations of every process, counting ``local`` for this one."""
        if self._shared is None:
            return local
        others = sum(value for i, value in enumerate(self._shared[:]) if i != self._slot)
        return int(others) + local

    def publish(self, local: int) -> None:
        """Tell the other processes how many associations this one has open."""
        if self._shared is not None:
            self._shared[self._slot] = local
