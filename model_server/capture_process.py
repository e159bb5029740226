"""The capture writer's own process: ``CaptureFiles`` run in a child process on a small, fixed CPU budget.

Writing captures costs CPU: hashing and gzip, and above all the S3 client's work for each new
image (1-3 ms of boto3 a PUT). In the server's process that CPU, and the GIL with it, would be
taken from serving. The child keeps to a CPU budget, ``--capture_writer_cpu`` cores on average
(``CpuThrottle``: a token bucket over its CPU time; it waits before an upload while it is ahead of
it), so capture costs serving that much CPU at most, however many products are sampled: what the
budget cannot write fills the server's byte-bounded queue, and is dropped and counted. Within
its budget the child runs at niceness 10 (``WRITER_NICENESS``, every thread, from its start):
it gets its budget on a saturated pod (the kernel's idle class, tried before, starved it there:
nothing was written while serving was busy), and yields to serving beyond it. The shutdown drain
lifts the budget: serving has stopped, what is queued is written as fast as the CPU allows.

The child says it is ready (its libraries imported, its store open) before the server serves: its
start-up is not paid for by the first requests, nor from its budget.

The server's writer thread sends one batch at a time over a pipe and waits (without the GIL) for
its ``Outcome``. A child that dies, or holds a batch for ``STUCK_SECONDS`` without using any CPU
(stopped, or deadlocked; a child waiting on its budget uses some now and then: it is slow, not
stuck), is killed and started again for the next batch (the batch it held counted as failed);
file numbers go on from where the last one stopped.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from model_server.capture_files import CaptureFiles, Outcome, Sampled, open_capture_store
from rakuten_common.cpu import process_cpu_seconds

logger = logging.getLogger("rakuten.capture")

#: The writer's niceness: below serving's (0) when they compete, high enough to get its budget.
WRITER_NICENESS = 10
#: Seconds the server waits at start-up for a new writer process to be ready.
READY_SECONDS = 60.0
#: What the child sends once ready, before any ``Outcome``.
READY = "ready"
#: Seconds the child may hold a batch without using any CPU before it is taken for stuck and killed
#: (each S3 call is bounded by the client's short timeouts: this is the backstop).
STUCK_SECONDS = 120.0
#: Seconds between two looks at the child's CPU time while it holds a batch.
PROGRESS_INTERVAL = 5.0
#: CPU seconds the writer may use at once after a pause, beyond its average (``CpuThrottle``).
BURST_SECONDS = 0.05


class CpuThrottle:
    """At most ``cores`` of CPU on average for this process (a token bucket over its CPU time, that
    fills at ``cores`` a second up to ``burst`` seconds): ``pace()`` waits while the process is ahead.
    ``unbound``, once set, ends every wait (the shutdown drain)."""

    def __init__(self, cores: float, unbound: Any = None, burst: float = BURST_SECONDS,
                 clock=time.monotonic, cpu_time=time.process_time):
        self.cores, self.burst, self.unbound = cores, burst, unbound
        self._clock, self._cpu_time = clock, cpu_time
        self._last, self._cpu = clock(), cpu_time()
        self._credit = burst
        self.waited = 0.0  # seconds spent waiting, in all

    @property
    def bounded(self) -> bool:
        """``False`` from 1 core up (the writer works on one thread) and once ``unbound`` is set."""
        return self.cores < 1.0 and not (self.unbound is not None and self.unbound.is_set())

    def pace(self) -> float:
        """Wait until the CPU used so far is within the budget; the seconds waited."""
        now, cpu = self._clock(), self._cpu_time()
        self._credit = min(self.burst, self._credit + (now - self._last) * self.cores) - (cpu - self._cpu)
        self._last, self._cpu = now, cpu
        if self._credit >= 0 or not self.bounded:
            return 0.0
        wait = -self._credit / self.cores
        if self.unbound is not None:
            self.unbound.wait(wait)
        else:
            time.sleep(wait)
        waited = self._clock() - now
        self.waited += waited
        return waited


class DrainSignal:
    """The child's end of the drain pipe, as ``CpuThrottle``'s ``unbound``: set once the server has
    written to it, or closed it. A pipe, not a ``multiprocessing.Event``: an Event's ``set()`` waits
    for every process asleep in its ``wait()`` to wake, and a writer killed while waiting on its
    budget never does (the server then hung in its shutdown)."""

    def __init__(self, conn, already: bool = False):
        self._conn, self._set = conn, already

    def is_set(self) -> bool:
        return self._set or self.wait(0)

    def wait(self, seconds: float) -> bool:
        if not self._set:
            try:
                self._set = bool(self._conn.poll(seconds))
            except OSError:  # closed on our side: nothing will come
                time.sleep(seconds)
        return self._set


def serve(conn, uri: str, content: str, name: str, seq: int, niceness: int, cores: float = 1.0,
          unbound: Any = None, file_seconds: float = float("inf")) -> None:
    """The child: say ``READY``, then write each batch received on ``conn`` and answer its ``Outcome``;
    stop on ``None`` or when the server's end of the pipe closes. ``cores``, ``unbound``: its
    ``CpuThrottle``; ``file_seconds``: a file each that many seconds of writing (``CaptureFiles``)."""
    from rakuten_common.logs import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server says when to stop
    configure_logging()
    store = open_capture_store(uri)
    lower_priority(own_threads(), niceness)  # the threads libraries started before the server set it
    throttle = CpuThrottle(cores, unbound)  # from here: the start-up is not counted in the budget
    files = CaptureFiles(store, content, name, seq, pace=throttle.pace, file_seconds=file_seconds)
    try:
        conn.send(READY)
    except OSError:
        return
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        waited, reported = throttle.waited, 0

        def progress(piece: Outcome) -> None:  # a file of a long batch: the server counts it now
            nonlocal waited, reported
            piece.budget_wait_seconds, waited = throttle.waited - waited, throttle.waited
            reported += piece.written + piece.failed
            conn.send(piece)

        try:
            outcome = files.write(batch, progress)
        except Exception as exc:  # never die on a batch: say what happened
            logger.exception("capture: writing %d records failed", len(batch) - reported)
            outcome = Outcome(failed=len(batch) - reported, files_failed=1, next_seq=files.seq,
                              problems=[f"capture: {len(batch) - reported} records not written: {exc!r}"])
        outcome.budget_wait_seconds = throttle.waited - waited
        conn.send(outcome)


def lower_priority(threads: list[int], niceness: int) -> bool:
    """Give ``threads`` (thread ids; a process id is its main thread's) ``niceness``: per thread on
    Linux, and inherited by the threads a thread starts. ``False`` (with a WARNING) if refused."""
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
        except ProcessLookupError:  # a thread that has ended
            continue
        except (AttributeError, OSError) as exc:  # not Linux, or refused
            logger.warning("capture writer: niceness %d not set (%s): it competes with serving as an equal",
                           niceness, exc)
            return False
    return True


def own_threads() -> list[int]:
    """This process's thread ids (``[0]``, this thread, where ``/proc`` is missing)."""
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        return [0]


class WriterProcess:
    """A ``CaptureFiles`` for ``uri`` in a child process (see the module docstring): ``write`` a
    batch, get its ``Outcome``."""

    def __init__(self, uri: str, content: str, name: str, cores: float = 1.0, niceness: int = WRITER_NICENESS,
                 timeout: float = STUCK_SECONDS, file_seconds: float = float("inf")):
        self.uri, self.content, self.name, self.cores = uri, content, name, cores
        self.niceness, self.timeout, self.file_seconds = niceness, timeout, file_seconds
        self._ready = False  # the child has said READY
        self._seq = 0
        self._context = multiprocessing.get_context("spawn")  # never fork a process that holds TensorFlow's threads
        self._draining = False  # the children write without their CPU budget (the shutdown drain)
        self._drain: Any = None  # our end of the child's drain pipe (``DrainSignal``)
        self._process: Any = None  # a multiprocessing Process while one runs
        self._conn: Any = None     # our end of its pipe

    def start(self, ready_seconds: float = READY_SECONDS) -> None:
        """Start the child and wait up to ``ready_seconds`` for it to be ready (a child not ready
        by then is waited for before its first batch)."""
        ours, theirs = self._context.Pipe()
        drain_theirs, self._drain = self._context.Pipe(duplex=False)
        self._process = self._context.Process(
            target=serve, name="capture-writer", daemon=True,
            args=(theirs, self.uri, self.content, self.name, self._seq, self.niceness, self.cores,
                  DrainSignal(drain_theirs, self._draining), self.file_seconds))
        started = time.monotonic()
        self._process.start()
        lower_priority([self._process.pid], self.niceness)  # before it imports: that costs CPU too
        theirs.close()
        drain_theirs.close()
        self._conn, self._ready = ours, False
        try:
            if ready_seconds > 0 and self._conn.poll(ready_seconds):
                self._receive_ready()
        except (EOFError, OSError) as exc:  # it died starting: the first batch starts another
            logger.warning("capture writer process %d failed to start: %r", self._process.pid, exc)
        state = f"ready in {time.monotonic() - started:.1f} s" if self._ready else "not ready yet"
        logger.info("Capture writer process %d started, %s (niceness %d, %s)", self._process.pid, state,
                    self.niceness, self._budget())

    def _receive_ready(self) -> None:
        message = self._conn.recv()
        if message != READY:
            raise OSError(f"the capture writer process said {message!r} before it was ready")
        self._ready = True

    def drain(self) -> None:
        """From now on the child writes without its CPU budget: serving has stopped."""
        self._draining = True
        if self._drain is not None:
            try:
                self._drain.send(True)  # never blocks: one small message in an empty pipe
            except OSError:  # the child is gone: the next one starts unbound
                pass

    def _budget(self) -> str:
        return f"{self.cores:g} cores of CPU on average" if self.cores < 1.0 else "no CPU budget"

    def write(self, batch: list[Sampled], progress: Callable[[Outcome], object] | None = None) -> Outcome:
        """Have the child write ``batch``; ``progress`` gets each file of it stored before the last
        (``CaptureFiles.write``). The ``Outcome`` returned holds the rest."""
        if self._process is None or not self._process.is_alive():
            self._stop()
            self.start(ready_seconds=0)  # the writer thread waits for it below, not the server's start-up
        reported = 0  # records of this batch in files already reported
        try:
            if not self._ready:
                self._wait_for_answer()
                self._receive_ready()
            self._conn.send(batch)
            while True:
                self._wait_for_answer()
                outcome = self._conn.recv()
                if outcome.final:
                    break
                reported += outcome.written + outcome.failed
                if progress is not None:
                    progress(outcome)
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            code = self._stop()
            lost = len(batch) - reported
            return Outcome(failed=lost, files_failed=1, next_seq=self._seq, problems=[
                f"capture: the writer process failed ({exc!r}, exit code {code}); {lost} records not written "
                "(a new one is started)"])
        self._seq = outcome.next_seq
        return outcome

    def _wait_for_answer(self) -> None:
        """Return when the child has answered; ``TimeoutError`` once it has gone ``timeout`` seconds
        without answering or using any CPU (wall time alone where its CPU time cannot be read)."""
        pid = self._process.pid
        last_cpu, since = process_cpu_seconds(pid), time.monotonic()
        while not self._conn.poll(min(self.timeout, PROGRESS_INTERVAL)):
            cpu = process_cpu_seconds(pid)
            if cpu is not None and cpu != last_cpu:
                last_cpu, since = cpu, time.monotonic()
            elif time.monotonic() - since >= self.timeout:
                raise TimeoutError(f"no answer and no CPU used in {self.timeout:g} s")

    def close(self, timeout: float = 10.0) -> None:
        """Let the child finish and exit (it has no batch left: the server's thread waited for each)."""
        if self._conn is not None:
            try:
                self._conn.send(None)
            except OSError:
                pass
        self._stop(timeout)

    def _stop(self, timeout: float = 0.0) -> int | None:
        """Wait up to ``timeout`` seconds for the child to exit, then kill it; its exit code."""
        process, self._process = self._process, None
        for conn in (self._conn, self._drain):
            if conn is not None:
                conn.close()
        self._conn = self._drain = None
        if process is None:
            return None
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(5)
        return process.exitcode

    def __str__(self) -> str:
        return f"{self.uri} as {self.name} (writer process, niceness {self.niceness}, {self._budget()})"
