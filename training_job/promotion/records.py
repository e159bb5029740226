"""Where every promotion decision is written down.

- One MLflow run per decision in the experiment ``rakuten-classifier-promotions``: the action
  (gate, force, rollback), the decision and its one-line reason as tags, both registry
  versions, the policy and the evaluation data as parameters, both weighted F1 and every
  per-class recall as metrics, then the rollout's outcome and duration.
- Tags ``gate.*`` on both registry versions (decision, reason, both figures, the run id), and
  ``promoted_at``/``promoted_by``/``previous_champion`` on a version that becomes champion.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from rakuten_common.champion import utc_now
from training_job.promotion.gate import GatePolicy, Score
from training_job.training.registry import RegisteredVersion, Registry

logger = logging.getLogger("rakuten.promote")

EXPERIMENT = "rakuten-classifier-promotions"


@dataclass
class Judgement:
    """What one run of the promotion command decided, and on what."""

    action: str                               # gate, force, rollback
    decision: str                             # promoted, refused, already_champion
    reason: str
    candidate: RegisteredVersion              # the challenger, or the rollback target
    champion: RegisteredVersion | None        # the champion before the decision
    candidate_score: Score | None = None
    champion_score: Score | None = None
    policy: GatePolicy | None = None
    data_dir: str = ""
    data_fingerprint: str = ""


def _figures(judgement: Judgement) -> dict[str, float]:
    figures = {}
    for role, score in (("challenger", judgement.candidate_score), ("champion", judgement.champion_score)):
        if score is None:
            continue
        figures.update({f"{role}_weighted_f1": score.weighted_f1, f"{role}_accuracy": score.accuracy,
                        f"{role}_macro_f1": score.macro_f1,
                        **{f"{role}_recall_{code}": recall for code, recall in score.recall.items()}})
    if judgement.candidate_score and judgement.champion_score:
        figures["weighted_f1_delta"] = judgement.candidate_score.weighted_f1 - judgement.champion_score.weighted_f1
    return figures


def record(judgement: Judgement, registry: Registry, experiment: str = EXPERIMENT) -> str | None:
    """The MLflow run and the registry tags of one decision; returns the run id."""
    import mlflow

    champion = judgement.champion
    run_id = None
    try:
        mlflow.set_experiment(experiment)
        name = f"{judgement.action} {judgement.candidate.model_version}: {judgement.decision}"
        with mlflow.start_run(run_name=name) as run:
            run_id = run.info.run_id
            params: dict[str, object] = {"action": judgement.action, "candidate_registry_version": judgement.candidate.number,
                      "candidate_model_version": judgement.candidate.model_version,
                      "champion_registry_version": champion.number if champion else "none",
                      "champion_model_version": champion.model_version if champion else "none",
                      "data_dir": judgement.data_dir, "dataset_fingerprint": judgement.data_fingerprint}
            if judgement.policy:
                params.update({"tolerance": judgement.policy.tolerance, "recall_floor": judgement.policy.recall_floor,
                               "min_class_support": judgement.policy.min_class_support})
            if judgement.candidate_score:
                params["evaluation_rows"] = judgement.candidate_score.rows
            mlflow.log_params(params)
            mlflow.set_tags({"decision": judgement.decision, "reason": judgement.reason[:5000],
                             "registered_model": registry.name})
            mlflow.log_metrics(_figures(judgement))
    except Exception as exc:
        logger.warning("could not record the decision in MLflow experiment %s: %s", experiment, exc)
    tags = {"gate.action": judgement.action, "gate.decision": judgement.decision,
            "gate.reason": judgement.reason[:5000], "gate.decided_at": utc_now(), "gate.mlflow_run_id": run_id or "",
            "gate.challenger_version": judgement.candidate.number,
            "gate.champion_version": champion.number if champion else "none"}
    for role, score in (("challenger", judgement.candidate_score), ("champion", judgement.champion_score)):
        if score is not None:
            tags[f"gate.{role}_weighted_f1"] = f"{score.weighted_f1:.4f}"
    numbers = [judgement.candidate.number]
    if champion and champion.number != judgement.candidate.number:
        numbers.append(champion.number)
    for number in numbers:
        registry.set_tags(number, tags)
    return run_id


def record_rollout(run_id: str | None, outcome: str, seconds: float, detail: str) -> None:
    """Add the rollout's outcome to the decision's MLflow run."""
    if not run_id:
        return
    from mlflow import MlflowClient

    try:
        client = MlflowClient()
        client.set_tag(run_id, "rollout", outcome)
        client.set_tag(run_id, "rollout_detail", detail[:5000])
        client.log_metric(run_id, "rollout_seconds", seconds)
    except Exception as exc:
        logger.warning("could not record the rollout in MLflow run %s: %s", run_id, exc)
