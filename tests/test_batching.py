"""The adaptive batcher in isolation. The model is a pure-numpy stand-in (the real model path
is covered end to end in test_server_e2e); what is tested is the queueing logic."""
from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from model_server.batching import AdaptiveBatcher


class RecordingModel:
    """Returns each row's id doubled, and records the size of every call."""

    def __init__(self, delay: float = 0.02, fail_on: int | None = None):
        self.calls: list[int] = []
        self.delay, self.fail_on = delay, fail_on
        self.lock = threading.Lock()

    def __call__(self, inputs):
        rows = inputs["ids"]
        with self.lock:
            self.calls.append(len(rows))
        threading.Event().wait(self.delay)
        if self.fail_on is not None and self.fail_on in rows:
            raise RuntimeError("model failure")
        return rows * 2


def run(coro):
    return asyncio.run(coro)


def test_concurrent_callers_get_exactly_their_own_rows():
    model = RecordingModel()
    batcher = AdaptiveBatcher(model, max_batch_size=8, max_batch_time=0.01)

    async def main():
        requests = [np.arange(start, start + n) for start, n in zip(range(0, 1000, 10), [1, 2, 3, 1, 4, 1, 2] * 5)]
        results = await asyncio.gather(*(batcher.submit({"ids": ids}) for ids in requests))
        await batcher.close()
        return requests, results

    requests, results = run(main())
    for ids, result in zip(requests, results):
        np.testing.assert_array_equal(result, ids * 2)
    assert max(model.calls) <= 8 and len(model.calls) < len(requests)  # merged, never above the max


def test_a_lone_request_is_not_held_back():
    model = RecordingModel(delay=0)
    batcher = AdaptiveBatcher(model, max_batch_size=32, max_batch_time=10.0)  # a wait would hang the test

    async def main():
        result = await asyncio.wait_for(batcher.submit({"ids": np.array([5])}), timeout=5)
        await batcher.close()
        return result

    np.testing.assert_array_equal(run(main()), [10])


def test_waits_for_requests_announced_as_incoming():
    model = RecordingModel(delay=0)
    batcher = AdaptiveBatcher(model, max_batch_size=32, max_batch_time=2.0)

    async def main():
        batcher.incoming = 1  # a request is still being pre-processed
        first = asyncio.ensure_future(batcher.submit({"ids": np.array([1])}))
        await asyncio.sleep(0.05)
        batcher.incoming = 0
        second = await batcher.submit({"ids": np.array([2])})
        await batcher.close()
        return await first, second

    first, second = run(main())
    assert model.calls == [2] and list(first) == [2] and list(second) == [4]


def test_a_failing_call_fails_only_its_own_callers():
    model = RecordingModel(fail_on=13)
    batcher = AdaptiveBatcher(model, max_batch_size=2, max_batch_time=0.0)

    async def main():
        calls = [batcher.submit({"ids": np.array([i])}) for i in (12, 13, 14, 15)]
        results = await asyncio.gather(*calls, return_exceptions=True)
        await batcher.close()
        return results

    results = run(main())
    failed = [i for i, r in zip((12, 13, 14, 15), results) if isinstance(r, Exception)]
    assert 13 in failed and 14 not in failed and 15 not in failed
    assert list(results[3]) == [30]


def test_disabled_batching_calls_the_model_per_request():
    model = RecordingModel(delay=0)
    batcher = AdaptiveBatcher(model, max_batch_size=1)

    async def main():
        results = await asyncio.gather(*(batcher.submit({"ids": np.array([i, i])}) for i in range(5)))
        await batcher.close()
        return results

    assert [list(r) for r in run(main())] == [[2 * i, 2 * i] for i in range(5)]
    assert model.calls == [2] * 5


@pytest.mark.parametrize("max_batch_size", [4, 32])
def test_requests_larger_than_the_room_left_move_to_the_next_call(max_batch_size):
    model = RecordingModel()
    batcher = AdaptiveBatcher(model, max_batch_size=max_batch_size, max_batch_time=0.01)

    async def main():
        sizes = [3, 3, 3, 3, 6]
        requests = [np.arange(100 * i, 100 * i + n) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(batcher.submit({"ids": r}) for r in requests))
        await batcher.close()
        return requests, results

    requests, results = run(main())
    for ids, result in zip(requests, results):
        np.testing.assert_array_equal(result, ids * 2)
    assert all(c <= max(max_batch_size, 6) for c in model.calls)


def test_a_batch_that_cannot_even_be_assembled_fails_its_callers_not_the_batcher():
    model = RecordingModel(delay=0)
    batcher = AdaptiveBatcher(model, max_batch_size=8, max_batch_time=0.05)

    async def main():
        batcher.incoming = 1  # keep the batch open so both land in the same call
        bad = asyncio.ensure_future(batcher.submit({"ids": np.zeros((1, 2))}))  # 2-D, cannot concatenate with 1-D
        good = asyncio.ensure_future(batcher.submit({"ids": np.array([3])}))
        batcher.incoming = 0
        results = await asyncio.gather(bad, good, return_exceptions=True)
        after = await asyncio.wait_for(batcher.submit({"ids": np.array([4])}), timeout=5)
        await batcher.close()
        return results, after

    (bad, good), after = run(main())
    assert isinstance(bad, ValueError) and isinstance(good, ValueError)
    assert list(after) == [8]  # the batcher still serves
