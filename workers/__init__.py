"""Worker side: Celery tasks (workers.tasks) and pure compute (workers.ml, no Django)."""
