"""Calls that can always be stopped: verifiers and environment calls run in a few reused worker processes.

    pool = shared_pool(workers=2)
    [[a, b]] = pool.batches(verify, [[(problem, "42"), (problem, "11^889789789")]], timeout_s=5.0)
    a.status, a.value            # "ok", 1.0
    b.status, b.value, b.notes   # "ok", 0.0, {"rejected/huge_power": 1}   (the guard refused it, no sympy)

A thread cannot stop a call that holds the GIL (sympy computing 11^889789789 inside one C call never lets the
waiting thread run), so every call that parses model text runs in a worker process. A worker that overruns
its timeout is killed (SIGKILL) and replaced; a worker that dies mid-call is replaced too; the calls queued
behind the dead one go to the replacement. Nothing a call does can stall or crash the caller.

- Workers are forked from a zygote process that has imported SLIDE, torch and math-verify once, so a
  replacement starts in milliseconds, and workers die with the run (they never outlive a killed run).
- A function is pickled once (cloudpickle: lambdas, closures and a script's own functions too) and sent
  once per worker (a verifier holding a whole dataset costs one send); its arguments go with every call.
- `batches` sends a list of calls (one group of samples) to one worker at a time, batches in parallel over
  the workers: one message per group, not per sample.
- `note(key)` inside a call counts an incident (e.g. a guard's rejection reason); it comes back with the
  call's Outcome, so counters survive the process boundary.
- `call_method(obj, name, *args)` runs obj.name(*args) in a worker and returns (result, obj): a stateful
  environment travels to the worker and its new state comes back (see slide/agent/isolated.py).
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Callable

from slide.callpool_worker import RemoteError, note, noted  # noqa: F401 - note/noted: the callers' API
from slide.watchdog import beat

log = logging.getLogger(__name__)

_LOAD_TIMEOUT_S = 120.0  # unpickling a function in a fresh worker (its imports) may take this long
_FNS_HELD = 16  # pickled functions kept (by identity) so that a repeated call does not pickle again


@dataclass
class Outcome:
    status: str  # "ok" | "raised" (value is the exception) | "timeout" (the worker was killed)
    value: Any = None
    notes: dict[str, int] = field(default_factory=dict)  # incidents the call counted with note()


class WorkerDied(RuntimeError):
    """The worker process exited in the middle of a call (a crash, an os._exit, the OOM killer), or none could
    be started."""


class NotSendable(TypeError):
    """The function (or a call's arguments) cannot be pickled, not even by cloudpickle."""


class PoolClosed(OSError):
    """The pool was closed while a call waited for a worker."""


def call_method(obj: Any, name: str, *args) -> tuple[Any, Any]:
    """(obj.name(*args), obj): for stateful objects whose state must come back from the worker."""
    return getattr(obj, name)(*args), obj


def _dumps(obj: Any, what: str) -> bytes:
    """cloudpickle (Ray's): functions of importable modules by reference, those of __main__, lambdas, closures
    and a script's own classes by value; NotSendable if it cannot."""
    from ray import cloudpickle
    try:
        return cloudpickle.dumps(obj)
    except Exception as e:  # noqa: BLE001 - cloudpickle raises many types (locks, sockets, C objects)
        raise NotSendable(f"{what} cannot be pickled: {type(e).__name__}: {e}") from e


class _Zygote:
    def __init__(self):
        ours, theirs = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # SLIDE from a checkout too
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from slide.callpool_worker import zygote_main; zygote_main({theirs.fileno()})"],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        ours.settimeout(1.0)  # fork() waits in 1 s slices (see there)
        self.sock, self.lock = ours, threading.Lock()

    def fork(self) -> tuple[int, Connection]:
        """(pid, connection) of a fresh worker."""
        ours, theirs = socket.socketpair()
        try:
            with self.lock:
                socket.send_fds(self.sock, [b"f"], [theirs.fileno()])
                data, waited = b"", 0.0
                while len(data) < 8:
                    try:
                        chunk = self.sock.recv(8 - len(data))
                    except TimeoutError:  # the zygote is still importing (the first fork): start-up, not a stall
                        waited += self.sock.gettimeout()
                        if waited > _LOAD_TIMEOUT_S:
                            raise OSError(f"the worker zygote did not answer in {_LOAD_TIMEOUT_S:g} s") from None
                        beat()
                        continue
                    if not chunk:
                        raise OSError(f"the worker zygote exited (code {self.proc.poll()})")
                    data += chunk
        finally:
            theirs.close()
        return struct.unpack("q", data)[0], Connection(ours.detach())

    def close(self) -> None:
        self.sock.close()  # the zygote exits on EOF; its idle workers follow (parent-death signal)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# -- the pool -------------------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, zygote: _Zygote):
        self.pid, self.conn = zygote.fork()
        self.known: set[str] = set()  # function tokens sent to this worker
        self.used = False  # it has answered a call (a fresh worker that dies at once counts as a failed start)
        self.dead = False

    def kill(self, signal_it: bool = True) -> None:
        """Stop using it; SIGKILL it only when it is known to be alive (a worker seen dead is reaped at once by
        the zygote, and its pid may already be another process's)."""
        if not self.dead:
            self.dead = True
            if signal_it:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.conn.close()


class CallPool:
    """`workers` reused processes; thread-safe (any number of threads may call at once)."""

    def __init__(self, workers: int = 2):
        if workers < 1:
            raise ValueError(f"CallPool: workers must be >= 1 (got {workers})")
        self.size = workers
        self._zygote: _Zygote | None = None
        self._idle: list[_Worker] = []
        self._count = 0  # workers alive (idle or busy)
        self._cond = threading.Condition()
        self._fns: OrderedDict = OrderedDict()  # id(fn) -> (token, payload, fn), the most recent _FNS_HELD
        self._threads: ThreadPoolExecutor | None = None
        self.counts: Counter = Counter()  # workers_started, workers_killed (timeouts), workers_died
        self.closed = False

    def start(self) -> _Zygote:
        """Start the zygote now (it imports SLIDE, torch and math-verify, a few seconds) instead of at the first
        call: callers that know they will need the pool call this before their own start-up work."""
        with self._cond:
            if self.closed:
                raise PoolClosed("the call pool is closed")
            if self._zygote is None:
                self._zygote = _Zygote()
            return self._zygote

    # one worker, many calls ----------------------------------------------------------------------------
    def batch(self, fn: Callable, items: list[tuple], timeout_s: float) -> list[Outcome]:
        """fn(*args) for each args in items, in order, on one worker; each call gets timeout_s from its start."""
        token, payload = self._register(fn)
        out: list[Outcome] = []
        failed_starts = 0
        while len(out) < len(items):
            try:
                w = self._checkout()
            except OSError as e:  # no worker can be started (the zygote cannot fork), or closed: each call says so
                return out + [Outcome("raised", WorkerDied(f"no worker process: {e}")) for _ in items[len(out):]]
            fresh = not w.used
            try:
                done = self._run(w, token, payload, items[len(out):], timeout_s)
            finally:
                self._checkin(w)
            failed_starts = failed_starts + 1 if fresh and not done else 0
            if failed_starts == 3:  # workers die before taking a call: say so for every call left
                err = WorkerDied("worker processes exit before taking a call")
                out += [Outcome("raised", err) for _ in items[len(out):]]
            out += done
        return out

    def call(self, fn: Callable, *args, timeout_s: float) -> Outcome:
        return self.batch(fn, [args], timeout_s)[0]

    def batches(self, fn: Callable, batches: list[list[tuple]], timeout_s: float) -> list[list[Outcome]]:
        """One `batch` per list, run in parallel over the workers; results in order."""
        if len(batches) <= 1:
            return [self.batch(fn, b, timeout_s) for b in batches]
        with self._cond:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="slide-callpool")
        return list(self._threads.map(lambda b: self.batch(fn, b, timeout_s), batches))

    def _run(self, w: _Worker, token: str, payload, items: list[tuple], timeout_s: float) -> list[Outcome]:
        """Run items on w until they are done or one times out / kills the worker (then w is replaced and the
        outcomes so far are returned, the failed call's included). An exception here (an interrupt) kills w:
        a worker left mid-batch would answer the next batch with this one's results."""
        try:
            return self._exchange(w, token, payload, items, timeout_s)
        except BaseException:
            w.kill()
            raise

    def _exchange(self, w: _Worker, token: str, payload, items: list[tuple], timeout_s: float) -> list[Outcome]:
        try:
            args = _dumps(items, "the call's arguments")
        except NotSendable as e:  # this batch's arguments: its calls fail, the worker and the function are fine
            return [Outcome("raised", e) for _ in items]
        try:
            if token not in w.known:
                w.conn.send(("fn", token, payload))
                if not w.conn.poll(_LOAD_TIMEOUT_S):
                    raise BrokenPipeError("loading the function timed out")
                w.conn.recv()
                w.known.add(token)
            w.conn.send(("call", token, len(items), args))
        except (BrokenPipeError, ConnectionResetError, EOFError):  # it died idle: the caller retries on a fresh one
            w.kill(signal_it=False)
            return []
        out: list[Outcome] = []
        for _ in items:
            try:
                ready = w.conn.poll(timeout_s)
                msg = w.conn.recv() if ready else None
            except (EOFError, OSError):  # the worker exited mid-call
                out.append(Outcome("raised", WorkerDied("the worker process exited during the call")))
                self.counts["workers_died"] += 1
                w.kill(signal_it=False)  # checkin sees it dead and frees its slot; a fresh worker starts on demand
                return out
            if msg is None:
                out.append(Outcome("timeout"))
                self.counts["workers_killed"] += 1
                w.kill()
                return out
            _, status, value, notes = msg
            try:
                value = pickle.loads(value)
            except Exception as e:  # noqa: BLE001 - e.g. the value's class cannot be imported here
                status, value = "raised", RuntimeError(f"the call's value could not be loaded: {type(e).__name__}: {e}")
            out.append(Outcome(status, value, notes))
            w.used = True
            beat()  # progress, for the run's watchdog
        return out

    def _register(self, fn: Callable) -> tuple[str, tuple[list[str], bytes]]:
        with self._cond:
            entry = self._fns.get(id(fn))
            if entry is None or entry[2] is not fn:
                payload = list(sys.path), _dumps(fn, repr(fn))  # the worker imports what the caller can
                entry = (hashlib.sha1(payload[1]).hexdigest(), payload, fn)  # holding fn keeps its id unique
                self._fns[id(fn)] = entry
                while len(self._fns) > _FNS_HELD:
                    self._fns.popitem(last=False)
            self._fns.move_to_end(id(fn))
            return entry[0], entry[1]

    # workers ----------------------------------------------------------------------------------------------
    def _checkout(self) -> _Worker:
        with self._cond:
            while True:
                if self.closed:
                    raise PoolClosed("the call pool is closed")
                if self._idle:
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            w = self._fork()
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise
        self.counts["workers_started"] += 1
        return w

    def _fork(self) -> _Worker:
        """A fresh worker; a zygote that died (e.g. the OOM killer) is replaced once."""
        for attempt in (1, 2):
            zygote = self.start()
            try:
                return _Worker(zygote)
            except OSError:
                with self._cond:
                    if self._zygote is zygote:  # another thread may have replaced it already
                        self._zygote = None
                zygote.close()
                if attempt == 2:
                    raise

    def _checkin(self, w: _Worker | None) -> None:
        with self._cond:
            if w is not None and not w.dead and not self.closed:
                self._idle.append(w)
            else:
                self._count -= 1
                if w is not None:
                    w.kill()
            self._cond.notify()

    def resize(self, workers: int) -> None:
        with self._cond:
            self.size = max(self.size, workers)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for w in idle:
            w.kill()
        if self._threads is not None:
            self._threads.shutdown(wait=False)
        if self._zygote is not None:
            self._zygote.close()


_shared: CallPool | None = None
_shared_lock = threading.Lock()


def shared_pool(workers: int = 2) -> CallPool:
    """The process's pool (made on first use, grown to the largest size asked for, closed at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            _shared = CallPool(workers)
            atexit.register(_shared.close)
        else:
            _shared.resize(workers)
        return _shared


def worker_pids(pool: CallPool) -> list[int]:
    """The idle workers' pids (for tests and debugging)."""
    with pool._cond:
        return [w.pid for w in pool._idle]
