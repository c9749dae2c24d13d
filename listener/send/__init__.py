"""Send: the C-STORE SCU and the outbox deliverer."""
