"""The promotion flow behind ``python -m training_job.promote``: judge, promote, roll out, roll back.

Order of a promotion: the registry alias ``champion`` moves first (unless another promotion
moved it since this one read it), then the champion pointer is written next to the version (if
that write fails the alias is put back), then the rollout.
A failed rollout restores the previous champion the same way (alias, then pointer) and puts the
predictor's annotation back. Every step is logged; decisions go to ``training_job.promotion.records``
and, with an InferenceService, to Kubernetes Events on it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from rakuten_common.bundle import MANIFEST_FILE
from rakuten_common.champion import (
    ChampionPointer,
    PointerError,
    utc_now,
    write_pointer,
)
from rakuten_common.errors import ArtifactError, RakutenError
from rakuten_common.model_uri import split_version_uri
from rakuten_common.options import from_environment
from rakuten_common.storage import open_store
from training_job.config import TrainConfig
from training_job.promotion import kserve_status, records
from training_job.promotion.gate import GatePolicy
from training_job.promotion.records import Judgement
from training_job.promotion.rollout import (
    Rollout,
    RolloutConfig,
    RolloutError,
    RolloutResult,
)
from training_job.promotion.settings import EVAL_BATCH_SIZE, PromoteConfig
from training_job.training.registry import (
    CHALLENGER,
    CHAMPION,
    RegisteredVersion,
    Registry,
    RegistryError,
)

logger = logging.getLogger("rakuten.promote")

#: ``python -m training_job.promote``'s exit codes (its docstring says what each means).
EXIT_OK, EXIT_ERROR, EXIT_REFUSED, EXIT_ROLLED_BACK = 0, 1, 3, 4
TERMINATION_LOG = Path("/dev/termination-log")


@dataclass
class Outcome:
    exit_code: int
    summary: str


def write_termination_message(text: str) -> None:
    """The outcome where ``kubectl describe pod`` shows it (the container's termination message)."""
    try:
        if TERMINATION_LOG.exists() and os.access(TERMINATION_LOG, os.W_OK):
            TERMINATION_LOG.write_text(text[:4000] + "\n")
    except OSError:
        pass


def make_champion(registry: Registry, target: RegisteredVersion, previous: RegisteredVersion | None,
                  promoted_by: str) -> None:
    """Alias ``champion`` -> ``target``, then the pointer next to its version (the alias put back if that fails).

    ``previous`` is the champion this decision was made against: if another promotion has moved
    the alias since (judging takes minutes), nothing is changed and ``RegistryError`` says so.
    """
    prefix, version = split_version_uri(target.storage_uri)
    store = open_store(prefix)
    if not store.exists(f"{version}/{MANIFEST_FILE}"):
        raise ArtifactError(f"{target} is not a complete version: no {MANIFEST_FILE} in {target.storage_uri}")
    current = registry.by_alias(CHAMPION)
    if (current and current.number) != (previous and previous.number):
        raise RegistryError(f"the champion changed while this promotion ran (it was {previous or 'none'}, it is "
                            f"now {current or 'none'}): nothing changed; run the promotion again to judge "
                            "against the new champion")
    registry.set_alias(CHAMPION, target.number)
    try:
        write_pointer(store, ChampionPointer(version, target.storage_uri, target.number, utc_now(), promoted_by,
                                             registry.name))
    except PointerError:
        if previous is not None:
            registry.set_alias(CHAMPION, previous.number)
        raise
    registry.set_tags(target.number, {"promoted_at": utc_now(), "promoted_by": promoted_by,
                                      "previous_champion": previous.number if previous else "none"})
    logger.info("Champion is now %s (%s); pointer %s/champion.json", target, promoted_by, prefix)


def judge(config: PromoteConfig, challenger: RegisteredVersion, champion: RegisteredVersion | None) -> Judgement:
    """Re-score both bundles on the evaluation split and apply the gate."""
    from rakuten_common.artifacts import fetch
    from rakuten_common.labels import LabelMap
    from training_job.promotion.gate import (
        decide,
        evaluation_set,
        predict_codes,
        score_pair,
    )

    policy = GatePolicy(config.tolerance, config.recall_floor, config.min_class_support)
    rows = evaluation_set(config.data_dir, config.cache_dir, config.eval_fraction, config.increments)
    predicted = {}
    for role, version in (("challenger", challenger), ("champion", champion)):
        if version is None:
            continue
        bundle, _ = fetch(version.storage_uri, Path(config.cache_dir) / "models", progress=logger.debug)
        logger.info("Scoring the %s, %s, on %d evaluation rows", role, version, len(rows))
        predicted[role] = predict_codes(bundle, rows, EVAL_BATCH_SIZE, config.workers)
    challenger_score, champion_score = score_pair(rows, predicted["challenger"], predicted.get("champion"),
                                                  LabelMap())
    decision = decide(challenger_score, champion_score, policy)
    return Judgement("gate", "promoted" if decision.promote else "refused", decision.reason, challenger, champion,
                     challenger_score, champion_score, policy, config.data_dir, rows.fingerprint)


def _rollout(rollout: Rollout, registry: Registry, judgement: Judgement, run_id: str | None) -> Outcome:
    """Roll the new champion out; on failure restore the previous one everywhere."""
    target, previous = judgement.candidate, judgement.champion
    touched = True
    try:
        result = rollout.apply(target.model_version)
    except RolloutError as exc:  # the InferenceService could not even be read: nothing changed there
        result, touched = RolloutResult(False, target.model_version, None, detail=str(exc)), False
    if result.ok:
        rollout.event("ModelRolledOut", f"{target} serving after {result.seconds:.0f} s: {result.detail}")
        records.record_rollout(run_id, "succeeded", result.seconds, result.detail)
        registry.set_tags(target.number, {"rollout": "succeeded", "rollout_seconds": f"{result.seconds:.1f}"})
        return Outcome(EXIT_OK, f"promoted and rolled out {target} in {result.seconds:.0f} s")
    rollout.event("RolloutFailed", f"{target}: {result.detail}", warning=True)
    registry.set_tags(target.number, {"rollout": "failed", "rollout_detail": result.detail[:5000]})
    if previous is None:
        records.record_rollout(run_id, "failed", result.seconds, result.detail)
        return Outcome(EXIT_ROLLED_BACK, f"rollout of {target} failed and there is no previous champion "
                                         f"to restore: {result.detail}")
    logger.warning("Restoring the previous champion %s", previous)
    make_champion(registry, previous, target, "automatic rollback")
    if not touched:
        records.record_rollout(run_id, "failed", 0.0, result.detail)
        return Outcome(EXIT_ROLLED_BACK, f"rollout of {target} failed ({result.detail}); {previous} restored")
    back = rollout.restore(result.previous, previous.model_version)
    detail = f"rollout of {target} failed ({result.detail}); {previous} restored: {back.detail}"
    rollout.event("ModelRolledBack", detail, warning=True)
    records.record_rollout(run_id, "rolled_back" if back.ok else "rollback_failed", result.seconds + back.seconds,
                              detail)
    if not back.ok:
        logger.error("the rollback did not come back Ready: the InferenceService needs a look")
        return Outcome(EXIT_ERROR, detail)
    return Outcome(EXIT_ROLLED_BACK, detail)


def _converge(rollout: Rollout, champion: RegisteredVersion) -> Outcome:
    """The champion is unchanged; make sure the InferenceService does not pin another version."""
    pinned = kserve_status.pinned_version(rollout.read())
    if pinned in (None, champion.model_version):  # unpinned pods load the pointer: the champion
        logger.info("Nothing to do: %s is already champion and served", champion)
        return Outcome(EXIT_OK, f"{champion} is already champion")
    logger.warning("%s is champion but the InferenceService pins %s: rolling the champion out", champion, pinned)
    result = rollout.apply(champion.model_version)
    if result.ok:
        rollout.event("ModelRolledOut", f"{champion} serving after {result.seconds:.0f} s: {result.detail}")
        return Outcome(EXIT_OK, f"rolled out {champion} in {result.seconds:.0f} s")
    rollout.event("RolloutFailed", f"{champion}: {result.detail}", warning=True)
    back = rollout.restore(result.previous, pinned)
    return Outcome(EXIT_ROLLED_BACK if back.ok else EXIT_ERROR,
                   f"rollout of {champion} failed ({result.detail}); pin {pinned} restored: {back.detail}")


def _decide(config: PromoteConfig, registry: Registry) -> Judgement:
    champion = registry.by_alias(CHAMPION)
    if config.to:
        target = registry.find(config.to)
        if champion and champion.number == target.number:
            return Judgement("rollback", "already_champion", f"{target} is already champion", target, champion)
        return Judgement("rollback", "promoted", f"rollback to {target} requested (champion was "
                                                 f"{champion or 'none'})", target, champion)
    challenger = registry.by_alias(CHALLENGER)
    if challenger is None:
        raise RegistryError(f"{registry.name} has no {CHALLENGER} version: train a model first")
    if champion and champion.number == challenger.number:
        return Judgement("gate", "already_champion", f"{challenger} is already champion", challenger, champion)
    if config.force:
        return Judgement("force", "promoted", f"forced promotion of {challenger} over {champion or 'no champion'}",
                         challenger, champion)
    return judge(config, challenger, champion)


def promote(config: PromoteConfig, rollout_config: RolloutConfig, registry: Registry | None = None) -> Outcome:
    try:
        registry = registry or Registry()
        judgement = _decide(config, registry)
        rollout = Rollout(rollout_config) if rollout_config.inference_service else None
        if judgement.decision == "already_champion":
            if rollout is not None:
                return _converge(rollout, judgement.candidate)
            logger.info("Nothing to do: %s", judgement.reason)
            return Outcome(EXIT_OK, judgement.reason)
        run_id = records.record(judgement, registry, config.experiment)
        if judgement.decision == "refused":
            logger.warning("REFUSED %s: %s", judgement.candidate, judgement.reason)
            if rollout:
                rollout.event("PromotionRefused", f"{judgement.candidate}: {judgement.reason}")
            return Outcome(EXIT_REFUSED, f"refused {judgement.candidate}: {judgement.reason}")
        make_champion(registry, judgement.candidate, judgement.champion, judgement.action)
        logger.info("PROMOTED %s (%s): %s", judgement.candidate, judgement.action, judgement.reason)
        if rollout is None:
            return Outcome(EXIT_OK, f"promoted {judgement.candidate}: {judgement.reason}")
        rollout.event("ModelPromoted", f"{judgement.candidate} ({judgement.action}): {judgement.reason}")
        return _rollout(rollout, registry, judgement, run_id)
    except RakutenError as exc:
        logger.error("%s", exc)
        return Outcome(EXIT_ERROR, str(exc))


def promote_after_training(train: TrainConfig, result) -> int:
    """The gate at the end of a training run (``--promote``): the promotion settings from the
    environment, the dataset, evaluation split and cache of the run. A refusal is a normal end of a
    training run (exit 0, recorded like any decision); a rolled-back rollout exits 4."""
    config = dataclasses.replace(from_environment(PromoteConfig), data_dir=str(train.data_dir),
                                 eval_fraction=train.eval_fraction, cache_dir=train.cache_dir,
                                 increments=train.increments, tracking_timeout=train.tracking_timeout)
    outcome = promote(config, from_environment(RolloutConfig))
    write_termination_message(f"trained {result.version_uri}; {outcome.summary}")
    return EXIT_OK if outcome.exit_code == EXIT_REFUSED else outcome.exit_code
