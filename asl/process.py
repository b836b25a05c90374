"""Process-wide concerns of a run: signals (SIGTERM / SIGINT save and stop), the loader workers'
process groups. Each is undone when its run ends. (The lock on a run's folder is
:class:`asl.rundir.RunLock`.)"""

from __future__ import annotations

import contextlib
import os
import signal

from .errors import Interrupted


class StopSignal:
    """SIGTERM / SIGINT set a flag; the loop saves last.pth at the next step and exits.

    The previous handlers come back with :meth:`restore` (or at the end of a ``with`` block).
    Loader workers live in process groups of their own (:func:`asl.factory.leave_process_group`), so a signal
    sent to the run's process group (``timeout``, Ctrl-C) reaches the loop, not the workers."""

    def __init__(self):
        self.signum, self.name = 0, ""
        self._saving, self._pending = 0, False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum, frame) -> None:
        if self.signum:  # a second signal: stop now, but never in the middle of writing a file
            if self._saving:
                self._pending = True
                return
            raise Interrupted(self.signum)
        self.signum, self.name = signum, signal.Signals(signum).name

    @contextlib.contextmanager
    def saving(self):
        """A second signal inside this block waits for its end (a checkpoint is written whole)."""
        self._saving += 1
        try:
            yield
        finally:
            self._saving -= 1
            if not self._saving and self._pending:
                self._pending = False
                raise Interrupted(self.signum)

    @property
    def received(self) -> bool:
        return bool(self.signum)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def __enter__(self) -> "StopSignal":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def leave_process_group(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: the worker moves to a process group of its own.

    A signal sent to the run's process group (``timeout``, ``kill -TERM -PGID``, Ctrl-C in a
    terminal) then reaches the training loop only, which saves ``last.pth`` and shuts its workers
    down; a worker killed by it would end the run with PyTorch's "DataLoader worker is killed by
    signal" error instead. The worker keeps SIGTERM's default action, so PyTorch can still stop a
    stuck worker with it, and it exits on its own when the main process is gone (PyTorch's
    watchdog). SIGINT is ignored as well, for a terminal that signals more than its foreground group.
    """
    if hasattr(os, "setpgid"):
        try:
            os.setpgid(0, 0)
        except OSError:  # a session leader cannot move; nothing else to do then
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)
