"""The champion rule: `champion` on the best version by recorded score, unless pinned; and the
same answer when many registrars race, with real processes on a real sqlite store and against
a real tracking server."""

import multiprocessing
import random

import mlflow
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from experiments.tracking.models import log_module
from experiments.tracking.registry import CHAMPION, PIN_TAG, best_version, register_model
from fmae_models import CAEConfig, Encoder
from tests.helpers import start_mlflow_server, stop_mlflow_server

REGISTRARS = 8
# Each round: eight processes register at the same moment. They catch what only real concurrency
# shows (a locked store, a failed request, a conflicting alias insert); the rule's answer to
# interleaved reads and writes is proven deterministically by the two tests before them. Through a
# server a registration takes ~0.6 s on the 2-core machine, so it gets fewer rounds.
ROUNDS = {"sqlite": 10, "server": 6}


def logged_encoder() -> tuple[str, str]:
    """A tiny logged encoder to register again and again: (model URI, run id)."""
    config = {"n_channels": 4, "encoded_space_dim": 4}
    with mlflow.start_run() as run:
        info = log_module(Encoder(CAEConfig(**config)), "encoder", "encoder", config, run_id=run.info.run_id)
    return info.model_uri, run.info.run_id


def champion(name: str) -> str:
    return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)


def test_the_rule_picks_the_best_score_ties_to_the_earlier_version_and_skips_missing_ones():
    from types import SimpleNamespace as V

    versions = [
        V(version="1", tags={"loss": "0.5"}),
        V(version="2", tags={"loss": "0.3"}),
        V(version="3", tags={"loss": "0.3"}),
        V(version="4", tags={"loss": "nan"}),
        V(version="5", tags={}),
    ]
    assert best_version(versions, "loss", higher_is_better=False) == "2"
    assert best_version(versions, "loss", higher_is_better=True) == "1"
    assert best_version(versions[3:], "loss", higher_is_better=False) is None


def test_a_worse_version_is_registered_a_better_one_takes_the_alias_and_a_pin_holds_it(tracking, capsys):
    uri, run_id = logged_encoder()
    name = "rule"
    for score in (0.5, 0.7, 0.3):
        register_model(uri, name, run_id, ("test_loss", score), higher_is_better=False)
    assert champion(name) == "3"
    out = capsys.readouterr().out
    assert "version 2 (test_loss=0.7); champion is version 1 (test_loss=0.5)" in out
    assert "Registered rule version 3 (test_loss=0.3): the new champion." in out
    client = MlflowClient()
    client.set_registered_model_tag(name, PIN_TAG, "2")  # a user keeps version 2, whatever the scores
    version, is_champion = register_model(uri, name, run_id, ("test_loss", 0.1), higher_is_better=False)
    assert champion(name) == "2" and not is_champion
    assert "pinned by the tag fmae.champion_pin" in capsys.readouterr().out


def test_an_alias_moved_by_hand_is_moved_back_with_a_trace(tracking, capsys):
    uri, run_id = logged_encoder()
    name = "by-hand"
    for score in (0.3, 0.5):
        register_model(uri, name, run_id, ("test_loss", score), higher_is_better=False, about="A model.")
    client = MlflowClient()
    client.set_registered_model_alias(name, CHAMPION, "2")  # by hand, without a pin
    register_model(uri, name, run_id, ("test_loss", 0.9), higher_is_better=False)
    assert champion(name) == "1"
    assert "champion is version 1 (test_loss=0.3), moved from version 2 by the rule" in capsys.readouterr().out
    assert client.get_model_version(name, "1").tags["fmae.champion_replaced"] == "2"
    assert PIN_TAG in client.get_registered_model(name).description  # how to keep a version of one's choice


def test_a_registrar_whose_read_went_stale_puts_the_alias_back_on_the_best(tracking, monkeypatch):
    """Registrar A reads the versions and decides on its own v2; before its write lands, registrar
    B registers a better v3 and moves the alias there; then A's write lands. A must check again
    after its write and leave the alias on v3."""
    uri, run_id = logged_encoder()
    name = "stale"
    register_model(uri, name, run_id, ("test_loss", 0.5), higher_is_better=False)
    real = MlflowClient.set_registered_model_alias

    def a_write_that_lands_late(self, model, alias, version):
        monkeypatch.setattr(MlflowClient, "set_registered_model_alias", real)
        register_model(uri, name, run_id, ("test_loss", 0.1), higher_is_better=False)  # B: v3
        assert champion(name) == "3"
        return real(self, model, alias, version)  # A's stale write: v2

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", a_write_that_lands_late)
    register_model(uri, name, run_id, ("test_loss", 0.3), higher_is_better=False)  # A: v2
    assert champion(name) == "3"


def test_a_conflicting_alias_insert_is_retried_not_raised(tracking, monkeypatch):
    """Two registrars creating the alias at once: the loser's insert fails on the unique key
    (sqlite's wording here; PostgreSQL says duplicate key value). Its registration goes on."""
    uri, run_id = logged_encoder()
    real, calls = MlflowClient.set_registered_model_alias, []

    def conflict_once(self, model, alias, version):
        calls.append(version)
        if len(calls) == 1:
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: registered_model_aliases.alias")
        return real(self, model, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", conflict_once)
    version, is_champion = register_model(uri, "conflict", run_id, ("test_loss", 0.2), higher_is_better=False)
    assert is_champion and champion("conflict") == str(version.version) and len(calls) == 2


def register_in_rounds(index: int, uri: str, run_id: str, name: str, rounds: int, start, end, failures) -> None:
    """A registrar process: at each round's start, with the others, one version with a random score."""
    for round_ in range(rounds):
        start.wait()
        try:
            register_model(
                uri,
                name,
                run_id,
                ("test_loss", random.Random(round_ * 100 + index).uniform(0.01, 0.02)),
                higher_is_better=False,
            )
        except Exception as exc:  # noqa: BLE001 - any failure of a registration is what this test counts
            failures.put(f"round {round_}, registrar {index}: {type(exc).__name__}: {exc}")
        end.wait()


def race(name: str, rounds: int) -> list[str]:
    """REGISTRARS processes register at the same moment, `rounds` times; after each round champion
    must be on the best version. Returns the rounds where it was not, and any failures."""
    uri, run_id = logged_encoder()
    context = multiprocessing.get_context("spawn")  # fresh interpreters, as separate searches are
    start, end, failures = context.Barrier(REGISTRARS + 1), context.Barrier(REGISTRARS + 1), context.Queue()
    workers = [
        context.Process(target=register_in_rounds, args=(i, uri, run_id, name, rounds, start, end, failures))
        for i in range(REGISTRARS)
    ]
    for worker in workers:
        worker.start()
    wrong = []
    try:
        for round_ in range(rounds):
            start.wait(timeout=300)
            end.wait(timeout=300)
            versions = MlflowClient().search_model_versions(f"name = '{name}'", max_results=10_000)
            if champion(name) != best_version(versions, "test_loss", higher_is_better=False):
                wrong.append(
                    f"round {round_}: champion {champion(name)}, best {best_version(versions, 'test_loss', False)}"
                )
    finally:
        for worker in workers:
            worker.join(timeout=60)
    assert len(versions) == REGISTRARS * rounds
    return wrong + [failures.get() for _ in range(failures.qsize())]


def test_simultaneous_registrations_on_sqlite_agree_on_the_champion(tracking):
    assert race("raced", ROUNDS["sqlite"]) == []


@pytest.mark.slow
def test_simultaneous_registrations_through_a_tracking_server_agree_on_the_champion(tmp_path, monkeypatch):
    server, url = start_mlflow_server(tmp_path, workers=4)  # requests handled in parallel, as on a cluster
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        assert race("raced-on-a-server", ROUNDS["server"]) == []
    finally:
        mlflow.set_tracking_uri(None)
        stop_mlflow_server(server)
