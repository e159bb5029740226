"""The rendered chart against the code it runs: one model location (Job == InferenceService),
images == mk/images.mk, every command and env parsed by the real entry points (server,
training, wait_for, smoke_test, batch prediction), thread counts from limits.cpu, MLflow's Host
check, the dataset URI and the batch-prediction Job."""
from __future__ import annotations

import math
import re
from urllib.parse import urlparse

import pytest
import yaml

from tests.support.helm import (
    CHART,
    NAMESPACE,
    SCENARIO_IDS,
    by_kind,
    container,
    containers,
    env_of,
    flag,
    make_variables,
    one,
    pod_views,
    render,
    run,
    server_container,
    template_args,
    views_by_component,
)
from tests.support.servers import REPO

pytestmark = pytest.mark.helm


def downward_api_env(c: dict) -> dict[str, str]:
    """A container's env as the kubelet fills it: plain values, and resourceFieldRef limits.cpu
    resolved from the container's own limit (divisor 1: rounded up to whole CPUs)."""
    env = {}
    for e in c.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        elif ref := (e.get("valueFrom") or {}).get("resourceFieldRef"):
            assert ref["containerName"] == c["name"] and ref["resource"] == "limits.cpu", ref
            limit = str(c["resources"]["limits"]["cpu"])
            cores = float(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)
            env[e["name"]] = str(math.ceil(cores))
    return env


def apply_env(monkeypatch, env: dict[str, str]) -> None:
    for key in ("CPU_LIMIT", "PREPROCESS_WORKERS", "TF_INTRA_OP_THREADS", "TF_INTER_OP_THREADS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


# ---- model location and images --------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIO_IDS)
def test_training_publishes_where_kserve_reads(rendered, scenario):
    objects = rendered[scenario]
    isvc = one(objects, "InferenceService")
    server = server_container(isvc)
    # exactly one version: the one pinned on the pod template (downward API), else the champion pointer's
    storage_uri, _, pin = flag(server["args"], "model_uri").rpartition("/")
    assert re.fullmatch(r"s3://[a-z0-9.-]+/[^/].*[^/]", storage_uri), storage_uri
    assert "STORAGE_URI" not in env_of(server)  # no storage initializer copying the whole prefix
    assert pin == "$(MODEL_VERSION_PIN)"  # both modes (issue 17, item 4: Knative revisions pinned too)

    trainings = views_by_component(objects)["training"]
    assert trainings, "no training Job/CronJob"
    bucket = urlparse(storage_uri).netloc
    for view in trainings:
        if "train" not in {c["name"] for c in containers(view.spec)}:
            continue  # the batch-prediction Job
        assert env_of(container(view, "train"))["MODEL_URI"] == storage_uri, view.where
        assert bucket in flag(container(view, "wait-for-dependencies")["command"], "bucket").split(",")
    for init in isvc["spec"]["predictor"].get("initContainers", []):
        assert flag(init["command"], "model") == storage_uri
    for view in views_by_component(objects).get("minio-provisioning", []):
        assert bucket in env_of(container(view, "mc"))["BUCKETS"].split()


def test_images_match_the_makefile(rendered):
    make = make_variables("REGISTRY", "IMAGE_TAG", "TRAINING_IMAGE", "SERVER_IMAGE")
    assert make["TRAINING_IMAGE"] and make["SERVER_IMAGE"], f"mk/images.mk defines no images: {make}"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == make["IMAGE_TAG"]
    by_component = views_by_component(rendered["defaults"])
    for component, image in (("training", make["TRAINING_IMAGE"]), ("mlflow", make["TRAINING_IMAGE"]),
                             ("predictor", make["SERVER_IMAGE"]), ("tests", make["SERVER_IMAGE"])):
        for view in by_component[component]:
            for c in containers(view.spec):
                assert c["image"] == image, (view.where, c["name"], c["image"], image)


def test_deploy_image_overrides_of_the_makefile_apply(tools):
    """mk/cluster.mk's DEPLOY_IMAGE_ARGS (--set-string <x>.image.registry/tag) reach every container."""
    sets = [f"{c}.image.{k}={v}" for c in ("training", "mlflow", "predictor")
            for k, v in (("registry", "registry.example/acme"), ("tag", "1.2.3"))]
    objects = render(tools, sets=sets)
    ours = [c["image"] for v in pod_views(objects) for c in containers(v.spec) if "minio" not in c["image"]]
    assert ours and all(i.startswith("registry.example/acme/") and i.endswith(":1.2.3") for i in ours), ours
    cluster_mk = (REPO / "mk" / "cluster.mk").read_text()
    for key in ("training.image.registry", "training.image.tag", "mlflow.image.registry", "mlflow.image.tag",
                "predictor.image.registry", "predictor.image.tag"):
        assert key in cluster_mk, key


# ---- the real entry points parse what the chart passes ----------------------------------------

@pytest.mark.parametrize("scenario", ["defaults", "kind", "knative"])
def test_predictor_args_and_env_parse_with_the_server(rendered, scenario, monkeypatch):
    """...and its thread counts follow limits.cpu (finding 5): CPU_LIMIT from the downward API."""
    from model_server.settings import parse_settings

    server = server_container(one(rendered[scenario], "InferenceService"))
    assert server["command"] == ["python", "-m", "model_server"]
    env = downward_api_env(server)
    apply_env(monkeypatch, env)
    settings = parse_settings(server["args"])
    assert settings.model_name == "rakuten-classifier"
    assert settings.model_uri.startswith("s3://rakuten-models/rakuten-classifier/")
    assert settings.max_batch_size == 32 and settings.max_batch_time == pytest.approx(0.005)
    assert settings.limits.image.max_bytes == 10 * 1024 * 1024
    assert str(settings.model_cache_dir).startswith("/tmp/")
    cpus = math.ceil(float(str(server["resources"]["limits"]["cpu"]).rstrip("m")))
    assert "PREPROCESS_WORKERS" not in env, "the pool is sized from the limit, not from a copy of it"
    assert settings.preprocess_workers == settings.tf_intra_op_threads == settings.tf_inter_op_threads
    assert settings.preprocess_workers == min(cpus, len(__import__("os").sched_getaffinity(0)))


def test_thread_counts_follow_a_changed_cpu_limit(tools, monkeypatch):
    """Raise the limit, the pools grow with it (bounded by this machine's CPUs)."""
    from model_server.settings import parse_settings

    server = server_container(one(render(tools, sets=["predictor.resources.limits.cpu=1"]), "InferenceService"))
    apply_env(monkeypatch, downward_api_env(server))
    assert parse_settings(server["args"]).preprocess_workers == 1
    server = server_container(one(render(tools, sets=["predictor.batching.preprocessWorkers=3"]), "InferenceService"))
    apply_env(monkeypatch, downward_api_env(server))
    assert parse_settings(server["args"]).preprocess_workers == 3


def test_training_env_parses_with_the_training_job(rendered, monkeypatch):
    from training_job.__main__ import parse_config

    train = container(views_by_component(rendered["defaults"])["training"][0], "train")
    assert train["command"] == ["python", "-m", "training_job"]
    env = downward_api_env(train)
    assert env["CPU_LIMIT"] == "2"
    apply_env(monkeypatch, env)
    config = parse_config(train.get("args", []))
    assert config.model_uri == env["MODEL_URI"] and str(config.data_dir) == "/data"
    assert config.generate_sample == 2700 and config.epochs == 12 and config.model.image_size == 64
    assert config.experiment == "rakuten-classifier"
    assert config.tf_intra_op_threads == min(2, len(__import__("os").sched_getaffinity(0)))
    assert "/data" in {m["mountPath"] for m in train["volumeMounts"]}


def test_probe_commands_are_modules_of_the_images(rendered):
    """wait_for and the smoke test ship in the images (python -m ...), not in a ConfigMap, and
    every argument the chart passes parses with their own parsers."""
    from model_server import smoke_test
    from rakuten_common import wait_for

    objects = rendered["defaults"]
    assert not [o for o in by_kind(objects, "ConfigMap") if o["metadata"]["name"].endswith("-scripts")]
    waits = [c for v in pod_views(objects) for c in containers(v.spec) if c["name"].startswith("wait-for")]
    assert len(waits) >= 2
    for c in waits:
        assert c["command"][:3] == ["python", "-m", "rakuten_common.wait_for"], c["command"]
        settings = wait_for.from_args(wait_for.WaitSettings, wait_for.build_parser().parse_args(c["command"][3:]))
        assert wait_for.checks_of(settings), c["command"]
        assert not c.get("volumeMounts") or {m["mountPath"] for m in c["volumeMounts"]} == {"/tmp"}
    test_pod = one(objects, "Pod")
    command = test_pod["spec"]["containers"][0]["command"]
    assert command[:3] == ["python", "-m", "model_server.smoke_test"]
    isvc = one(objects, "InferenceService")
    assert flag(command, "url") == f"http://{isvc['metadata']['name']}-predictor.{NAMESPACE}.svc.cluster.local"
    assert flag(command, "model") == smoke_test.SmokeSettings().model


def test_mlflow_server_accepts_the_training_jobs_host_header(rendered):
    """MLflow >= 3.5 refuses unknown Host headers (DNS-rebinding guard): the Service name the
    training job uses must be in --allowed-hosts, checked with MLflow's own matcher."""
    from mlflow.server.security_utils import is_allowed_host_header

    objects = rendered["defaults"]
    mlflow = container(views_by_component(objects)["mlflow"][0], "mlflow")
    allowed_hosts = flag(mlflow["args"], "allowed-hosts").split(",")
    tracking = urlparse(env_of(container(views_by_component(objects)["training"][0], "train"))["MLFLOW_TRACKING_URI"])
    service = next(o for o in by_kind(objects, "Service") if o["metadata"]["name"] == tracking.hostname)
    assert tracking.port in [p["port"] for p in service["spec"]["ports"]]
    for host in (tracking.netloc, f"{tracking.hostname}.{NAMESPACE}.svc.cluster.local:{tracking.port}",
                 "localhost:30500", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed_hosts, host), host
    assert not is_allowed_host_header(allowed_hosts, "evil.example.com")
    assert "--serve-artifacts" in mlflow["args"]
    assert flag(mlflow["args"], "artifacts-destination") == "s3://rakuten-mlflow/artifacts"
    assert flag(mlflow["args"], "backend-store-uri").startswith("sqlite:////mlflow/")


# ---- datasets in S3 and batch predictions (issue 12's chart side) -------------------------------

def test_training_data_uri_becomes_data_dir_and_its_bucket_is_waited_for(tools):
    objects = render(tools, sets=["training.data.uri=s3://rakuten-datasets/rakuten"])
    for view in views_by_component(objects)["training"]:
        env = env_of(container(view, "train"))
        assert env["DATA_DIR"] == "s3://rakuten-datasets/rakuten" and "GENERATE_SAMPLE_ROWS" not in env
        assert env["CACHE_DIR"].startswith("/data/")
        buckets = flag(container(view, "wait-for-dependencies")["command"], "bucket").split(",")
        assert buckets == ["rakuten-models", "rakuten-datasets"]
    default = env_of(container(views_by_component(render(tools))["training"][0], "train"))
    assert default["DATA_DIR"] == "/data" and default["GENERATE_SAMPLE_ROWS"] == "2700"
    assert default["CACHE_DIR"] == "/data/cache"  # decoded images on the data volume, not in /tmp


def test_batch_predict_job_runs_the_module_with_the_training_user(tools):
    sets = ["batchPredict.enabled=true", "training.data.uri=s3://rakuten-datasets/rakuten", "batchPredict.topK=5"]
    objects = render(tools, sets=sets)
    (job,) = [o for o in by_kind(objects, "Job") if "batch-predict" in o["metadata"]["name"]]
    spec = job["spec"]["template"]["spec"]
    main = spec["containers"][0]
    assert main["command"] == ["python", "-m", "training_job.batch_predict"]
    assert flag(main["args"], "model-uri") == "s3://rakuten-models/rakuten-classifier"
    assert flag(main["args"], "data-dir") == "s3://rakuten-datasets/rakuten"
    assert flag(main["args"], "output") == "s3://rakuten-datasets/predictions/rakuten-1.csv"
    assert flag(main["args"], "top-k") == "5"
    (wait,) = spec["initContainers"]
    assert flag(wait["command"], "model") == "s3://rakuten-models/rakuten-classifier"
    secrets = {e["valueFrom"]["secretKeyRef"]["name"] for c in containers(spec) for e in c["env"]
               if (e.get("valueFrom") or {}).get("secretKeyRef")}
    assert secrets == {"rakuten-rakuten-serving-s3-training"}
    assert downward_api_env(main)["CPU_LIMIT"] == "2"
    # its own component: the training pods' egress policy, not their rollout one (issue 17, item 9)
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] == "batch-predict"


def test_batch_predict_needs_data_in_s3(tools):
    done = run([tools.helm, *template_args(sets=["batchPredict.enabled=true"])])
    assert done.returncode != 0 and "batchPredict.enabled needs the test data in S3" in done.stderr
