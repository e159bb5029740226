"""Adaptive batching of concurrent V2 requests into single model calls.

Requests queue up while the model is busy and the next call takes as many as fit in
``max_batch_size`` rows. When the queue runs dry, the batcher waits up to ``max_batch_time``
for more rows, but only if more are on their way (requests still being pre-processed): a
lone request is never delayed. Each caller gets exactly its own rows back; a model failure
fails only the callers of that call. Callers that went away (cancelled) or whose deadline
passed while queued are left out of the next call: the model never runs rows nobody awaits.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from model_server.admission import Deadline, DeadlineExceeded

InferFn = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class _Pending:
    inputs: dict[str, np.ndarray]
    future: asyncio.Future
    rows: int
    deadline: Deadline | None = None
    enqueued: float = field(default_factory=time.perf_counter)

    def expired(self) -> bool:
        return self.deadline is not None and self.deadline.expired()


class AdaptiveBatcher:
    """Merges concurrent ``submit`` calls into calls of ``infer`` on one inference thread."""

    def __init__(self, infer: InferFn, max_batch_size: int = 32, max_batch_time: float = 0.005,
                 on_batch: Callable[[int, list[float], float], None] | None = None,
                 on_wasted: Callable[[int], None] | None = None):
        self.infer = infer
        self.max_batch_size = max_batch_size
        self.max_batch_time = max_batch_time
        self.on_batch = on_batch or (lambda rows, waits, seconds: None)
        self.on_wasted = on_wasted or (lambda rows: None)
        self.incoming = 0  # requests admitted but not yet queued (being pre-processed)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._queue: asyncio.Queue[_Pending] | None = None
        self._carry: _Pending | None = None
        self._worker: asyncio.Task | None = None
        self._closed = False

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1

    @property
    def healthy(self) -> bool:
        """Able to take work: not closed (a crashed worker is restarted by the next ``submit``)."""
        return not self._closed

    async def submit(self, inputs: dict[str, np.ndarray], deadline: Deadline | None = None) -> np.ndarray:
        """Run ``infer`` on ``inputs`` (merged with other callers' rows); return this caller's rows."""
        loop = asyncio.get_running_loop()
        rows = len(next(iter(inputs.values())))
        if not self.enabled:
            started = time.perf_counter()
            result = await loop.run_in_executor(self._executor, self.infer, inputs)
            self.on_batch(rows, [0.0], time.perf_counter() - started)
            return result
        if self._queue is None:
            self._queue = asyncio.Queue()
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(), name="adaptive-batcher")
        pending = _Pending(inputs, loop.create_future(), rows, deadline)
        self._queue.put_nowait(pending)
        return await pending.future

    async def _next(self, timeout: float | None) -> _Pending | None:
        if self._carry is not None:
            pending, self._carry = self._carry, None
            return pending
        if timeout is None:
            return await self._queue.get()
        try:
            return self._queue.get_nowait()
        except asyncio.QueueEmpty:
            if timeout <= 0 or self.incoming == 0:
                return None
            try:
                return await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                return None

    async def _collect(self) -> list[_Pending]:
        batch = [await self._next(None)]
        rows = batch[0].rows
        deadline = time.perf_counter() + self.max_batch_time
        while rows < self.max_batch_size:
            pending = await self._next(deadline - time.perf_counter())
            if pending is None:
                break
            if rows + pending.rows > self.max_batch_size:
                self._carry = pending
                break
            batch.append(pending)
            rows += pending.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            batch = [p for p in batch if self._still_wanted(p)]
            if not batch:
                continue
            try:
                inputs = {name: np.concatenate([p.inputs[name] for p in batch]) for name in batch[0].inputs}
                started = time.perf_counter()
                result = await loop.run_in_executor(self._executor, self.infer, inputs)
                seconds = time.perf_counter() - started
            except Exception as exc:
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(exc)
                continue
            offset = 0
            for p in batch:
                if not p.future.done():
                    p.future.set_result(result[offset:offset + p.rows])
                else:
                    self.on_wasted(p.rows)  # its caller left during the call
                offset += p.rows
            self.on_batch(offset, [started - p.enqueued for p in batch], seconds)

    @staticmethod
    def _still_wanted(pending: _Pending) -> bool:
        """False for callers that went away and for those whose deadline passed (failed here)."""
        if pending.future.done():
            return False
        if pending.expired():
            pending.future.set_exception(DeadlineExceeded(
                f"deadline of {pending.deadline.seconds:g} s passed while queued for the model"))
            return False
        return True

    async def close(self) -> None:
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
