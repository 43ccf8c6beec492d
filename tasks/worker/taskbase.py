"""The base of Kiln's tasks: a retried message shows its arguments redacted, as the
first one did.

Celery rebuilds a retried message from the real arguments and, left alone, shows them
with a plain ``repr`` in task events, Flower and worker logs: a webhook URL's token
with them. Kiln's senders pass ``kwargsrepr=kwargs_repr(...)``; this base passes the
same for every retry.
"""

from __future__ import annotations

from typing import Any

from celery import Task

from tasks.jobs.records import kwargs_repr


def args_repr(args: Any) -> str:
    """Positional arguments are never shown (Kiln's tasks take keywords)."""
    return f"({len(args)} positional argument(s) hidden)" if args else "()"


class RedactedTask(Task):
    def signature_from_request(
        self,
        request: Any = None,
        args: Any = None,
        kwargs: Any = None,
        queue: Any = None,
        **extra_options: Any,
    ) -> Any:
        request = self.request if request is None else request
        shown_args = request.args if args is None else args
        shown_kwargs = request.kwargs if kwargs is None else kwargs
        extra_options.setdefault("argsrepr", args_repr(shown_args or ()))
        extra_options.setdefault("kwargsrepr", kwargs_repr(dict(shown_kwargs or {})))
        return super().signature_from_request(request, args, kwargs, queue, **extra_options)
