"""Load profiles as plain data (no Locust import, so that tests can use them freely).

``constant``  ``-u`` users spawned at ``-r`` per second, held for ``-t`` (5 minutes if ``-t`` is
              not given): Locust's usual run, bounded.
``smoke``     a short check (~30 s): 1 user, then ``--smoke-users``, then back to 1.
``step``      a staircase long enough for an autoscaler to react: ``--steps`` steps of
              ``--step-users`` more users every ``--step-seconds`` (2 min by default: longer than
              the HPA's 15 s sync period plus a pod's start), then two steps back down (half the
              peak, then one step's worth) so that scale-in can be watched too. 5 steps of 8 users,
              2 min each: 14 minutes, 40 users at the peak.

Every profile ends by itself. ``-u``, ``-r`` and ``-t`` only apply to ``constant`` (with a shape
class, Locust itself does not enforce ``-t``: the profile does).
"""
from __future__ import annotations

from dataclasses import dataclass

SHAPES = ("constant", "smoke", "step")
CONSTANT_DEFAULT_SECONDS = 300


@dataclass(frozen=True)
class Stage:
    """Hold ``users`` (spawned at ``spawn_rate`` per second) until ``until`` seconds into the run."""

    until: float
    users: int
    spawn_rate: float


def smoke_stages(users: int = 4, seconds: float = 30) -> list[Stage]:
    third = seconds / 3
    return [Stage(third, 1, 1), Stage(2 * third, users, users), Stage(seconds, 1, users)]


def step_stages(step_users: int = 8, step_seconds: float = 120, steps: int = 5,
                spawn_rate: float | None = None) -> list[Stage]:
    rate = spawn_rate or max(1.0, step_users / 10)  # each step fully spawned within ~10 s
    stages = [Stage(step_seconds * k, step_users * k, rate) for k in range(1, steps + 1)]
    for i, users in enumerate((max(1, step_users * steps // 2), step_users), start=1):
        stages.append(Stage(step_seconds * (steps + i), users, max(rate, step_users)))
    return stages


def constant_stages(users: int, spawn_rate: float, seconds: float | None) -> list[Stage]:
    return [Stage(seconds or CONSTANT_DEFAULT_SECONDS, users, spawn_rate)]


def stages_for(options) -> list[Stage]:
    """The stages of the profile named by ``options.load_shape`` (Locust's parsed options)."""
    shape = getattr(options, "load_shape", "constant") or "constant"
    if shape == "smoke":
        return smoke_stages(options.smoke_users)
    if shape == "step":
        return step_stages(options.step_users, options.step_seconds, options.steps)
    if shape == "constant":
        return constant_stages(options.num_users or 1, options.spawn_rate or 1, options.run_time)
    raise ValueError(f"unknown load shape {shape!r}: one of {SHAPES}")


def total_seconds(stages: list[Stage]) -> float:
    return stages[-1].until if stages else 0.0
