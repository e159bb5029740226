"""A thread pool where requests take turns: the preprocessing threads of the server.

A request is a ``Job``: a first unit of work (parse and validate the body), which may add
more units (decode one product each). Threads take the next unit of the job at the head of
the queue and move that job to the back, so a 64-product request spreads over every thread
but a one-product request queued behind it waits for one unit, not for 64. A job whose
client is gone (``cancel``) or whose deadline passed has its remaining units skipped: no
decoding is spent on an answer nobody will read.

Heavy units (``heavy(fn)``: e.g. decoding a large PNG, which cannot be decoded at a reduced
scale) run on at most ``workers - 1`` threads at a time, so at least one thread always
serves ordinary requests while big images are decoded.
"""
from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from model_server.admission import Deadline, DeadlineExceeded

Unit = Callable[[], object]


class heavy:
    """A unit that takes long (a large image): limited to ``workers - 1`` threads at once."""

    __slots__ = ("fn",)

    def __init__(self, fn: Unit):
        self.fn = fn

    def __call__(self) -> object:
        return self.fn()


class Job:
    """One request's units; its result is the first unit's return value."""

    __slots__ = ("pool", "future", "deadline", "units", "queued", "pending", "cancelled", "error", "result",
                 "_loop")

    def __init__(self, pool: FairPool, loop: asyncio.AbstractEventLoop, deadline: Deadline):
        self.pool, self._loop, self.deadline = pool, loop, deadline
        self.future: asyncio.Future = loop.create_future()
        self.units: deque[Unit] = deque()
        self.queued = False
        self.pending = 0
        self.cancelled = False
        self.error: BaseException | None = None
        self.result: Any = None

    @property
    def alive(self) -> bool:
        """Worth more work: not failed, not cancelled, deadline not passed."""
        return self.error is None and not self.cancelled and not self.deadline.expired()

    def add(self, units: list[Unit]) -> None:
        """Queue more units of this job (called from one of its running units)."""
        self.pool._enqueue(self, units)

    def cancel(self) -> None:
        """The client went away: skip whatever has not started."""
        self.cancelled = True

    def _run(self, unit: Unit, first: bool) -> None:
        if self.alive:
            try:
                value = unit()
            except BaseException as exc:
                if self.error is None:
                    self.error = exc
            else:
                if first:
                    self.result = value
                if self.cancelled or self.deadline.expired():
                    self.pool.on_wasted(1)
        elif self.error is None and not self.cancelled:
            self.error = DeadlineExceeded(f"deadline of {self.deadline.seconds:g} s passed while queued "
                                          "for preprocessing")
        if self.pool._unit_done(self):
            self._loop.call_soon_threadsafe(self._finish)

    def _finish(self) -> None:
        if self.future.done():
            return
        if self.error is not None:
            self.future.set_exception(self.error)
        else:
            self.future.set_result(self.result)


class FairPool:
    """``workers`` daemon threads running the units of queued jobs, one job after the other."""

    def __init__(self, workers: int, name: str = "preprocess", on_wasted: Callable[[int], None] = lambda n: None):
        self.on_wasted = on_wasted
        self._ready: deque[Job] = deque()
        self._cv = threading.Condition()
        self._closed = False
        self.heavy_cap = max(1, workers - 1)
        self._heavy_running = 0
        self._threads = [threading.Thread(target=self._work, name=f"{name}_{i}", daemon=True)
                         for i in range(max(1, workers))]
        for thread in self._threads:
            thread.start()

    async def run(self, first: Callable[[Job], Any], deadline: Deadline) -> Any:
        """Run ``first(job)`` on a thread, then any units it added; return its value.

        Cancelling the caller cancels the job (units not started are skipped).
        """
        job = Job(self, asyncio.get_running_loop(), deadline)
        self._enqueue(job, [lambda: first(job)], first=True)
        try:
            return await job.future
        except asyncio.CancelledError:
            job.cancel()
            raise

    def _enqueue(self, job: Job, units: list[Unit], first: bool = False) -> None:
        if first:
            units = [_First(units[0])]
        with self._cv:
            job.units.extend(units)
            job.pending += len(units)
            if not job.queued:
                job.queued = True
                self._ready.append(job)
            self._cv.notify(len(units))

    def _unit_done(self, job: Job) -> bool:
        with self._cv:
            job.pending -= 1
            return job.pending == 0

    def _next_job(self) -> Job | None:
        """The first queued job whose next unit may start now (heavy units wait for a heavy slot)."""
        for index, job in enumerate(self._ready):
            if not isinstance(job.units[0], heavy) or self._heavy_running < self.heavy_cap:
                del self._ready[index]
                return job
        return None

    def _work(self) -> None:
        while True:
            with self._cv:
                while (job := self._next_job()) is None:
                    if self._closed and not self._ready:
                        return
                    self._cv.wait()
                unit = job.units.popleft()
                if job.units:
                    self._ready.append(job)  # its next unit waits for the other jobs' turn
                else:
                    job.queued = False
                is_heavy = isinstance(unit, heavy)
                if is_heavy:
                    self._heavy_running += 1
            job._run(unit, isinstance(unit, _First))
            if is_heavy:
                with self._cv:
                    self._heavy_running -= 1
                    self._cv.notify_all()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class _First:
    """Marks a job's first unit, whose return value is the job's result."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn

    def __call__(self) -> Any:
        return self.fn()
