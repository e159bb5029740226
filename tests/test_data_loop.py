"""The production data loop after capture (issue 19, parts 2-4), against the real S3 API server
(moto_server): the review queue, corrected labels joined with captures into an immutable dataset
increment (manifest last), and training on the base plus increments with the lineage in MLflow.

Captures are written here with the shared format (``rakuten_common.captures``), as the
predictor writes them, from the sample's test products."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from rakuten_common.captures import (
    CONTENT_HASHES,
    CaptureRecord,
    image_key,
    image_sha256,
    records_key,
    text_sha256,
    write_capture_file,
)
from rakuten_common.data_layout import TEST, TRAIN
from rakuten_common.labels import PRDTYPECODES
from tests.support.commands import run_module, run_training
from tests.support.s3 import BUCKET, DATASETS_BUCKET
from training_job import sample_data
from training_job.data import feedback, increments
from training_job.data.dataset import read_split
from training_job.data.settings import AddLabelsConfig
from training_job.upload_data import upload_dataset

pytestmark = pytest.mark.e2e

DAY = "2026-12-01"


@pytest.fixture(scope="module")
def products(tmp_path_factory) -> Path:
    """A small sample: the base (27 classes, 6+ rows each) and 24 test products to capture."""
    return sample_data.generate(tmp_path_factory.mktemp("loop-sample"), rows=60, test_rows=24, seed=5,
                                image_size=64)


def sample_products(data_dir: Path) -> list[dict]:
    table = read_split(data_dir, TEST)
    return [{"designation": d, "description": s, "productid": int(p),
             "image": TEST.image_path(data_dir, i, p).read_bytes()}
            for d, s, p, i in zip(table["designation"], table["description"], table["productid"], table["imageid"])]


def top_k(code: int, confidence: float) -> list[tuple[int, float]]:
    others = [c for c in PRDTYPECODES if c != code][:2]
    rest = (1 - confidence) / 2
    return [(code, confidence), (others[0], min(rest, confidence)), (others[1], min(rest, confidence))]


class Captures:
    """A capture prefix in the S3 server, written as the predictor writes it."""

    def __init__(self, client, prefix: str):
        self.prefix = prefix
        self.uri = f"s3://{DATASETS_BUCKET}/{prefix}"
        self.client = client
        self.seq = 0

    def put(self, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=DATASETS_BUCKET, Key=f"{self.prefix}/{key}", Body=body)

    def record(self, product: dict, code: int, confidence: float, request_id: str, productid: bool = True,
               day: str = DAY, content: str = "full", store_image: bool = True) -> CaptureRecord:
        sha = image_sha256(product["image"])
        if store_image and content == "full":
            self.put(image_key(sha), product["image"])
        full = content == "full"
        return CaptureRecord(request_id, product["productid"] if productid else None,
                             product["designation"] if full else None, product["description"] if full else None,
                             text_sha256(product["designation"], product["description"]), sha, "20261130T000000Z",
                             tuple(top_k(code, confidence)), f"{day}T10:00:{self.seq % 60:02d}.000Z", content)

    def write_file(self, records: list[CaptureRecord], day: str = DAY, cut: bool = False) -> str:
        data = write_capture_file(records)
        if cut:
            data = data[: len(data) * 2 // 3]
        key = records_key(day, "predictor-abc", self.seq)
        self.seq += 1
        self.put(key, data)
        return key


def command(module: str, args: list[str], env: dict[str, str], cwd: Path):
    """``python -m <module> <args>`` with the S3 settings ``env``, in ``cwd``."""
    return run_module(module, *args, env=env, cwd=cwd)


def log(done) -> str:
    """A command's whole output (its log lines go to stdout, tracebacks to stderr)."""
    return done.stdout + done.stderr


def read_csv(path: Path) -> list[dict]:
    with Path(path).open(newline="") as f:
        return list(csv.DictReader(f))


def test_review_queue_least_confident_first_with_control_sample_and_per_class_cap(products, s3_env, s3_client,
                                                                                  tmp_path):
    rows = sample_products(products)
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    confidences = [0.05 * (i + 1) for i in range(16)] + [0.9, 0.91, 0.92, 0.93, 0.94, 0.95]  # 10 at <= 0.5
    records = [captures.record(rows[i], PRDTYPECODES[i % 3], c, f"req-{i}") for i, c in enumerate(confidences)]
    records.append(captures.record(rows[22], 10, 0.01, "req-hashes", content=CONTENT_HASHES))  # not reviewable
    captures.write_file(records[:12])
    captures.write_file(records[12:])
    captures.write_file([captures.record(rows[23], 10, 0.02, "req-old", day="2026-11-20")], day="2026-11-20")

    output = tmp_path / "queue.csv"
    args = ["--captures", captures.uri, "--since", DAY, "--per-class", "3", "--control", "4", "--seed", "1",
            "--output", str(output)]
    done = command("training_job.review_queue", args, s3_env.env, tmp_path)
    assert done.returncode == 0, log(done)[-3000:]
    queue = read_csv(output)
    uncertain = [r for r in queue if r["sample"] == "uncertain"]
    control = [r for r in queue if r["sample"] == "control"]
    probabilities = [float(r["probability_1"]) for r in uncertain]
    assert probabilities == sorted(probabilities) and max(probabilities) <= 0.5  # least confident first
    per_code = {code: sum(r["code_1"] == code for r in uncertain) for code in {r["code_1"] for r in uncertain}}
    assert len(uncertain) == 9 and max(per_code.values()) == 3, per_code  # 10 uncertain, 3 codes capped at 3
    assert len(control) == 4 and all(float(r["probability_1"]) > 0.5 for r in control)
    assert "req-hashes" not in {r["request_id"] for r in queue} and "req-old" not in {r["request_id"] for r in queue}
    first = queue[0]
    assert first["request_id"] == "req-0" and first["productid"] == str(rows[0]["productid"])
    assert first["designation"] == rows[0]["designation"] and first["image_key"] == image_key(
        image_sha256(rows[0]["image"])) and first["model_version"] == "20261130T000000Z"
    assert first["code_2"] and first["probability_3"] and first["prdtypecode"] == ""
    assert "1 hashes-only (left out)" in log(done) and "1 uncertain over the per-class cap" in log(done)
    again = tmp_path / "again.csv"
    assert command("training_job.review_queue", [*args[:-1], str(again)], s3_env.env, tmp_path).returncode == 0
    assert again.read_text() == output.read_text()  # the control sample is seeded


@pytest.fixture
def dataset(products, s3_env, tmp_path) -> str:
    uri = f"s3://{DATASETS_BUCKET}/dataset-{tmp_path.name}"
    upload_dataset(products, uri, workers=4)
    return uri


def increment_objects(client, dataset_uri: str, name: str) -> dict[str, int]:
    bucket, prefix = dataset_uri[5:].split("/", 1)
    listing = client.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/increments/{name}/")
    return {o["Key"].rsplit(f"increments/{name}/", 1)[1]: o["Size"] for o in listing.get("Contents", [])}


def write_labels(path: Path, rows: list[dict]) -> Path:
    columns = ["productid", "request_id", "image_key", "prdtypecode"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in columns} for row in rows)
    return path


def test_add_labels_joins_writes_an_increment_and_counts_every_skip(products, dataset, s3_env, s3_client, tmp_path):
    rows = sample_products(products)
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    records = [captures.record(rows[i], 10, 0.3, f"req-{i}") for i in range(6)]
    records.append(captures.record(rows[6], 10, 0.3, "req-no-productid", productid=False))
    records.append(captures.record(rows[7], 10, 0.3, "req-hashes", content=CONTENT_HASHES))
    records.append(captures.record(rows[8], 10, 0.3, "req-no-image", store_image=False))
    whole = captures.write_file(records)
    cut_records = [captures.record(rows[9 + i % 15], 10, 0.3, f"req-cut-{i}") for i in range(40)]
    cut = captures.write_file(cut_records, cut=True)  # a file cut in the middle: its complete lines count
    pid = [r["productid"] for r in rows]
    labels = write_labels(tmp_path / "labels.csv", [
        {"productid": pid[0], "prdtypecode": "40"},
        {"productid": pid[1], "prdtypecode": "1280"},
        {"productid": pid[2], "prdtypecode": "2583"},
        {"productid": pid[2], "prdtypecode": "2585"},                # labelled twice: the later row wins
        {"productid": pid[3], "prdtypecode": "9999"},                # unknown code
        {"productid": pid[4], "prdtypecode": ""},                    # not labelled by the reviewer
        {"productid": "123456789", "prdtypecode": "10"},             # no such capture
        {"productid": "12ab", "prdtypecode": "10"},                  # not an id
        {"request_id": "req-no-productid", "prdtypecode": "60"},     # no productid: by request id
        {"productid": pid[7], "prdtypecode": "10"},                  # hashes-only capture
        {"productid": pid[8], "prdtypecode": "10"},                  # image never stored
        {"productid": pid[9], "prdtypecode": "1560"},                # first record of the cut file
    ])
    args = ["--captures", captures.uri, "--labels", str(labels), "--dataset", dataset,
            "--increment", "20261201T120000Z",
            "--cache-dir", str(tmp_path / "cache")]
    done = command("training_job.add_labels", args, s3_env.env, tmp_path)
    assert done.returncode == 0, log(done)[-3000:]
    assert "Traceback" not in log(done)
    assert "truncated" in log(done) and "Increment s3://" in log(done), log(done)[-3000:]

    objects = increment_objects(s3_client, dataset, "20261201T120000Z")
    assert {TRAIN.features_csv, TRAIN.labels_csv, increments.MANIFEST} <= set(objects)
    local = tmp_path / "increment"
    client = s3_client
    bucket, prefix = dataset[5:].split("/", 1)
    for key in objects:
        (local / key).parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, f"{prefix}/increments/20261201T120000Z/{key}", str(local / key))
    table = read_split(local, TRAIN)
    labelled = dict(zip(table["productid"], table["prdtypecode"]))
    synthetic = feedback.synthetic_productid(records[6])
    assert labelled == {pid[0]: 40, pid[1]: 1280, pid[2]: 2585, synthetic: 60, pid[9]: 1560}
    assert feedback.SYNTHETIC_BASE <= synthetic < 2 * feedback.SYNTHETIC_BASE
    for imageid, productid in zip(table["imageid"], table["productid"]):
        assert (local / TRAIN.image_key(imageid, productid)).is_file()
    assert table.set_index("productid").loc[pid[0], "designation"] == rows[0]["designation"]

    manifest = json.loads((local / increments.MANIFEST).read_text())
    assert manifest["rows_added"] == 5 and manifest["label_rows"] == 12
    assert manifest["rows_skipped"] == {feedback.SUPERSEDED: 1, feedback.UNKNOWN_CODE: 1, feedback.NO_LABEL: 1,
                                        feedback.NO_CAPTURE: 1, feedback.BAD_ID: 1, feedback.HASHES_ONLY: 1,
                                        feedback.NO_IMAGE: 1}
    assert manifest["source_capture_files"] == sorted([whole, cut])
    assert manifest["capture_problems"] == {"truncated files": 1}
    assert manifest["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert manifest["productids_synthesised"] == 1 and manifest["code_version"] not in ("", None)
    features_sha256 = hashlib.sha256((local / TRAIN.features_csv).read_bytes()).hexdigest()
    assert manifest["files"][TRAIN.features_csv] == features_sha256

    # written once, never changed: the same name again is refused, the increment stays as it was
    again = command("training_job.add_labels", args, s3_env.env, tmp_path)
    assert again.returncode == 1 and "immutable" in log(again) and "Traceback" not in log(again)
    assert increment_objects(s3_client, dataset, "20261201T120000Z") == objects


def test_bad_labels_files_are_one_line_errors(products, dataset, s3_env, s3_client, tmp_path):
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    captures.write_file([captures.record(sample_products(products)[0], 10, 0.3, "req-0")])
    cases = {"no such file": (tmp_path / "absent.csv", "cannot be read"),
             "no label column": (write_text(tmp_path / "a.csv", "productid,code\n1,10\n"), "no prdtypecode column"),
             "no id": (write_text(tmp_path / "b.csv", "designation,prdtypecode\nx,10\n"), "productid or a request_id"),
             "nothing usable": (write_text(tmp_path / "c.csv", "productid,prdtypecode\n1,99\n"), "nothing to add")}
    for labels, message in cases.values():
        config = AddLabelsConfig(captures=captures.uri, labels=labels, dataset=dataset, cache_dir=tmp_path / "cache")
        with pytest.raises(feedback.FeedbackError, match=message):
            feedback.write_increment(config, "test")
    # the command: one ERROR line, exit 1, no traceback
    done = command("training_job.add_labels", ["--captures", captures.uri, "--labels", str(tmp_path / "c.csv"),
                                               "--dataset", dataset], s3_env.env, tmp_path)
    errors = [line for line in log(done).splitlines() if " ERROR " in line]
    assert done.returncode == 1 and len(errors) == 1 and "nothing to add" in errors[0], log(done)
    assert "1 unknown prdtypecode" in errors[0] and "Traceback" not in log(done)
    assert not increments.complete_increments(dataset)


def write_text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_increment_failing_the_quality_checks_is_not_written(products, dataset, s3_env, s3_client, tmp_path):
    rows = sample_products(products)
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    broken = [{**row, "image": row["image"][:200]} for row in rows[:4]]  # JPEG headers without pixels
    captures.write_file([captures.record(row, 10, 0.3, f"req-{i}") for i, row in enumerate(broken)])
    labels = write_labels(tmp_path / "labels.csv", [{"productid": r["productid"], "prdtypecode": "10"} for r in broken])
    done = command("training_job.add_labels", ["--captures", captures.uri, "--labels", str(labels), "--dataset",
                                                  dataset, "--increment", "broken"], s3_env.env, tmp_path)
    assert done.returncode == 1 and "refused by the data-quality checks" in log(done), log(done)[-3000:]
    assert "unreadable images" in log(done) and "Traceback" not in log(done)
    assert increment_objects(s3_client, dataset, "broken") == {}


def add_increment(captures: Captures, dataset: str, name: str, labels: dict[int, int], products: list[dict],
                  tmp_path: Path) -> dict:
    """An increment labelling ``products`` (captured under ``captures``) with ``labels`` (productid -> code)."""
    records = [captures.record(p, 10, 0.4, f"{name}-{p['productid']}") for p in products]
    captures.write_file(records)
    path = write_labels(tmp_path / f"{name}.csv", [{"productid": p, "prdtypecode": c} for p, c in labels.items()])
    config = AddLabelsConfig(captures=captures.uri, labels=path, dataset=dataset, increment=name,
                             cache_dir=tmp_path / "cache")
    return feedback.write_increment(config, "test").manifest


def test_crash_before_the_manifest_leaves_nothing_that_is_read(products, dataset, s3_env, s3_client, tmp_path):
    rows = sample_products(products)
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    add_increment(captures, dataset, "20261201T000000Z", {rows[0]["productid"]: 40}, rows[:1], tmp_path)
    # a writer that died after the images and CSVs: every file but the manifest
    bucket, prefix = dataset[5:].split("/", 1)
    client = s3_client
    for key in increment_objects(s3_client, dataset, "20261201T000000Z"):
        if key != increments.MANIFEST:
            client.copy_object(Bucket=bucket, Key=f"{prefix}/increments/20261202T000000Z/{key}",
                               CopySource={"Bucket": bucket, "Key": f"{prefix}/increments/20261201T000000Z/{key}"})
    assert increments.complete_increments(dataset) == ["20261201T000000Z"]
    folder, lineage = increments.training_data(dataset, tmp_path / "cache")
    assert lineage.increments == ["20261201T000000Z"]
    assert len(read_split(folder, TRAIN)) == lineage.rows == len(read_split(products, TRAIN)) + 1
    # and its name stays taken: the half increment is never completed in place
    with pytest.raises(feedback.IncrementExists):
        add_increment(captures, dataset, "20261202T000000Z", {rows[1]["productid"]: 40}, rows[1:2], tmp_path)


def test_training_on_base_and_two_increments_latest_label_wins_lineage_in_mlflow(products, dataset, s3_env,
                                                                                 s3_client, tmp_path):
    rows = sample_products(products)
    base = read_split(products, TRAIN)
    base_product, base_code = int(base["productid"].iloc[0]), int(base["prdtypecode"].iloc[0])
    new_code = next(c for c in PRDTYPECODES if c != base_code)
    base_row = {"designation": base["designation"].iloc[0], "description": base["description"].iloc[0],
                "productid": base_product,
                "image": TRAIN.image_path(products, base["imageid"].iloc[0], base_product).read_bytes()}
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    first = {r["productid"]: PRDTYPECODES[i] for i, r in enumerate(rows[:6])}
    add_increment(captures, dataset, "20261201T000000Z", first, rows[:6], tmp_path)
    second = {rows[0]["productid"]: 2905, rows[1]["productid"]: first[rows[1]["productid"]],  # relabel, confirm
              rows[6]["productid"]: 2583, base_product: new_code}                             # new, relabel base
    add_increment(captures, dataset, "20261202T000000Z", second, [rows[0], rows[1], rows[6], base_row], tmp_path)

    # de-duplication by productid: the latest label wins, counted
    folder, lineage = increments.training_data(dataset, tmp_path / "cache", "all")
    table = read_split(folder, TRAIN)
    assert table["productid"].is_unique and len(table) == len(base) + 7 == lineage.rows
    labels = dict(zip(table["productid"], table["prdtypecode"]))
    assert labels[rows[0]["productid"]] == 2905 and labels[base_product] == new_code
    assert labels[rows[2]["productid"]] == first[rows[2]["productid"]] and labels[rows[6]["productid"]] == 2583
    assert (lineage.replaced, lineage.relabelled) == (3, 2)
    until_first = increments.training_data(dataset, tmp_path / "cache", "20261201T000000Z")[1]
    assert until_first.increments == ["20261201T000000Z"] and until_first.rows == len(base) + 6
    none = increments.training_data(dataset, tmp_path / "cache", "none")[1]
    assert none.increments == [] and none.rows == len(base)

    workdir = tmp_path / "train"
    workdir.mkdir()
    done = run_training(dataset, f"s3://{BUCKET}/loop-{tmp_path.name}", s3_env.env, workdir,
                        extra=["--epochs", "1", "--image-size", "32", "--max-tokens", "500"])
    assert done.returncode == 0, log(done)[-3000:]
    assert "increments 20261201T000000Z, 20261202T000000Z" in log(done) and "3 earlier rows replaced" in log(done)
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    [run] = client.search_runs([client.get_experiment_by_name("rakuten-classifier").experiment_id])
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"base", "20261201T000000Z", "20261202T000000Z"}
    assert json.loads(inputs["20261202T000000Z"].dataset.source)["uri"] == f"{dataset}/increments/20261202T000000Z"
    assert json.loads(inputs["base"].dataset.source)["uri"] == dataset
    assert {name: {t.key: t.value for t in i.tags}["rows"] for name, i in inputs.items()} == {
        "base": str(len(base)), "20261201T000000Z": "6", "20261202T000000Z": "4"}
    assert all(i.dataset.digest for i in inputs.values())
    assert run.data.tags["data_increments"] == "20261201T000000Z,20261202T000000Z"
    assert run.data.metrics["data_rows_replaced"] == 3 and run.data.metrics["data_rows"] == len(base) + 7


def test_gzip_cut_capture_file_in_the_review_queue(products, s3_env, s3_client, tmp_path):
    captures = Captures(s3_client, f"captures-{tmp_path.name}")
    rows = sample_products(products)
    captures.write_file([captures.record(row, 10, 0.2, f"req-{i}") for i, row in enumerate(rows)], cut=True)
    output = tmp_path / "queue.csv"
    done = command("training_job.review_queue", ["--captures", captures.uri, "--since", DAY, "--per-class", "0",
                                                    "--output", str(output)], s3_env.env, tmp_path)
    assert done.returncode == 0 and "1 truncated files" in log(done) and "Traceback" not in log(done)
    assert 0 < len(read_csv(output)) < len(rows)  # the complete records before the cut


def test_increment_selection_is_checked(capsys):
    from training_job.__main__ import parse_config

    assert parse_config(["--increments", "ALL"]).increments == "all"
    assert parse_config(["--increments", "20261201T000000Z"]).increments == "20261201T000000Z"
    with pytest.raises(SystemExit):
        parse_config(["--increments", "../base"])
    assert "not none, all or an increment name" in capsys.readouterr().err
    with pytest.raises(increments.DatasetError, match="no complete increment of that name"):
        increments.select(["20261201T000000Z"], "20261130T000000Z")
    assert increments.select(["a", "b", "c"], "b") == ["a", "b"] and increments.select(["a"], "none") == []
