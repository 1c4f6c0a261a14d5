"""Ctrl-C and SIGTERM: a step stops cleanly, its runs end KILLED, and the exit status says
which signal it was (130 for SIGINT, 143 for SIGTERM, as shells report them)."""

import contextlib
import ctypes
import os
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A step stopped by a signal; resume, when set, is the command that continues it."""

    def __init__(self, signum: int = signal.SIGINT, resume: str = ""):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.resume = signum, resume

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise(signum, frame):
    raise Interrupted(signum)


def interrupt_on(*signums: int) -> None:
    """Each of signums interrupts this process as Ctrl-C does (raising Interrupted)."""
    for signum in signums:
        signal.signal(signum, _raise)


def install() -> None:
    """SIGTERM (a timeout, kill, a job scheduler, `mlflow run` cancelling) interrupts as Ctrl-C does."""
    interrupt_on(signal.SIGTERM)
    if os.environ.get("MLFLOW_RUN_ID"):
        die_with_parent()


def die_with_parent() -> None:
    """Under `mlflow run`, a SIGTERM when the `mlflow run` process dies: a wrapper killed with
    SIGTERM (it has no handler) would otherwise leave this step running unseen."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):  # not Linux: the wrapper's own cancel() sends SIGTERM still
        pass


@contextlib.contextmanager
def deferred():
    """Clean-up that a second Ctrl-C must not cut short (closing runs, stopping Ray): signals
    that arrive meanwhile are held off; the step is being interrupted already."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def signal_number(exc: KeyboardInterrupt) -> int:
    return getattr(exc, "signum", signal.SIGINT)
