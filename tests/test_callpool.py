"""The call pool: calls that hold the GIL are killed at their timeout and their worker replaced; crashes,
exceptions and unsendable results come back as data; the next call runs at normal speed."""
import os
import threading
import time

import pytest

from slide.agent.env import InvalidCall
from slide.callpool import CallPool, RemoteError, WorkerDied, note, worker_pids


def gil_hang(x):
    """Holds the GIL for minutes inside one C call on "hang" (a thread waiting for it never wakes)."""
    if x == "hang":
        return pow(11, 889789789) == 3
    return x * 2


def gone(pid: int, wait_s: float = 5.0) -> bool:
    """The process has exited (SIGKILL is delivered asynchronously; the zygote reaps its workers)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split()[2] in ("Z", "X"):
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def pool():
    p = CallPool(workers=1)
    p.call(gil_hang, 1, timeout_s=60)  # the zygote's imports, once
    yield p
    p.close()


def test_a_call_that_holds_the_gil_is_killed_and_its_worker_replaced(pool):
    [before] = worker_pids(pool)
    t0 = time.perf_counter()
    out = pool.call(gil_hang, "hang", timeout_s=1.0)
    assert out.status == "timeout" and time.perf_counter() - t0 < 1.0 + 3.0  # the timeout plus a margin
    assert gone(before)
    t0 = time.perf_counter()
    assert pool.call(gil_hang, 21, timeout_s=1.0).value == 42  # a fresh worker, at once
    assert time.perf_counter() - t0 < 2.0
    assert worker_pids(pool) != [before] and pool.counts["workers_killed"] >= 1


def test_a_batch_goes_on_after_a_killed_call(pool):
    killed = pool.counts["workers_killed"]
    out = pool.batch(gil_hang, [(1,), ("hang",), (2,), (3,)], timeout_s=1.0)
    assert [(o.status, o.value) for o in out] == [("ok", 2), ("timeout", None), ("ok", 4), ("ok", 6)]
    assert pool.counts["workers_killed"] == killed + 1


def test_crashes_exceptions_and_unsendable_results_are_data(pool):
    def crash(_):
        os._exit(7)

    def bug(_):
        raise ValueError("verifier bug")

    def unsendable(_):
        return threading.Lock()

    out = pool.call(crash, 0, timeout_s=5)
    assert out.status == "raised" and isinstance(out.value, WorkerDied)
    out = pool.call(bug, 0, timeout_s=5)  # as type name and message: an exception object could carry anything
    assert out.status == "raised" and isinstance(out.value, RemoteError) and out.value.type_name == "ValueError"
    assert str(out.value) == "ValueError: verifier bug"

    def refuse(_):
        raise InvalidCall("bad_arguments", "no such expression")

    out = pool.call(refuse, 0, timeout_s=5)  # sent_as_is: the episode runner needs its reason
    assert isinstance(out.value, InvalidCall) and out.value.reason == "bad_arguments"
    out = pool.call(unsendable, 0, timeout_s=5)
    assert out.status == "raised" and "could not be sent back" in str(out.value)
    assert pool.call(gil_hang, 5, timeout_s=5).value == 10


def test_notes_counted_in_a_call_come_back_with_it(pool):
    def guarded(x):
        if x > 1:
            note("rejected/huge_power")
            note("rejected/huge_power")
        return x

    out = pool.batch(guarded, [(1,), (2,)], timeout_s=5)
    assert [o.notes for o in out] == [{}, {"rejected/huge_power": 2}]


def test_batches_spread_over_workers_in_order_and_threads_share_the_pool():
    p = CallPool(workers=2)
    try:
        batches = [[(i,), (i + 100,)] for i in range(10)]
        assert [[o.value for o in b] for b in p.batches(gil_hang, batches, timeout_s=30)] == \
            [[2 * i, 2 * (i + 100)] for i in range(10)]
        results = {}

        def caller(k):
            results[k] = p.call(gil_hang, k, timeout_s=30).value

        threads = [threading.Thread(target=caller, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results == {k: 2 * k for k in range(8)}
        assert p.counts["workers_started"] == 2
    finally:
        p.close()


def test_workers_die_with_the_run(tmp_path):
    """kill -9 of the process that owns the pool, while a worker holds the GIL: zygote and workers go too."""
    import signal
    import subprocess
    import sys
    script = tmp_path / "owner.py"
    script.write_text(
        "import sys, threading, time\n"
        "from slide.callpool import CallPool\n"
        "def hang(x):\n    return pow(11, 889789789)\n"
        "p = CallPool(workers=1)\n"
        "threading.Thread(target=p.call, args=(hang, 0), kwargs={'timeout_s': 600}, daemon=True).start()\n"
        "while not p._count or p._zygote is None: time.sleep(0.05)\n"
        "time.sleep(6)\n"
        "print(p._zygote.proc.pid, flush=True)\n"
        "time.sleep(600)\n")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    zygote = int(owner.stdout.readline())
    workers = [int(x) for x in subprocess.run(["pgrep", "-P", str(zygote)], capture_output=True,
                                               text=True).stdout.split()]
    assert workers, "the hanging worker should be running"
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    assert all(gone(pid) for pid in [zygote, *workers])
