"""The Model Registry: each model a step makes becomes a version, described with its score and
lineage, and the alias `champion` follows one rule that concurrent registrars agree on.

The champion rule: `champion` points at the version with the best recorded score (its tag
`key`, e.g. test_loss; ties go to the earlier version), unless the registered model's tag
`fmae.champion_pin` names a version, which then keeps it. Every registrar, after registering,
recomputes the rule from all versions, moves the alias if it disagrees, and checks again after
its own write. Two registrars that interleave read, compare and write therefore still end on
the same answer: whichever writes last re-reads every version registered before its check.
"""

import math
import random
import time
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.tracking import mlflow_compat
from experiments.tracking.links import run_markdown_link, version_markdown_link

CHAMPION = "champion"
PIN_TAG = "fmae.champion_pin"  # on a registered model: the version that keeps `champion`, whatever the scores
ELECTION_ROUNDS = 20  # a registrar's reads and writes until the alias agrees with the rule


def score_of(version, key: str) -> float:
    try:
        value = float(version.tags.get(key, "nan"))
    except ValueError:
        return math.nan
    return value


def best_version(versions, key: str, higher_is_better: bool) -> str | None:
    """The rule's pick among versions (their tag `key`); None when no version has a score."""
    scored = [(score_of(v, key), int(v.version)) for v in versions]
    scored = [(s if higher_is_better else -s, -number) for s, number in scored if math.isfinite(s)]
    return str(-max(scored)[1]) if scored else None


def champion_version(client: MlflowClient, name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def elect_champion(client: MlflowClient, name: str, key: str, higher_is_better: bool) -> tuple[str | None, str | None]:
    """Point `champion` where the rule says; returns (champion, the version it was moved from, if
    this registrar moved it). See the module docstring for why concurrent registrars agree."""
    moved_from = None
    for _ in range(ELECTION_ROUNDS):
        versions = client.search_model_versions(f"name = '{name}'", max_results=10_000)
        pin = client.get_registered_model(name).tags.get(PIN_TAG)
        target = pin if pin in {str(v.version) for v in versions} else best_version(versions, key, higher_is_better)
        current = champion_version(client, name)
        if target is None or current == target:
            return current, moved_from
        try:
            client.set_registered_model_alias(name, CHAMPION, target)
            client.set_model_version_tag(name, target, "fmae.champion_replaced", current or "none")
            moved_from = current or "none"
        except MlflowException as exc:
            if not mlflow_compat.is_alias_conflict(exc):
                raise
        time.sleep(random.uniform(0.05, 0.25))  # then check again: another registrar may have written meanwhile
    raise RuntimeError(f"the alias {CHAMPION} of {name} did not settle after {ELECTION_ROUNDS} rounds")


def score_text(key: str, value: float, tags: dict[str, str]) -> str:
    """`test_accuracy 0.9123 ± 0.0021 (mean ± std over 3 seeds)`, or just the value."""
    std, repeats = tags.get(f"{key}_std"), tags.get("fmae.repeats")
    if std is not None and repeats and int(repeats) > 1:
        return f"{key} {value:.4f} ± {float(std):.4f} (mean ± std over {repeats} seeds)"
    return f"{key} {value:.4g}"


def version_description(run_id: str, score: tuple[str, float], tags: dict[str, str]) -> str:
    """Markdown for a model version: its score, the run that made it, and the links back along
    its lineage (the encoder version and the search trial it was built from)."""
    lines = [f"**{score_text(*score, tags)}**, made by run {run_markdown_link(run_id)}."]
    if tags.get("fmae.trial_run_id"):
        lines.append(f"The encoder of the search's best trial, {run_markdown_link(tags['fmae.trial_run_id'])}.")
    if tags.get("fmae.source_model"):
        lines.append(f"Built on {version_markdown_link(*tags['fmae.source_model'].split('/', 1))}.")
    if tags.get("fmae.source_run_id"):
        label = tags.get("fmae.source_trial") or ""
        lines.append(
            f"Its encoder came from run {run_markdown_link(tags['fmae.source_run_id'], label)}"
            + (" (a search trial)." if label else ".")
        )
    if tags.get("fmae.mode"):
        lines.append(f"Fine-tuning mode: {tags['fmae.mode']}.")
    return "\n\n".join(lines)


def rule_text(key: str, higher_is_better: bool) -> str:
    return (
        f"Alias **{CHAMPION}**: the version with the {'highest' if higher_is_better else 'lowest'} {key}, "
        f"unless this model's tag `{PIN_TAG}` names a version to keep it."
    )


def register_model(
    model_uri: str,
    name: str,
    run_id: str,
    score: tuple[str, float],
    higher_is_better: bool,
    tags: dict[str, Any] | None = None,
    about: str = "",
):
    """Register model_uri as a new version of name, tagged with its run and score and described,
    then let the champion rule place the alias. about: the registered model's description, set
    while it has none. Returns (version, whether it is the champion)."""
    client = MlflowClient()
    key, value = score
    all_tags = {"fmae.run_id": run_id, key: str(value), **{k: str(v) for k, v in (tags or {}).items()}}
    version = mlflow.register_model(model_uri, name, tags=all_tags)
    client.update_model_version(name, version.version, version_description(run_id, score, all_tags))
    if about and not client.get_registered_model(name).description:
        client.update_registered_model(name, f"{about}\n\n{rule_text(key, higher_is_better)}")
    champion, moved_from = elect_champion(client, name, key, higher_is_better)
    is_champion = champion == str(version.version)
    client.set_model_version_tag(name, version.version, "fmae.champion_at_registration", str(is_champion).lower())
    print(announcement(client, name, str(version.version), champion, moved_from, key, value))
    return version, is_champion


def announcement(
    client: MlflowClient, name: str, version: str, champion: str | None, moved_from: str | None, key: str, value: float
) -> str:
    line = f"Registered {name} version {version} ({key}={value:.4g})"
    if champion == version:
        return line + f": the new {CHAMPION}."
    held = client.get_model_version(name, champion) if champion else None
    line += f"; {CHAMPION} is version {champion} ({key}={score_of(held, key):.4g})" if held else f"; no {CHAMPION}"
    if held is not None and client.get_registered_model(name).tags.get(PIN_TAG) == champion:
        line += f", pinned by the tag {PIN_TAG}"
    elif moved_from and moved_from != "none":
        line += f", moved from version {moved_from} by the rule"
    return line + "."
