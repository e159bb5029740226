"""The capture writer's own process: ``CaptureFiles`` run in a child process at the lowest CPU priority.

Writing captures costs CPU: hashing and gzip, and above all the S3 client's work for each new
image (2-3 ms of boto3 a PUT, a third of what serving the request cost). In the server's process
that CPU, and the GIL with it, would be taken from serving. In a child process at niceness 19 the
kernel gives the writer the CPU serving leaves idle and little more: when serving saturates the
CPU, the writer falls behind, the server's byte-bounded queue fills and its records are dropped
and counted. Capture yields to serving, never the reverse.

The server's writer thread sends one batch at a time over a pipe and waits (without the GIL) for
its ``Outcome``. A child that dies or stops answering is killed and started again for the next
batch (the batch it held counted as failed); file numbers go on from where the last one stopped.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from typing import Any

from model_server.capture_files import CaptureFiles, Outcome, Sampled, open_capture_store

logger = logging.getLogger("rakuten.capture")

#: The writer's niceness: the kernel's lowest CPU priority (CPU weight 15 against serving's 1024).
WRITER_NICENESS = 19
#: Seconds one batch may take before the child is taken for stuck and killed (a batch's images and
#: file are each bounded by the S3 client's short timeouts; this is the backstop).
BATCH_TIMEOUT = 300.0


def serve(conn, uri: str, content: str, name: str, seq: int, niceness: int) -> None:
    """The child: write each batch received on ``conn`` and answer its ``Outcome``; stop on ``None``
    or when the server's end of the pipe closes."""
    from rakuten_common.logs import configure_logging

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server says when to stop
    configure_logging()
    try:
        os.nice(niceness)
    except OSError as exc:
        logger.warning("capture writer: niceness %d not set (%s): it competes with serving for CPU", niceness, exc)
    files = CaptureFiles(open_capture_store(uri), content, name, seq)
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        try:
            outcome = files.write(batch)
        except Exception as exc:  # never die on a batch: say what happened
            logger.exception("capture: writing %d records failed", len(batch))
            outcome = Outcome(failed=len(batch), files_failed=1, next_seq=files.seq,
                              problems=[f"capture: {len(batch)} records not written: {exc!r}"])
        conn.send(outcome)


class WriterProcess:
    """A ``CaptureFiles`` for ``uri`` in a child process (see the module docstring): ``write`` a
    batch, get its ``Outcome``."""

    def __init__(self, uri: str, content: str, name: str, niceness: int = WRITER_NICENESS,
                 timeout: float = BATCH_TIMEOUT):
        self.uri, self.content, self.name, self.niceness, self.timeout = uri, content, name, niceness, timeout
        self._seq = 0
        self._process: Any = None  # a multiprocessing Process (spawn context) while one runs
        self._conn: Any = None     # our end of its pipe

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # never fork a process that holds TensorFlow's threads
        ours, theirs = context.Pipe()
        self._process = context.Process(target=serve, name="capture-writer", daemon=True,
                                        args=(theirs, self.uri, self.content, self.name, self._seq, self.niceness))
        self._process.start()
        theirs.close()
        self._conn = ours
        logger.info("Capture writer process %d started (niceness %d)", self._process.pid, self.niceness)

    def write(self, batch: list[Sampled]) -> Outcome:
        if self._process is None or not self._process.is_alive():
            self._stop()
            self.start()
        try:
            self._conn.send(batch)
            if not self._conn.poll(self.timeout):
                raise TimeoutError(f"no answer in {self.timeout:g} s")
            outcome = self._conn.recv()
        except (OSError, EOFError) as exc:  # TimeoutError is an OSError
            code = self._stop()
            return Outcome(failed=len(batch), files_failed=1, next_seq=self._seq, problems=[
                f"capture: the writer process failed ({exc!r}, exit code {code}); {len(batch)} records not written "
                "(a new one is started)"])
        self._seq = outcome.next_seq
        return outcome

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
        return f"{self.uri} as {self.name} (writer process, niceness {self.niceness})"
