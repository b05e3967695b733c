"""A run that stops making progress ends, loudly, with its stacks and a checkpoint, instead of hanging silently.

    dog = Watchdog(run_dir.path, stall_s=cfg.watchdog_s)       # slide rl: `watchdog_s: 1800` (0 = off)
    with dog:
        for step in ...:
            dog.at_step(step, save_boundary)   # save_boundary() -> checkpoint path or None
            ...                                # engines, reward calls and trainer micro-batches call beat()

Progress is any `beat()`: an engine call returning, a reward or environment call coming back from the call
pool, a trainer micro-batch, a step starting. When none comes for `stall_s` seconds, a Python thread:
1. writes the stack of every thread to RUN_DIR/stall-step<N>.txt,
2. calls the driver's `save_boundary`, which writes a checkpoint of the last finished step if nothing has
   changed the weights since it finished (a stall in rollout, reward, curriculum or waiting on workers;
   `slide rl --resume` then continues as if the stalled step had never started), else returns None and the
   last periodic checkpoint stands,
3. prints one line `error: ...` naming the step, what it was doing, the dump and the resume command, and ends
   the process with exit status 3 (EXIT_STALLED).
If the stall holds the GIL (a C call that never returns), that thread cannot run: faulthandler's own thread,
re-armed at every beat, dumps the stacks to RUN_DIR/stall-stacks.txt `grace_s` later and exits (status 1)
without a checkpoint; the last periodic one stands. Worker processes of the call pool die with the run.
"""
from __future__ import annotations

import faulthandler
import os
import shutil
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

EXIT_STALLED = 3

_last = [time.monotonic()]  # the process's last beat (a list: assignment from any thread is atomic)
_armed: list["Watchdog"] = []  # the active watchdog, re-armed on beats (faulthandler's backstop)
_fired = threading.Event()  # set when the watchdog ends the run: no thread gets past a beat any more


def beat() -> None:
    """Record progress (cheap: callable from any thread, any number of times per second). Once the watchdog
    has fired, a thread that reaches a beat waits there for the exit: a step that was only slow must not
    move the weights while the checkpoint of the step before is being written."""
    if _fired.is_set():
        threading.Event().wait()  # never set: the watchdog's os._exit ends this thread
    now = time.monotonic()
    _last[0] = now
    if _armed:
        _armed[0]._rearm(now)


class Watchdog:
    def __init__(self, run_dir: Path, stall_s: float, grace_s: float | None = None):
        self.run_dir, self.stall_s = Path(run_dir), stall_s
        self.grace_s = grace_s if grace_s is not None else max(60.0, stall_s / 2)
        self.step, self.save_boundary = 0, None
        self._stop = threading.Event()
        self._armed_at = 0.0
        self._stacks = None  # the file faulthandler writes into

    def at_step(self, step: int, save_boundary: Callable[[], Path | None] | None = None) -> None:
        """Step `step` starts; save_boundary writes the checkpoint of step - 1 if it still can."""
        self.step, self.save_boundary = step, save_boundary
        beat()

    def __enter__(self) -> "Watchdog":
        if self.stall_s > 0:
            self._stacks = open(self.run_dir / "stall-stacks.txt", "a")
            _armed[:] = [self]
            beat()
            threading.Thread(target=self._watch, daemon=True, name="slide-watchdog").start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._stacks is not None:
            faulthandler.cancel_dump_traceback_later()
            _armed.clear()
            empty = self._stacks.tell() == 0
            self._stacks.close()
            if empty:
                (self.run_dir / "stall-stacks.txt").unlink(missing_ok=True)

    def _rearm(self, now: float) -> None:
        if now - self._armed_at > 1.0 and not self._stacks.closed:  # at most once a second: it starts a C thread
            self._armed_at = now
            faulthandler.dump_traceback_later(self.stall_s + self.grace_s, exit=True, file=self._stacks)

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.stall_s / 10)):
            idle = time.monotonic() - _last[0]
            if idle > self.stall_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        _fired.set()
        # the backstop stays armed (grace_s from now): a save that blocks (a hung GPU) still ends the run
        faulthandler.dump_traceback_later(self.grace_s, exit=True, file=self._stacks)
        dump = self.run_dir / f"stall-step{self.step}.txt"
        dump.write_text(stacks(f"no progress for {idle:.0f} s in step {self.step}"))
        try:
            ckpt = self.save_boundary() if self.save_boundary else None
            where = f"checkpoint {ckpt.name} written (step {self.step} restarts)" if ckpt else \
                "the last periodic checkpoint stands (the weights had changed in this step)"
        except Exception as e:  # noqa: BLE001 - the message and the exit matter more than this save
            where = f"no checkpoint written ({type(e).__name__}: {e}); the last periodic one stands"
        print(f"error: step {self.step} made no progress for {idle:.0f} s (watchdog_s={self.stall_s:g}); stacks "
              f"of every thread in {dump}; {where}; continue with: slide rl --resume {self.run_dir}",
              file=sys.stderr, flush=True)
        os._exit(EXIT_STALLED)


def boundary_checkpoint(run_dir, step: int, changed: Callable[[], bool], write: Callable[[], Path]) -> Path | None:
    """The checkpoint of `step` for a stalled run: the periodic one if it exists, else `write()` unless `changed()`
    (the weights moved since step `step` ended). Removed again if they moved during the write (a slow step that
    was still updating: it may be torn); None then."""
    existing = run_dir.ckpt_dir / f"step_{step:06d}"
    if (existing / "state.pt").is_file():
        return existing
    if changed():
        return None
    path = write()
    if changed():
        shutil.rmtree(path, ignore_errors=True)
        return None
    return path


def stacks(title: str) -> str:
    """Every thread's stack, named, innermost call last."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out = [f"{title}\n"]
    for ident, frame in sys._current_frames().items():
        out.append(f"\n--- thread {names.get(ident, '?')} ({ident})\n")
        out += traceback.format_stack(frame)
    return "".join(out)
