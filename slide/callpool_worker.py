"""The process side of the call pool (slide/callpool.py): the zygote that forks workers, and a worker's loop.

The zygote (`python -c "from slide.callpool_worker import zygote_main; ..."`) imports PRELOAD once, then forks
one worker per request on its socket; the request carries the worker's end of a pipe. A worker registers
functions ("fn" messages, cloudpickled, with the caller's sys.path) and runs batches of calls ("call"
messages), answering each call as soon as it ends: (index, status, cloudpickled value, notes). `note(key)`
inside a call counts an incident that travels back with its answer. Nothing here imports torch or sympy
itself: the zygote's PRELOAD does, once, and every worker shares those pages.
"""
from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any, Callable

# imported once by the zygote, so that a fresh worker (and the first call in it) is fast
PRELOAD = ["slide.tasks", "slide.agent.families", "math_verify", "ray.cloudpickle"]


class RemoteError(RuntimeError):
    """An exception raised inside a call, as its type name and message: an exception object itself could carry
    anything (a sympy object rebuilds by evaluating itself when unpickled, in the caller, holding the GIL).
    Exception classes that set `sent_as_is = True` (and pickle to plain data) travel as themselves."""

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name

    def __reduce__(self):
        return RemoteError, (self.type_name, str(self).split(": ", 1)[-1])


# -- incidents counted inside a call ------------------------------------------------------------------------
_local = threading.local()


def note(key: str) -> None:
    """Count one incident of `key` for the call running on this thread (no-op outside a call)."""
    counts = getattr(_local, "counts", None)
    if counts is not None:
        counts[key] += 1


def noted(fn: Callable, *args) -> tuple[str, Any, dict]:
    """(status, value, notes) of fn(*args) run here, with note() counting into notes."""
    _local.counts = Counter()
    try:
        return "ok", fn(*args), dict(_local.counts)
    except BaseException as e:  # noqa: BLE001 - a verifier's bug is data, not a crash
        return "raised", e, dict(_local.counts)
    finally:
        _local.counts = None


# -- the worker process ----------------------------------------------------------------------------------------
def _die_with_parent() -> None:
    try:  # Linux: SIGKILL this process when its parent exits (a worker's parent is the single-threaded zygote)
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _sendable(status: str, value: Any, notes: dict) -> tuple[str, bytes, dict]:
    """(status, the value cloudpickled, notes); an exception as a RemoteError unless its class is `sent_as_is`;
    a value that cannot be pickled becomes a raised RemoteError."""
    from ray import cloudpickle
    if status == "raised" and not getattr(value, "sent_as_is", False):
        value = RemoteError(type(value).__name__, str(value)[:500])
    try:
        return status, cloudpickle.dumps(value), notes
    except Exception as e:  # noqa: BLE001 - e.g. a lock, a generator
        why = RemoteError(type(e).__name__, f"the call's {'result' if status == 'ok' else 'error'} could not be "
                                            f"sent back: {type(value).__name__}: {e}"[:300])
        return "raised", pickle.dumps(why), notes


def _serve(conn: Connection) -> None:
    """Worker loop: ("fn", token, payload) registers a function; ("call", token, n, pickled [args, ...]) runs
    each call in order and sends one (index, status, pickled value, notes) per call as soon as it finishes.
    Tokens are hashes of the pickled functions, so the same verifier sent again is not stored twice. Arguments
    and values travel cloudpickled, so objects of a script's own classes (an env) go both ways."""
    fns: dict[str, Callable] = {}
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the run went away
            return
        if msg[0] == "fn":
            try:
                fns[msg[1]] = _loads(msg[2])
            except Exception as e:  # noqa: BLE001 - e.g. its module cannot be imported here: each call says so
                fns[msg[1]] = _Unloadable(f"the function could not be loaded in the worker: {type(e).__name__}: {e}")
            conn.send(("loaded",))  # loading (imports) is not on any call's clock
            continue
        _, token, n, payload = msg
        try:
            items = pickle.loads(payload)
        except Exception as e:  # noqa: BLE001 - e.g. an argument's class cannot be imported here
            failed = _sendable("raised", RemoteError(type(e).__name__, f"the call's arguments could not be loaded "
                                                                     f"in the worker: {e}"[:300]), {})
            for i in range(n):
                conn.send((i, *failed))
            continue
        for i, args in enumerate(items):
            conn.send((i, *_sendable(*noted(fns[token], *args))))


class _Unloadable:
    def __init__(self, why: str):
        self.why = why

    def __call__(self, *args):
        raise RuntimeError(self.why)


def _loads(payload: tuple[list[str], bytes]) -> Callable:
    paths, data = payload
    sys.path += [p for p in paths if p not in sys.path]  # the run's import paths (a user's reward module)
    return pickle.loads(data)


def zygote_main(fd: int) -> None:
    """The zygote: imports PRELOAD once, then forks one worker per request on socket `fd` (the request carries
    the worker's end of its pipe) and answers with the worker's pid. Exits when the run closes the socket.
    Not multiprocessing's forkserver: that one re-runs the user's main script in every worker."""
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing optional import only makes the first call slower
            pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the run's; its exit closes our socket
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # workers are reaped by the kernel (no zombies)
    sock = socket.socket(fileno=fd)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 1, 1)
        except OSError:
            return
        if not msg:
            return
        pid = os.fork()
        if pid == 0:
            sock.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # a verifier's own subprocesses must be waitable
            _die_with_parent()
            try:
                _serve(Connection(fds[0]))
            finally:
                os._exit(0)
        os.close(fds[0])
        try:
            sock.sendall(struct.pack("q", pid))
        except OSError:  # the run is gone
            return
