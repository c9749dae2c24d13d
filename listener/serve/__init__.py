"""``pacs-ai serve``: process supervision and the worker loops."""
