"""Receive (PS3.4 Annex B, PS3.8): the AE and its C-ECHO/C-STORE handlers, association
admission, the named DIMSE statuses, and the pynetdicom 3.0 fast path fenced in
:mod:`listener.receive.fastpath`.
"""
