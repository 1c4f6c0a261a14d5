"""The search's Ray: joined or started, how many trials it holds at once, shut down after."""

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import ray

from experiments import interrupts
from experiments.errors import UserError
from tune import ray_compat

# Trials on other nodes log through the same authenticated tracking server: its credentials
# travel in Ray's runtime environment, never as a run's param or tag.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")


def connect_ray(address: str) -> bool:
    """Join the cluster at address, or ("") start Ray here. Returns whether we started it."""
    if ray.is_initialized():
        return False
    env_vars = {
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        **{k: os.environ[k] for k in CREDENTIALS if k in os.environ},
    }
    if address:
        options = {"runtime_env": {"env_vars": env_vars}}
    else:
        # A Ray started here keeps token authentication, Ray's default, without warning that it does.
        # (Setting RAY_AUTH_MODE=token here instead breaks ray.init: its client reads the mode at import.)
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        options = start_trials_in_rays_first_workers(env_vars)
    try:
        # "local" starts a fresh Ray here even when a `ray start` cluster runs on this machine
        # (a bare ray.init() would silently join it).
        ray.init(
            address=address or "local",
            include_dashboard=False,
            configure_logging=True,
            logging_level="warning",
            **options,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(
            f"could not reach the Ray cluster at ray_address={address!r} ({exc}). "
            "Start it with `ray start --head`, check the address, or leave ray_address empty "
            "to run Ray on this machine."
        ) from None
    return True


def start_trials_in_rays_first_workers(env_vars: dict[str, str]) -> dict:
    """For a Ray started here: the first trials start in processes that are already up.
    Returns the options for ray.init.

    Ray starts one worker process per CPU as it comes up, while the search loads its data and
    opens its run, but gives an actor (a trial) one of them only when the actor's runtime
    environment is empty. Ray Tune always sets one (ray_compat.warm_workers_for_trials drops it),
    and so would a runtime environment passed to ray.init: env_vars travel instead as Ray's own
    processes inherit them from this one. Those workers must also outlive the moment the
    search's placement groups take the CPUs (ray_compat.KEEP_FIRST_WORKERS).
    """
    os.environ.update(env_vars)
    ray_compat.warm_workers_for_trials()
    return {"_system_config": dict(ray_compat.KEEP_FIRST_WORKERS)}  # a copy: ray.init adds to it


@dataclass
class RaySession:
    """What `ray_session` yields: `ready()` waits for Ray (and raises what connecting raised);
    `release()` starts shutting down a Ray this search started, in the background, once the
    search needs it no more (its summary reads files, not Ray), and returns at once."""

    ready: Callable[[], None]
    release: Callable[[], None]


@contextlib.contextmanager
def ray_session(address: str) -> Iterator[RaySession]:
    """Ray for the length of a search, started (or joined) in the background while the search
    loads its data and opens its run. One this search started is shut down after it, even by a
    second Ctrl-C (which must not leave Ray's processes behind), or from release() on, while
    the search summarizes and registers what it found (1.4 s on the 2-core machine)."""
    outcome, connected, finished = {}, threading.Event(), threading.Event()

    def connect():
        try:
            outcome["started"] = connect_ray(address)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread by ready()
            outcome["error"] = exc
        connected.set()
        # Ray's own processes get the SIGKILL their parent thread's exit sends (PR_SET_PDEATHSIG
        # follows the thread that forked them): the thread that started them waits for the end,
        # and shuts Ray down itself.
        finished.wait()
        if outcome.get("started"):
            ray.shutdown()

    ray_compat.drop_note_of_init_off_main_thread()
    thread = threading.Thread(target=connect, name="fmae-ray-init", daemon=True)
    thread.start()

    def ready() -> None:
        connected.wait()
        if "error" in outcome:
            raise outcome["error"]

    try:
        yield RaySession(ready, finished.set)
    finally:
        finished.set()
        with interrupts.deferred():
            thread.join()


def trial_concurrency(config) -> int:
    """How many trials run at once: max_concurrent, else as many as the cluster's CPUs and GPUs
    hold, never more than num_samples.

    Ray Tune keeps only one trial pending by default when a searcher proposes them, so trials
    would start one after another, each waiting for the last one's process to come up. A
    ConcurrencyLimiter sets the pending limit to its own, and starts them together.
    """
    if config.max_concurrent:
        return min(config.max_concurrent, config.num_samples)
    resources = ray.cluster_resources()
    slots = int(resources.get("CPU", 0) / config.cpus_per_trial + 1e-9)
    if config.gpus_per_trial:
        slots = min(slots, int(resources.get("GPU", 0) / config.gpus_per_trial + 1e-9))
    if slots < 1:
        have = f"{resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs"
        raise UserError(
            f"the Ray cluster has {have}, too few for one trial with cpus_per_trial="
            f"{config.cpus_per_trial:g} and gpus_per_trial={config.gpus_per_trial:g}; Ray would wait "
            "for ever. Lower them (gpus_per_trial=0 trains on the CPU), or add nodes and pass "
            "max_concurrent."
        )
    return min(slots, config.num_samples)


def cpus_to_use(own: float) -> int:
    """Threads for a trial holding `own` CPUs: its own, plus its share of the CPUs no trial holds
    on a one-node Ray (the search's last trials, once the others have ended, would leave cores
    idle). On a cluster of several nodes the free CPUs may be elsewhere: its own only."""
    base = max(1, int(own))
    if len([node for node in ray.nodes() if node.get("Alive")]) != 1:
        return base
    total, idle = ray.cluster_resources().get("CPU", 0), ray.available_resources().get("CPU", 0)
    held = total - idle
    return base + (int(idle * own / held) if held > 0 else 0)
