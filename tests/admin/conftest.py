"""Fixtures of the admin tests: the end-to-end run (see ``admin_e2e``)."""

from admin_e2e import e2e

__all__ = ["e2e"]
