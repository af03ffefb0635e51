"""The error hierarchy: what a failure means for the task that met it.

```
HelplineError
  Retryable        -> nak with backoff (timeouts, 5xx, 429); counts as an attempt
    Deferred       -> nak until the dependency may be back (breaker open); no attempt spent
    Overloaded     -> the bus refused or did not answer; HTTP 503 with Retry-After
  Permanent        -> term, task failed (bad URL, blocked address, 404, parse failure)
    InputRejected  -> HTTP 4xx at the gateway with a clear message
    TaskCancelled  -> ack, task cancelled (DELETE /api/v1/tasks/{id})
    DeadlineExpired -> term, task expired
```

The bus decides ack, nak or term from the class, in one place
(`helpline.common.worker.run_task`). Any other exception a handler raises is an
unexpected fault: it is retried like `Retryable`, and its message is not shown to
clients (only its type), because it may carry internals.
"""

from __future__ import annotations

from nats.errors import ConnectionClosedError, NoServersError
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError

#: What the NATS client raises when the server is down, restarting or too slow to answer.
BUS_ERRORS = (TimeoutError, NatsTimeoutError, ConnectionClosedError, NoServersError, NatsError)
#: What a client is told when the bus does not answer.
BUS_SILENT = "the bus did not answer in time; try again later"


class HelplineError(Exception):
    """Base of every error Helpline raises on purpose; `str()` is safe to show a client."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Retryable(HelplineError):
    """A transient failure: try again later, with backoff."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RanTooLong(Retryable):
    """A task ran past its kind's longest run time (`HELPLINE_MAX_RUN_S`): it was stopped,
    and is retried like any transient failure (dead-lettered on its last attempt)."""


class Deferred(Retryable):
    """A dependency is known to be down (its breaker is open): wait, without spending an attempt."""


class Overloaded(Retryable):
    """The bus refused a message (stream at its limit) or did not answer: try again later."""


class Permanent(HelplineError):
    """A failure that another attempt cannot fix: the task fails now."""


class InputRejected(Permanent):
    """The request itself is wrong; at the gateway this is a 4xx naming the field."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BlockedAddress(InputRejected):
    """A URL whose host is not a public address (SSRF guard)."""

    def __init__(self, message: str = "blocked address", *, field: str | None = "url") -> None:
        super().__init__(message, field=field)


class TaskCancelled(Permanent):
    """Someone cancelled the task (or its parent): stop at the next checkpoint."""


class DeadlineExpired(Permanent):
    """The task's deadline passed before it could run."""
