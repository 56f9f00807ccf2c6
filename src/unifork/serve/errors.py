"""What can go wrong with one request, each carrying the HTTP status the API answers with."""

from __future__ import annotations

from unifork.errors import UserError


class FieldError(UserError):
    """A request field the client can fix; the answer names the field."""

    def __init__(self, field: str, message: str, status: int = 422, code: str | None = None):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status, self.code = field, message, status, code


class QueueFull(Exception):
    """The bounded queue is full: 429, and Retry-After says when a slot is likely to be free."""

    status = 429

    def __init__(self, retry_after: int):
        super().__init__(f"the queue is full; retry after {retry_after} s")
        self.retry_after = retry_after


class RequestTimeout(Exception):
    """The request did not finish within the server's per-request timeout: 504."""

    status = 504


class ClientGone(Exception):
    """The client disconnected before its result was ready; nobody receives the answer."""

    status = 499  # nginx's "client closed request": logged only, the client is gone


class EngineStopped(Exception):
    """The server is shutting down: 503."""

    status = 503
