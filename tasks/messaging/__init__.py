"""The Celery wiring: the app factory, and the task names and routing that the API,
the workers and other Python services all share. Nothing here imports a task module."""
