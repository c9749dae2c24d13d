"""The C-STORE fast path: pynetdicom 3.0 internals (event-driven DUL, C-STORE served in the DUL
thread from the P-DATA-TF bytes). Everything here depends on pynetdicom <3.1; nothing else does.
"""
