"""Refuse to start a session while a spawned worker process re-imports the user's script.

Dask's local workers are started with multiprocessing's ``spawn`` method (``forkserver`` on
request), which imports the parent's main module again in every new process, as
``__mp_main__``. A script that starts a :class:`~scalable.session.session.ScalableSession` at
module level, without ``if __name__ == "__main__":``, would then start a whole new session in
each worker while it is still being bootstrapped: its workers cannot start, the parent's
workers never connect, and ``client.gather`` waits forever. This module turns that into an
immediate error in the re-importing process, naming the fix.

The test is the one multiprocessing applies itself before it starts a process
(``multiprocessing.spawn._check_not_importing_main``: the ``_inheriting`` flag is set while
the parent's state and main module are restored), plus the state that is visible from
outside: a named child process in which ``__mp_main__`` is being run but is not ``__main__``
yet (``parent_process()`` is still None at that point).
"""

from __future__ import annotations

import multiprocessing
import sys

__all__ = ["MainGuardError", "importing_main_in_child", "refuse_if_reimported"]

GUARD_MESSAGE = (
    "ScalableSession.start() ran while a Dask worker process was importing your script again "
    "(multiprocessing's spawn start method re-imports the main module in every worker). Put the "
    "code that starts the session under the main guard, for example:\n\n"
    "    if __name__ == \"__main__\":\n"
    "        session = ScalableSession.from_yaml(\"./scalable.yaml\")\n"
    "        client = session.start()\n"
    "        ...\n"
)


class MainGuardError(RuntimeError):
    """A session was started during a spawned process's import of the main module."""


def importing_main_in_child() -> bool:
    """True while this process is a spawned (or forkserver) child still importing ``__main__``."""
    if getattr(multiprocessing.current_process(), "_inheriting", False):
        return True
    # spawn names the child before it runs the main module as ``__mp_main__``, and installs that
    # module as ``__main__`` only once it has run
    mp_main = sys.modules.get("__mp_main__")
    return (multiprocessing.current_process().name != "MainProcess" and mp_main is not None
            and sys.modules.get("__main__") is not mp_main)


def refuse_if_reimported() -> None:
    """Raise :class:`MainGuardError` if called during a spawned child's import of ``__main__``."""
    if importing_main_in_child():
        raise MainGuardError(GUARD_MESSAGE)
