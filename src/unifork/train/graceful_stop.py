"""SIGTERM and SIGINT ask training to stop at the next step boundary and checkpoint, instead of dying mid-step.

Schedulers (SLURM, Kubernetes, torchrun forwarding its own signal) send SIGTERM before they kill a job; Ctrl-C
sends SIGINT. The handler only records the request: the trainer finishes its step, saves, and returns. After
the first signal the previous handlers are back, so a second Ctrl-C aborts at once without saving.
"""

from __future__ import annotations

import signal
import threading
from typing import Self

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class GracefulStop:
    """A context manager; `requested` names the signal received inside it (None until then)."""

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict = {}

    def __enter__(self) -> Self:
        if threading.current_thread() is threading.main_thread():  # Python delivers signals to the main thread only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum, frame) -> None:
        # No printing here: the signal may land inside a write to stderr (tqdm), and a nested write raises.
        self.requested = signal.Signals(signum).name
        self._restore()

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: a handler set outside Python
        self._previous = {}
