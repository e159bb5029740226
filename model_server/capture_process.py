"""The capture writer's own process: ``CaptureFiles`` run in a child process at the lowest CPU priority.

Writing captures costs CPU: hashing and gzip, and above all the S3 client's work for each new
image (2-3 ms of boto3 a PUT, a third of what serving the request cost). In the server's process
that CPU, and the GIL with it, would be taken from serving. The child runs in the kernel's idle
scheduling class (``SCHED_IDLE``, every thread, from its start): it gets the CPU serving leaves
idle, and a serving thread that wakes up takes the CPU from it at once. When serving saturates
the CPU the writer falls behind, the server's byte-bounded queue fills and its records are
dropped and counted. Capture yields to serving, never the reverse.

The idle class alone does not make capture free: a writer that always has work (capture at 1.0
on a busy server) is always runnable and takes every idle moment of the cores, their caches with
it, and under a pod's CPU limit its CPU counts in the quota serving is throttled by. So the child
also keeps to a CPU budget, ``--capture_writer_cpu`` cores on average (``CpuThrottle``: it waits
before an upload while it is ahead of it). The shutdown drain lifts the budget: serving has
stopped, what is queued is written as fast as the CPU allows.

The server's writer thread sends one batch at a time over a pipe and waits (without the GIL) for
its ``Outcome``. A child that dies, or holds a batch for ``STUCK_SECONDS`` without using any CPU
(stopped, or deadlocked; a starved child still gets some now and then: it is slow, not stuck), is
killed and started again for the next batch (the batch it held counted as failed); file numbers
go on from where the last one stopped.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import time
from typing import Any

from model_server.capture_files import CaptureFiles, Outcome, Sampled, open_capture_store
from rakuten_common.cpu import process_cpu_seconds

logger = logging.getLogger("rakuten.capture")

#: The writer's niceness: its priority where the idle scheduling class cannot be set.
WRITER_NICENESS = 19
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


def serve(conn, uri: str, content: str, name: str, seq: int, niceness: int, cores: float = 1.0,
          unbound: Any = None) -> None:
    """The child: write each batch received on ``conn`` and answer its ``Outcome``; stop on ``None``
    or when the server's end of the pipe closes. ``cores``, ``unbound``: its ``CpuThrottle``."""
    from rakuten_common.logs import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server says when to stop
    configure_logging()
    lower_priority(own_threads(), niceness)  # the threads libraries started before the server set it
    throttle = CpuThrottle(cores, unbound)
    files = CaptureFiles(open_capture_store(uri), content, name, seq, pace=throttle.pace)
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        waited = throttle.waited
        try:
            outcome = files.write(batch)
        except Exception as exc:  # never die on a batch: say what happened
            logger.exception("capture: writing %d records failed", len(batch))
            outcome = Outcome(failed=len(batch), files_failed=1, next_seq=files.seq,
                              problems=[f"capture: {len(batch)} records not written: {exc!r}"])
        outcome.budget_wait_seconds = throttle.waited - waited
        conn.send(outcome)


def lower_priority(threads: list[int], niceness: int) -> bool:
    """Give ``threads`` (thread ids; a process id is its main thread's) the lowest CPU priority: the
    kernel's idle scheduling class (``SCHED_IDLE``: a serving thread that wakes up takes the CPU
    from them at once), and ``niceness`` (what counts where the class cannot be set). Both are per
    thread on Linux and inherited by the threads a thread starts. ``False`` (with a WARNING) if refused."""
    for tid in threads:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, niceness)
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        except ProcessLookupError:  # a thread that has ended
            continue
        except (AttributeError, OSError) as exc:  # not Linux, or refused
            logger.warning("capture writer: lowest CPU priority not set (%s): it competes with serving for CPU", exc)
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
                 timeout: float = STUCK_SECONDS):
        self.uri, self.content, self.name, self.cores = uri, content, name, cores
        self.niceness, self.timeout = niceness, timeout
        self._seq = 0
        self._context = multiprocessing.get_context("spawn")  # never fork a process that holds TensorFlow's threads
        self._unbound = self._context.Event()  # set: the child writes without its CPU budget (the drain)
        self._process: Any = None  # a multiprocessing Process while one runs
        self._conn: Any = None     # our end of its pipe

    def start(self) -> None:
        ours, theirs = self._context.Pipe()
        self._process = self._context.Process(
            target=serve, name="capture-writer", daemon=True,
            args=(theirs, self.uri, self.content, self.name, self._seq, self.niceness, self.cores, self._unbound))
        self._process.start()
        lower_priority([self._process.pid], self.niceness)  # before it imports: that costs CPU too
        theirs.close()
        self._conn = ours
        logger.info("Capture writer process %d started (idle scheduling class, niceness %d, %s)", self._process.pid,
                    self.niceness, self._budget())

    def drain(self) -> None:
        """From now on the child writes without its CPU budget: serving has stopped."""
        self._unbound.set()

    def _budget(self) -> str:
        return f"{self.cores:g} cores of CPU on average" if self.cores < 1.0 else "no CPU budget"

    def write(self, batch: list[Sampled]) -> Outcome:
        if self._process is None or not self._process.is_alive():
            self._stop()
            self.start()
        try:
            self._conn.send(batch)
            self._wait_for_answer()
            outcome = self._conn.recv()
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            code = self._stop()
            return Outcome(failed=len(batch), files_failed=1, next_seq=self._seq, problems=[
                f"capture: the writer process failed ({exc!r}, exit code {code}); {len(batch)} records not written "
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
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if process is None:
            return None
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join(5)
        return process.exitcode

    def __str__(self) -> str:
        return f"{self.uri} as {self.name} (writer process, idle scheduling class, {self._budget()})"
