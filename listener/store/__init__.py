"""The one storage layer: connection policy, journal, jobs, outbox queue, embeddings, admin
records, the spool and the header walk. Nothing outside this package opens the database.
"""
