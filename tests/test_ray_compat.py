"""Canaries for tune/ray_compat.py: each test shows Ray Tune 2.60's behaviour that a workaround
there exists for, and FAILS once Ray fixes it. When one fails after an upgrade, delete the
workaround it names (and the canary)."""

import dataclasses
import inspect
import os
import time

import optuna
from ray.tune import Result, ResultGrid
from ray.tune.execution import experiment_state
from ray.tune.experimental.output import get_air_verbosity
from ray.tune.search.optuna import OptunaSearch

from tests.helpers import searcher_on_study
from tune.ray_compat import KEEP_FIRST_WORKERS
from tune.space import START_POINTS, define_space


def test_optuna_search_reports_a_stopped_trial_as_complete():
    """-> PruningAwareOptunaSearch.on_trial_complete (stopped trials PRUNED, diverged FAIL)."""
    searcher = OptunaSearch(space=define_space, metric="val_loss", mode="min", seed=0)
    searcher.suggest("stopped")
    searcher.on_trial_result("stopped", {"val_loss": 0.5, "epoch": 1, "training_iteration": 1})
    searcher.on_trial_complete("stopped", {"val_loss": 0.5, "epoch": 1, "training_iteration": 1})  # of 5
    assert searcher._ot_study.trials[0].state == optuna.trial.TrialState.COMPLETE


def test_optuna_search_enqueues_its_start_points_again_on_the_same_study(tmp_path):
    """-> PruningAwareOptunaSearch._setup_study (a resumed search ran its start points twice)."""

    def searcher():
        return searcher_on_study(OptunaSearch, tmp_path / "optuna.db")

    first = searcher()
    [first.suggest(f"t{i}") for i in range(len(START_POINTS))]
    again = searcher()
    assert again.suggest("r0") == START_POINTS[0]


def test_results_keep_no_status_of_their_own():
    """-> trial_statuses (read from ResultGrid's private _experiment_analysis)."""
    assert "status" not in {f.name for f in dataclasses.fields(Result)}
    assert "_experiment_analysis" in inspect.getsource(ResultGrid.__init__)


def test_a_trial_knows_its_number_only_from_its_folder_name():
    """-> trial_number and result_trial_id (parsed from Ray's folder names)."""
    from ray.tune import TuneContext

    assert not [m for m in dir(TuneContext) if "number" in m or "index" in m]
    assert "trial_id" not in {f.name for f in dataclasses.fields(Result)}


def test_ray_prints_what_quiet_console_silences():
    """-> QUIET: the new console's boxes and hints, and the snapshot warning."""
    assert "RAY_AIR_NEW_OUTPUT" not in os.environ or os.environ["RAY_AIR_NEW_OUTPUT"] != "0"
    assert get_air_verbosity(0) is not None  # the new console is on by default
    assert "snapshotting has been triggered" in inspect.getsource(experiment_state)


def test_tune_gives_every_trainable_a_runtime_environment():
    """-> warm_workers_for_trials (Ray Tune's PL_DISABLE_FORK kept trials out of the workers Ray
    starts with itself, which serve only actors without a runtime environment)."""
    from ray.tune.execution import class_cache

    source = inspect.getsource(class_cache)
    assert '"PL_DISABLE_FORK": "1"' in source
    assert "ray.remote(runtime_env=runtime_env)(trainable_cls)" in source


def first_worker_takes_an_actor(system_config: dict) -> bool:
    """Start Ray on 2 CPUs, let its first workers idle past Ray's 1 s, take every CPU in a
    placement group (as a search does) and start an actor in it: is its process one of them?"""
    import psutil
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    @ray.remote(num_cpus=1)
    class Pid:
        def pid(self) -> int:
            return os.getpid()

    ray.init(address="local", num_cpus=2, include_dashboard=False, _system_config=dict(system_config))
    try:
        time.sleep(3)  # the first workers up and idle for over a second
        first = {p.pid for p in psutil.Process().children(recursive=True) if p.cmdline()[:1] == ["ray::IDLE"]}
        group = placement_group([{"CPU": 1}, {"CPU": 1}])
        ray.get(group.ready())
        time.sleep(1)  # the raylet checks its idle workers every 200 ms
        actor = Pid.options(scheduling_strategy=PlacementGroupSchedulingStrategy(group)).remote()
        return len(first) == 2 and ray.get(actor.pid.remote()) in first
    finally:
        ray.shutdown()


def test_ray_ends_its_first_workers_once_the_cpus_are_taken():
    """-> KEEP_FIRST_WORKERS (about half of all searches started their first trials in new
    processes, 1-2 s later); with it, the first workers take the trials."""
    assert not first_worker_takes_an_actor({})
    assert first_worker_takes_an_actor(KEEP_FIRST_WORKERS)
