"""``pacs-ai serve``: process supervision and the loops each process runs (dispatcher, job
runners, deliverer, purger)."""
