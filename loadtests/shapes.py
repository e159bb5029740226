"""The Locust load shape: follows the profile chosen with ``--load-shape`` (env ``LOCUST_LOAD_SHAPE``,
or ``load-shape`` in a config file): ``constant``, ``smoke`` or ``step``. The profiles themselves
are plain data in ``loadtests/profiles.py``.
"""
from __future__ import annotations

from locust import LoadTestShape

from loadtests.profiles import Stage, stages_for


class LoadProfile(LoadTestShape):
    """Follows the stages of the selected profile, then ends the run."""

    use_common_options = True  # -u / -r / -t feed the ``constant`` profile

    def __init__(self):
        super().__init__()
        self._stages: list[Stage] | None = None

    def reset_time(self):
        super().reset_time()
        self._stages = None

    def tick(self):
        if self._stages is None:
            self._stages = stages_for(self.runner.environment.parsed_options)
        elapsed = self.get_run_time()
        for stage in self._stages:
            if elapsed < stage.until:
                return stage.users, stage.spawn_rate
        return None
