"""README, Makefile help and the code agree: every option's flag, environment variable and default
is in the README table of its command, and the README's `make` targets exist."""
from __future__ import annotations

import dataclasses
import re

import pytest

from model_server.settings import Settings
from rakuten_common.options import _default, _shown
from tests.support.servers import REPO
from training_job.config import ModelConfig, QualityConfig, TrainConfig

README = (REPO / "README.md").read_text()


def option_rows(cls, style: str) -> list[tuple[str, str, str]]:
    rows = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get("option")
        if spec:
            flag = "--" + (field.name.replace("_", "-") if style == "kebab" else field.name)
            rows.append((flag, " / ".join(f"`{e}`" for e in spec.env), spec.shown or _shown(_default(field))))
    return rows


def table_row(flag: str) -> str | None:
    match = re.search(rf"^\| `{re.escape(flag)}` \|.*$", README, re.MULTILINE)
    return match.group(0) if match else None


@pytest.mark.parametrize("cls, style", [(Settings, "snake"), (TrainConfig, "kebab"), (ModelConfig, "kebab"),
                                        (QualityConfig, "kebab")])
def test_every_option_is_documented_with_its_env_and_default(cls, style):
    for flag, env, default in option_rows(cls, style):
        row = table_row(flag)
        assert row, f"README has no table row for {flag}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[1] == (env or "—"), f"{flag}: README says env {cells[1]}, the code {env or '—'}"
        assert cells[2].strip("`") == default, f"{flag}: README says default {cells[2]}, the code {default}"


def test_make_targets_named_in_the_readme_exist():
    makefiles = [REPO / "Makefile", *sorted((REPO / "mk").glob("*.mk"))]
    targets = {m.group(1) for path in makefiles for m in re.finditer(r"^([a-zA-Z0-9_.-]+):", path.read_text(), re.M)}
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README))
    assert named and named <= targets, sorted(named - targets)
