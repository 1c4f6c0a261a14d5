"""The search: what the shared study's `tune` step left in MLflow, and the search's parts on
their own — concurrency, the conditional space, the searcher's honesty, lost and diverging trials."""

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune as ray_tune

from experiments import train_cae
from experiments.errors import UserError
from experiments.training import training_precision
from tests.helpers import assert_png, metric_history, searcher_on_study
from tests.study import STUDY
from tune import cluster, ray_compat, summary
from tune import search as search_module
from tune.ray_compat import PruningAwareOptunaSearch
from tune.space import SEED_BEST, START_POINTS, define_space


def test_one_parent_with_a_child_per_trial(study):
    assert len(study.trials) == STUDY["num_samples"]
    assert all(t.data.tags["mlflow.parentRunId"] == study.tune.info.run_id for t in study.trials)
    assert study.tune.info.status == "FINISHED"
    assert "val_loss" not in study.tune.data.metrics  # trial metrics never land in the parent


def test_the_search_and_its_trials_record_system_metrics_and_the_experiment_says_what_it_holds(study):
    cpu = "system/cpu_utilization_percentage"
    assert cpu in study.tune.data.metrics
    finished = [t for t in study.trials if "fmae.pruned" not in t.data.tags]
    assert finished and all(cpu in t.data.metrics for t in finished), [t.data.metrics.keys() for t in finished]
    note = MlflowClient().get_experiment(study.experiment_id).tags["mlflow.note.content"]
    assert "fmae.pruned=true" in note
    assert note.splitlines()[0].startswith('This study\'s runs are under "Model training"')  # for a GenAI visitor


def test_children_have_per_epoch_metrics_tags_and_honest_status(study):
    for child in study.trials:
        tags = child.data.tags
        assert tags["ray.trial_id"] and len(tags["ray.node_id"]) > 20
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # device=auto
        assert tags["fmae.precision"] == training_precision("auto", device)  # as this machine trains
        for key in ("mlflow.user", "mlflow.source.name", "mlflow.source.type"):  # who ran it, from what
            assert tags[key] == study.tune.data.tags[key], key
        steps = [s for s, _ in metric_history(child.info.run_id, "val_loss")]
        assert steps == list(range(1, len(steps) + 1)) and steps, steps
        assert child.info.status == "FINISHED", child.info.status  # stopping early is not failing
        if tags.get("fmae.pruned") == "true":
            assert steps[-1] < STUDY["max_epochs"] and tags["fmae.stopped_at_epoch"] == str(steps[-1])
            assert f"epoch-{steps[-1]} rung" in tags["mlflow.note.content"]
        else:
            assert steps[-1] == STUDY["max_epochs"]


def test_trials_are_named_short_and_distinct_and_each_holds_an_artifact(study):
    client = MlflowClient()
    names = [c.info.run_name for c in study.trials]
    assert len(set(names)) == len(names)
    for child in study.trials:
        p = child.data.params
        stopped = "stopped-" if child.data.tags.get("fmae.pruned") == "true" else ""
        assert re.fullmatch(
            rf"t\d\d-{stopped}c{p['n_channels']}-d{p['encoded_space_dim']}-{p['optimizer']}(-bn)?", child.info.run_name
        ), child.info.run_name
        assert "trial_config.json" in {a.path for a in client.list_artifacts(child.info.run_id)}
    best = [c for c in study.trials if c.data.tags.get("fmae.best_trial") == "true"]
    assert len(best) == 1 and best[0].data.tags.get("fmae.pruned") != "true"


def test_trials_start_together_and_the_search_records_its_timeline(study, tmp_path):
    """Ray Tune keeps one trial pending for a searcher unless told otherwise; fmae tells it how
    many the machine holds, so the first two trials are launched at once, not one after another."""
    parent = study.tune
    assert parent.data.params["concurrent_trials"] == "2"
    table = pd.read_csv(MlflowClient().download_artifacts(parent.info.run_id, "search_results.csv", str(tmp_path)))
    columns = ["created_s", "launched_s", "entered_s", "ready_s", "first_epoch_s", "ended_s"]
    assert table[columns].notna().all().all()
    assert (table[columns].diff(axis=1).iloc[:, 1:] >= 0).all().all(), table[columns]  # each in order
    # The first two were both launched before any trial had trained an epoch: neither waited
    # for the other's start-up (with one pending trial, each waited for the one before).
    assert table["created_s"].nsmallest(2).max() < table["first_epoch_s"].min()
    # ... and ran in processes Ray had started with itself, before the search began
    # (tune.cluster.start_trials_in_rays_first_workers), not in ones Ray started once the search
    # asked, after its first workers had been ended (ray_compat.KEEP_FIRST_WORKERS)
    first_two = table.nsmallest(2, "created_s")
    assert (first_two["process_started_s"] < 0).all(), first_two[["process_started_s", *columns]]
    metrics = parent.data.metrics
    assert metrics["peak_concurrent_trials"] == 2
    assert 0 < metrics["seconds_to_first_epoch"] < metrics["search_seconds"]
    assert metrics["median_trial_start_seconds"] >= 0 and metrics["median_trial_setup_seconds"] >= 0


@pytest.mark.parametrize(
    "resources,flags,expected",
    [
        # the GPU machine's cluster (ray_address: a GPU there, whatever this machine has): 16 trials share it
        ({"CPU": 16.0, "GPU": 1.0}, {"gpus_per_trial": 0.0625, "ray_address": "auto"}, 16),
        ({"CPU": 16.0, "GPU": 1.0}, {"gpus_per_trial": 0.125, "ray_address": "auto"}, 8),
        ({"CPU": 2.0}, {}, 2),
        ({"CPU": 2.0}, {"cpus_per_trial": 0.5}, 4),
        ({"CPU": 64.0}, {}, 20),  # never more than num_samples
        ({"CPU": 2.0}, {"max_concurrent": 3}, 3),  # the user's word wins (an autoscaling cluster grows)
    ],
)
def test_trial_concurrency_follows_the_cluster(monkeypatch, resources, flags, expected):
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: resources)
    assert cluster.trial_concurrency(search_module.Config(**flags)) == expected


def test_a_gpu_per_trial_without_a_gpu_is_refused_not_waited_for(monkeypatch):
    monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(UserError, match="0 GPUs.*gpus_per_trial=0.5"):  # a cluster with none
        cluster.trial_concurrency(search_module.Config(gpus_per_trial=0.5, ray_address="auto"))
    monkeypatch.setattr(search_module.torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="PyTorch sees none on this machine"):  # this machine, before any run
        search_module.Config(gpus_per_trial=0.5)


def test_the_console_says_one_line_per_trial_and_little_else(study):
    output = study.console
    for noise in (
        "Downloading artifacts",
        "Trial status:",
        "Token authentication",
        "A new study created",
        "Got error",
        "Traceback",
        "Configuration for experiment",
        "View detailed results here",
        "tensorboard",
        "system metrics",
        "snapshotting",
        "WARNING",
    ):
        assert noise not in output, noise
    n = STUDY["num_samples"]
    lines = [line for line in output.splitlines() if re.match(rf"\[[#-]{{12}}\] \d+/{n} trial t\d\d-", line)]
    assert len(lines) == n, output[-3000:]
    assert "left" in lines[0] and "best so far" in lines[-1]
    assert f"Search: {n} trials, up to 2 at once." in output


def test_first_trials_are_the_start_points(study, tmp_path):
    """The seed's configuration, then the wide BatchNorm one, before TPE proposes anything
    (trials start together, so their order is the searcher's, kept in search_results.csv)."""
    path = MlflowClient().download_artifacts(study.tune.info.run_id, "search_results.csv", str(tmp_path))
    first = pd.read_csv(path).head(len(START_POINTS))
    assert [{k: row[k] for k in SEED_BEST} for _, row in first.iterrows()] == START_POINTS


def test_finished_trials_hold_their_encoder_plots_and_test_loss(study, tmp_path):
    client = MlflowClient()
    for child in study.trials:
        if child.data.tags.get("fmae.pruned") == "true":  # stopped early: FINISHED, with no model
            assert "test_loss" not in child.data.metrics
            continue
        names = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert {"reconstructions.png", "latent_pca.png", "samples.png"} <= names, names
        assert mlflow.pytorch.load_model(f"runs:/{child.info.run_id}/cae")(torch.rand(2, 1, 28, 28)).shape == (
            2,
            1,
            28,
            28,
        )
        for name in ("reconstructions.png", "latent_pca.png", "samples.png"):
            assert_png(client.download_artifacts(child.info.run_id, name, str(tmp_path)))
        encoder = mlflow.pytorch.load_model(f"runs:/{child.info.run_id}/encoder")
        assert encoder(torch.rand(3, 1, 28, 28)).shape == (3, int(child.data.params["encoded_space_dim"]))
        assert 0 < child.data.metrics["test_loss"] < 0.2


def test_parent_holds_the_search_summary(study, tmp_path):
    parent, client = study.tune, MlflowClient()
    best = [c for c in study.trials if c.data.tags.get("fmae.best_trial") == "true"][0]
    finished = [c for c in study.trials if "fmae.pruned" not in c.data.tags]
    # the trial that ran to the end with the lowest val_loss; its logged model's test_loss is the search's
    assert parent.data.metrics["best_val_loss"] == min(c.data.metrics["val_loss"] for c in finished)
    assert parent.data.metrics["best_val_loss"] == best.data.metrics["val_loss"]
    assert (
        parent.data.metrics["best_test_loss"] == best.data.metrics["test_loss"]
        and 0 < best.data.metrics["test_loss"] < 0.2
    )
    assert {k.removeprefix("best_"): v for k, v in parent.data.params.items() if k.startswith("best_")} == {
        k: v for k, v in best.data.params.items()
    }  # the values the best trial used, no more
    for name in (
        "parallel_coordinates.png",
        "learning_curves.png",
        "param_importances.png",
        "reconstructions.png",
        "pareto_front.png",
    ):
        assert_png(client.download_artifacts(parent.info.run_id, name, str(tmp_path)))
    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "search_results.csv", str(tmp_path)))
    assert len(table) == STUDY["num_samples"] and set(table["status"]) <= {"finished", "pruned", "failed"}
    assert table.loc[table["optimizer"] == "adam", "momentum"].isna().all()  # a value it did not use stays empty


def test_the_size_quality_front_is_in_the_parent_and_on_its_trials(study, tmp_path):
    client = MlflowClient()
    front = pd.read_csv(client.download_artifacts(study.tune.info.run_id, "pareto_front.csv", str(tmp_path)))
    finished = [t for t in study.trials if "fmae.pruned" not in t.data.tags]
    assert sorted(front["mlflow_run_id"]) == sorted(t.info.run_id for t in finished)
    assert (front["encoder_params"] > 0).all() and (front["cpu_ms_per_image"] > 0).all()
    on = set(front.loc[front["on_front"], "mlflow_run_id"])
    assert on and on == {t.info.run_id for t in finished if t.data.tags.get("fmae.pareto") == "true"}
    best = front.loc[front["test_loss"].idxmin(), "mlflow_run_id"]
    assert best in on  # nothing beats the best test loss on that count
    assert "smallest encoder within 5% of the best test loss" in study.tune.data.tags["mlflow.note.content"]


def test_champion_is_registered_loads_and_its_trial_names_it(study):
    parent, client = study.tune, MlflowClient()
    encoder = mlflow.pytorch.load_model("models:/fmae-cae-encoder@champion")
    d = int(parent.data.params["best_encoded_space_dim"])
    assert encoder(torch.rand(6, 1, 28, 28)).shape == (6, d)
    version = client.get_model_version_by_alias("fmae-cae-encoder", "champion")
    assert version.tags["fmae.run_id"] == parent.info.run_id  # the search registered it ...
    assert version.run_id == version.tags["fmae.trial_run_id"]  # ... from the model its best trial logged
    assert float(version.tags["test_loss"]) == pytest.approx(parent.data.metrics["best_test_loss"])
    # described in markdown, with links back to the search and its best trial (relative: any host works)
    trial = version.tags["fmae.trial_run_id"]
    assert f"runs/{parent.info.run_id}?workflowType=machine_learning)" in version.description
    assert f"runs/{trial}?workflowType=machine_learning)" in version.description
    assert "test_loss" in version.description and "http" not in version.description
    assert "alias **champion**" in client.get_registered_model("fmae-cae-encoder").description.lower()
    # the search's own run says what it found, linking its best trial and the version
    note = parent.data.tags["mlflow.note.content"]
    assert note.startswith(f"**Search of {STUDY['num_samples']} trials**") and f"runs/{trial}?workflowType" in note
    assert f"(#/models/fmae-cae-encoder/versions/{version.version})" in note
    # and the trial names the version its encoder became, with a link
    best = client.get_run(trial)
    assert best.data.tags["fmae.registered_version"] == f"fmae-cae-encoder/{version.version}"
    assert f"(#/models/fmae-cae-encoder/versions/{version.version})" in best.data.tags["mlflow.note.content"]


def test_pruned_trials_are_pruned_in_the_optuna_study(study):
    study_uri = study.tune.data.tags["fmae.optuna_study"]
    (summary_,) = optuna.get_all_study_summaries(study_uri)
    loaded = optuna.load_study(study_name=summary_.study_name, storage=study_uri)
    states = {t.params["optimizer"] + str(t.params["lr"]): t.state.name for t in loaded.trials}
    killed = [c for c in study.trials if c.data.tags.get("fmae.pruned") == "true"]
    for child in killed:
        assert states[child.data.params["optimizer"] + str(float(child.data.params["lr"]))] == "PRUNED"
    assert sorted(states.values()).count("PRUNED") == len(killed)


def test_momentum_exists_only_where_the_optimiser_reads_it(study):
    """The space is conditional: a trial's params, the study and the best_* hold only values used."""
    for trial in study.trials:
        assert ("momentum" in trial.data.params) == (trial.data.params["optimizer"] in ("sgd", "rmsprop"))
    searcher = PruningAwareOptunaSearch(space=define_space, metric="val_loss", mode="min", seed=0, max_epochs=5)
    configs = [searcher.suggest(f"t{i}") for i in range(30)]
    assert {c["optimizer"] for c in configs} == {"adam", "sgd", "rmsprop"}
    assert all(("momentum" in c) == (c["optimizer"] != "adam") for c in configs)


def test_importances_say_how_many_trials_they_rest_on(study):
    """PED-ANOVA on the finished trials; so few are noise, and the figure's title says so."""
    from tune.search_plots import plot_param_importances

    name = study.tune.data.tags["fmae.ray_results"].rsplit("/", 1)[1]
    file = study.tune.data.tags["fmae.optuna_study"].removeprefix("sqlite:///")
    importances, trials = summary.param_importances(name, Path(file))
    assert trials == sum("fmae.pruned" not in t.data.tags for t in study.trials) < summary.MIN_TRIALS_FOR_IMPORTANCE
    title = plot_param_importances(importances, trials, summary.MIN_TRIALS_FOR_IMPORTANCE).axes[0].get_title()
    assert title == f"Not yet meaningful: {trials} finished trials (needs {summary.MIN_TRIALS_FOR_IMPORTANCE})"
    enough = plot_param_importances({"lr": 0.7, "momentum": 0.3}, 12, summary.MIN_TRIALS_FOR_IMPORTANCE)
    assert enough.axes[0].get_title() == "Hyperparameter importances (12 finished trials)"


def test_searcher_tells_optuna_that_stopped_trials_were_pruned():
    """Without Ray: a trial stopped at epoch 2 of 5 is PRUNED, one that ran 5 is COMPLETE."""
    searcher = PruningAwareOptunaSearch(
        metric="val_loss", mode="min", seed=0, max_epochs=5, space={"lr": ray_tune.loguniform(1e-4, 1e-2)}
    )
    for trial_id in ("stopped", "finished"):
        searcher.suggest(trial_id)
    for epoch in (1, 2):
        searcher.on_trial_result("stopped", {"val_loss": 0.5 / epoch, "epoch": epoch, "training_iteration": epoch})
    searcher.on_trial_complete("stopped", {"val_loss": 0.25, "epoch": 2, "training_iteration": 2})
    for epoch in range(1, 6):
        searcher.on_trial_result("finished", {"val_loss": 0.1 / epoch, "epoch": epoch, "training_iteration": epoch})
    searcher.on_trial_complete("finished", {"val_loss": 0.02, "epoch": 5, "training_iteration": 5})
    states = [t.state for t in searcher._ot_study.trials]
    assert states == [optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE]
    assert searcher._ot_study.trials[0].intermediate_values == {1: 0.5, 2: 0.25}


def test_a_resumed_searcher_does_not_propose_its_start_points_again(tmp_path):
    """A resumed search rebuilds its searcher on the same persistent study: the start points it
    ran must not wait in the study a second time (they were proposed again, and run twice)."""

    def searcher():
        return searcher_on_study(PruningAwareOptunaSearch, tmp_path / "optuna.db", max_epochs=5)

    first = searcher()
    assert [first.suggest(f"t{i}") for i in range(2)] == START_POINTS
    again = searcher()  # as Tuner.restore's set-up does, on the same study
    proposed = [again.suggest(f"r{i}") for i in range(3)]
    assert not [p for p in proposed if p in START_POINTS], proposed


def test_every_configuration_of_the_space_trains_a_cae():
    """The searcher's suggestions are train_cae's parameters as they are: each builds a CAE that runs."""
    searcher = PruningAwareOptunaSearch(metric="val_loss", mode="min", seed=0, max_epochs=5, space=define_space)
    configs = [searcher.suggest(f"t{i}") for i in range(24)]
    assert {c["batch_norm"] for c in configs} == {False, True}
    assert set(SEED_BEST) == set(configs[0]) - {"momentum"}
    for config in configs:
        model = train_cae.build_autoencoder(dataclasses.replace(train_cae.Config(), **config)).model
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 1, 28, 28)
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == config["batch_norm"]


def test_child_runs_of_trials_the_resumed_search_lost_are_deleted(tracking):
    """A driver killed outright can resume from a state older than its last trial's start; that
    trial's run is dropped, the ones the search still has are kept."""
    from types import SimpleNamespace

    from tune.child_runs import drop_lost_trials

    client = MlflowClient()
    experiment = client.create_experiment("lost")
    parent = client.create_run(experiment).info.run_id
    for trial in ("aaaa0001", "aaaa0002", "aaaa0003"):
        client.create_run(experiment, tags={"mlflow.parentRunId": parent, "ray.trial_id": trial})
    results = [
        SimpleNamespace(metrics={"trial_id": "aaaa0001"}, path="/r/train_trial_aaaa0001_1_x"),
        SimpleNamespace(metrics={}, path="/r/train_trial_aaaa0003_3_batch_norm=True_2026"),
    ]  # never reported
    assert drop_lost_trials(experiment, parent, results) == 1
    kept = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["ray.trial_id"] for r in kept) == ["aaaa0001", "aaaa0003"]
    unknown = [SimpleNamespace(metrics={}, path="/r/odd")]  # a trial that cannot be identified: delete nothing
    assert drop_lost_trials(experiment, parent, unknown) == 0


def test_a_diverging_trial_fails_alone_and_optuna_is_told(tracking, small_data, tmp_path):
    """A trial whose loss turns NaN ends at once, FAILED with the epoch and cause as tags; the
    other trial finishes, Optuna records a FAIL (not a value), and the best result is finite."""
    import ray

    from tune.child_runs import ChildRunStatus
    from tune.trainable import TrialSetup, train_trial

    client = MlflowClient()
    experiment = client.create_experiment("nan")
    parent = client.create_run(experiment).info.run_id
    setup = TrialSetup(
        base=train_cae.Config(train_subset=2000, epochs=2),
        tracking_uri=tracking,
        experiment_id=experiment,
        parent_run_id=parent,
    )
    diverging = {**SEED_BEST, "optimizer": "sgd", "lr": 1e20, "momentum": 0.9}
    searcher = PruningAwareOptunaSearch(
        points_to_evaluate=[diverging, SEED_BEST],
        seed=0,
        max_epochs=2,
        space={
            **{k: ray_tune.choice([v]) for k, v in diverging.items()},
            "optimizer": ray_tune.choice(["sgd", "adam"]),
            "lr": ray_tune.loguniform(1e-4, 1e21),
        },
        metric="val_loss",
        mode="min",
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    try:
        results = ray_tune.Tuner(
            ray_tune.with_parameters(train_trial, data=small_data.pack(), setup=setup),
            tune_config=ray_tune.TuneConfig(num_samples=2, search_alg=searcher),
            run_config=ray_tune.RunConfig(
                storage_path=str(tmp_path / "ray"), callbacks=[ChildRunStatus(tracking, 2)], verbose=0
            ),
        ).fit()
    finally:
        ray.shutdown()
    runs = {r.data.params["optimizer"]: r for r in client.search_runs([experiment], "tags.`fmae.step` = 'tune-trial'")}
    assert runs["sgd"].info.status == "FAILED" and runs["adam"].info.status == "FINISHED"
    assert (
        runs["sgd"].data.tags["fmae.failure"] == "diverged" and runs["sgd"].data.tags["fmae.diverged_at_epoch"] == "1"
    )
    assert "Diverged at epoch 1" in runs["sgd"].data.tags["mlflow.note.content"]
    assert [t.state.name for t in searcher._ot_study.trials] == ["FAIL", "COMPLETE"]
    table, _ = summary.summarize_trials(results, 2)
    assert sorted(table["status"]) == ["failed", "finished"]
    assert results.get_best_result(metric="val_loss", mode="min", scope="all").config["optimizer"] == "adam"


class GiveUp(ray_tune.Callback):
    """Ray Tune giving up on a search, as when Ray's memory monitor kills a trial's process while
    it starts (tuner.fit raised "Caught unexpected exception: 1 worker(s) were killed ...")."""

    def on_trial_result(self, iteration, trials, trial, result, **info):
        raise RuntimeError("Ray Tune gave up")


def test_a_search_ray_gives_up_on_leaves_no_trial_running(tracking, tmp_path):
    config = search_module.Config(
        num_samples=1, max_epochs=2, grace_period=2, train_subset=1000, storage_path=str(tmp_path / "ray")
    )
    with pytest.raises(Exception, match="Ray Tune gave up"):
        search_module.run(config, callbacks=(GiveUp(),))
    runs = MlflowClient().search_runs([mlflow.get_experiment_by_name("fmae").experiment_id])
    assert sorted((r.data.tags.get("fmae.step"), r.info.status) for r in runs) == [
        ("tune", "FAILED"),
        ("tune-trial", "FAILED"),
    ]


def test_a_trials_process_start_is_timed_to_the_clock_tick():
    """The timeline's process_started tells Ray's first workers (started before the search) from
    processes started for the trials a second later: psutil's create_time, up to 1 s early, could not."""
    before = time.time()
    child = subprocess.run(
        [sys.executable, "-c", "from tune.trainable import process_started_at; print(process_started_at())"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert before - 0.05 <= float(child.stdout) <= time.time()


def test_ray_shuts_down_in_the_background_once_the_search_releases_it():
    """release() (called once the trials are over) shuts the search's own Ray down in the
    background, before the session ends; the session's end waits for it. The Ray options fmae
    keeps are passed as copies: ray.init writes its session's spill folder into the one it gets."""
    kept = dict(ray_compat.KEEP_FIRST_WORKERS)
    with cluster.ray_session("") as session:
        session.ready()
        assert ray.is_initialized()
        session.release()
        deadline = time.monotonic() + 60
        while ray.is_initialized() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not ray.is_initialized()
    assert not ray.is_initialized()
    assert ray_compat.KEEP_FIRST_WORKERS == kept


def test_no_logged_model_holds_a_system_metric(study):
    """MLflow linked every step-0 metric to a model logged at step 0, the system samples with them."""
    models = mlflow.search_logged_models(experiment_ids=[study.experiment_id], output_format="list")
    assert len(models) >= 5  # finished trials' cae and encoder, the classifiers, the VAE's two
    for model in models:
        assert not [m.key for m in model.metrics or [] if m.key.startswith("system/")], model.name
    encoder = [m for m in models if m.source_run_id == study.finished.info.run_id and m.name == "encoder"][0]
    assert {m.key for m in encoder.metrics} == {"test_loss"}  # the trial's own result still is
