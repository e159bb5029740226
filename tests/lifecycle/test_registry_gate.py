"""Registry, promotion gate, forced promotion and rollback, in the order a user meets them.

Real processes only: the training job and ``python -m training_job.promote`` as subprocesses,
a real ``mlflow server`` (sqlite, artifacts in S3) and the S3 test server; the model server
loads the champion by its registry URI. The steps build on each other (one registry), so the
module runs top to bottom.
"""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from rakuten_common.artifacts import fetch
from rakuten_common.champion import CHAMPION_FILE
from rakuten_common.storage import open_store
from tests.lifecycle.conftest import MODEL_PREFIX, promote, served_version
from tests.support.servers import start_model_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]
NAME = "rakuten-classifier"


def client(env) -> MlflowClient:
    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def aliases(env) -> dict[str, str]:
    return {alias: str(number) for alias, number in client(env).get_registered_model(NAME).aliases.items()}


def pointer(s3_env) -> dict:
    store = open_store(MODEL_PREFIX)
    return json.loads(store.client.get_object(Bucket=store.bucket, Key=f"{store.prefix}/{CHAMPION_FILE}")["Body"].read())


def decisions(env) -> list:
    experiment = client(env).get_experiment_by_name("rakuten-classifier-promotions")
    return client(env).search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])


def test_training_registers_its_version_as_challenger(good_version, lifecycle_env):
    version = client(lifecycle_env).get_model_version(NAME, good_version.registry_version)
    tags = version.tags
    assert tags["storage_uri"] == good_version.uri and tags["model_version"] == good_version.version
    assert len(tags["dataset_fingerprint"]) == 64 and tags["git_commit"]
    assert 0 < float(tags["eval_weighted_f1"]) <= 1 and 0 < float(tags["weighted_f1"]) <= 1
    assert version.source.endswith("/model") and version.run_id
    assert aliases(lifecycle_env) == {"challenger": good_version.registry_version}
    assert "alias challenger" in good_version.stdout


def test_first_model_becomes_champion_directly(good_version, lifecycle_env, s3_env):
    done = promote(lifecycle_env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "first model becomes champion" in done.stdout
    assert aliases(lifecycle_env)["champion"] == good_version.registry_version
    assert pointer(s3_env) | {"promoted_at": None} == {
        "name": NAME, "version": good_version.version, "uri": good_version.uri,
        "registry_version": good_version.registry_version, "promoted_by": "gate", "promoted_at": None}
    run = decisions(lifecycle_env)[0]
    assert run.data.tags["decision"] == "promoted" and run.data.params["action"] == "gate"
    assert run.data.metrics["challenger_weighted_f1"] > 0.5
    tags = client(lifecycle_env).get_model_version(NAME, good_version.registry_version).tags
    assert tags["gate.decision"] == "promoted" and tags["promoted_by"] == "gate"


def test_worse_challenger_is_refused_with_exit_3(worse_version, good_version, lifecycle_env, s3_env):
    assert aliases(lifecycle_env) == {"champion": good_version.registry_version,
                                      "challenger": worse_version.registry_version}
    done = promote(lifecycle_env)
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
    refusal = [line for line in done.stderr.splitlines() if "REFUSED" in line]
    assert len(refusal) == 1 and "weighted F1" in refusal[0] and "vs champion" in refusal[0], done.stderr
    print(refusal[0])  # the figures, for the report (pytest -s)
    assert aliases(lifecycle_env)["champion"] == good_version.registry_version
    assert pointer(s3_env)["version"] == good_version.version
    run = decisions(lifecycle_env)[0]
    assert run.data.tags["decision"] == "refused"
    figures = run.data.metrics
    assert figures["challenger_weighted_f1"] < figures["champion_weighted_f1"] - 0.01
    assert int(run.data.params["evaluation_rows"]) > 50
    assert {f"champion_recall_{code}" for code in (10, 2583)} <= set(figures)
    for number in (good_version.registry_version, worse_version.registry_version):
        tags = client(lifecycle_env).get_model_version(NAME, number).tags
        assert tags["gate.decision"] == "refused" and tags["gate.mlflow_run_id"] == run.info.run_id
        assert float(tags["gate.champion_weighted_f1"]) == pytest.approx(figures["champion_weighted_f1"], abs=1e-4)
        assert float(tags["gate.challenger_weighted_f1"]) == pytest.approx(figures["challenger_weighted_f1"], abs=1e-4)


def test_servers_load_the_champion_not_the_newest(worse_version, good_version, lifecycle_env, s3_env,
                                                  artifacts_dir, tmp_path):
    """The prefix holds a newer version (the refused one): the pointer decides, and the registry URI agrees."""
    bundle, manifest = fetch(MODEL_PREFIX, tmp_path / "cache", progress=lambda _: None)
    assert manifest.version == good_version.version != worse_version.version
    server, url = start_model_server(f"models:/{NAME}@champion", artifacts_dir / "model_server_champion.log",
                                     env={**lifecycle_env, "MODEL_CACHE_DIR": str(tmp_path / "server-cache")})
    try:
        assert served_version(url) == good_version.version
        assert f"models:/{NAME}@champion is registry version {good_version.registry_version}" in server.logs()
    finally:
        server.stop()


def test_force_promotes_the_challenger_and_records_it(worse_version, lifecycle_env, s3_env):
    done = promote(lifecycle_env, "--force")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert aliases(lifecycle_env)["champion"] == worse_version.registry_version
    assert pointer(s3_env)["version"] == worse_version.version and pointer(s3_env)["promoted_by"] == "force"
    assert decisions(lifecycle_env)[0].data.params["action"] == "force"


def test_already_champion_is_success_without_a_new_decision(lifecycle_env):
    before = len(decisions(lifecycle_env))
    done = promote(lifecycle_env)
    assert done.returncode == 0 and "already champion" in done.stdout, done.stdout + done.stderr
    assert len(decisions(lifecycle_env)) == before


def test_rollback_to_a_version_by_number_or_version_id(good_version, lifecycle_env, s3_env):
    done = promote(lifecycle_env, "--to", good_version.registry_version)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert aliases(lifecycle_env)["champion"] == good_version.registry_version
    assert pointer(s3_env)["version"] == good_version.version and pointer(s3_env)["promoted_by"] == "rollback"
    assert decisions(lifecycle_env)[0].data.params["action"] == "rollback"
    again = promote(lifecycle_env, "--to", good_version.version)
    assert again.returncode == 0 and "already champion" in again.stdout, again.stdout + again.stderr


def test_errors_are_one_line_and_exit_1(lifecycle_env):
    unknown = promote(lifecycle_env, "--to", "999")
    assert unknown.returncode == 1 and "999" in unknown.stderr, unknown.stderr
    down = promote({**lifecycle_env, "MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    assert down.returncode == 1, down.stdout + down.stderr
    both = promote(lifecycle_env, "--force", "--to", "1")
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_a_promotion_judged_against_another_champion_changes_nothing(good_version, worse_version, lifecycle_env,
                                                                     s3_env, monkeypatch):
    """Two promotions at once: the one finding the champion moved since it judged stops (exit 1 in the
    command) instead of overwriting the other's decision. Called in process to hold the race still."""
    from training_job.promotion.flow import make_champion
    from training_job.training.registry import Registry, RegistryError

    for name, value in lifecycle_env.items():
        monkeypatch.setenv(name, value)
    registry = Registry(client=client(lifecycle_env))
    assert aliases(lifecycle_env)["champion"] == good_version.registry_version
    challenger = registry.get(worse_version.registry_version)
    with pytest.raises(RegistryError, match="champion changed while this promotion ran .*it was none"):
        make_champion(registry, challenger, None, "gate")  # judged when there was no champion yet
    assert aliases(lifecycle_env)["champion"] == good_version.registry_version
    assert pointer(s3_env)["version"] == good_version.version
