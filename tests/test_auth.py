"""The cluster recipe's tracking server, as the README runs it: MLflow's basic-auth app. A
search logs through it with the credentials in the environment; a client without them is
refused; the password shows up in no param, tag, artifact, result file or console line."""

import secrets
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import ROOT, fmae, start_mlflow_server, stop_mlflow_server

pytestmark = pytest.mark.slow
PASSWORD = secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth")
    proc, url = start_mlflow_server(
        folder,
        "--app-name",
        "basic-auth",
        "--allowed-hosts",
        "127.0.0.1:{port}",
        MLFLOW_AUTH_CONFIG_PATH=str(ROOT / "deploy" / "mlflow-auth.ini"),
        MLFLOW_AUTH_ADMIN_PASSWORD=PASSWORD,
        MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16),
    )
    yield url, folder
    stop_mlflow_server(proc)


def get(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if user:
        request.add_header("Authorization", "Basic " + b64encode(f"{user}:{password}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # its first answer is slow on a loaded machine
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_only_the_right_credentials_get_in(server):
    url, _ = server
    assert get(url) == 401
    assert get(url, "admin", "not-the-password") == 401
    assert get(url, "admin", PASSWORD) == 200


def test_a_search_logs_through_it_and_the_password_leaks_nowhere(server, tmp_path, monkeypatch):
    url, folder = server
    credentials = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    result = fmae(
        [
            "tune",
            "--num_samples",
            "1",
            "--max_epochs",
            "1",
            "--grace_period",
            "1",
            "--train_subset",
            "1000",
            "--storage_path",
            str(tmp_path / "ray"),
        ],
        tmp_path,
        MLFLOW_TRACKING_URI=url,
        **credentials,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "View run" not in result.stdout  # MLflow's per-run links stay out of a quiet console
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    mlflow.set_tracking_uri(url)
    try:
        client = MlflowClient(url)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # the search and its trial
        seen = [result.stdout, result.stderr]
        for run in runs:
            seen += [*run.data.params.values(), *run.data.tags.values()]
            download = Path(
                mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp_path / run.info.run_id))
            )
            seen += [p.read_bytes().decode("latin-1") for p in download.rglob("*") if p.is_file()]
        seen += [p.read_bytes().decode("latin-1") for p in (tmp_path / "ray").rglob("*") if p.is_file()]
        assert not [text for text in seen if PASSWORD in text]
    finally:
        mlflow.set_tracking_uri(None)


def test_a_host_it_does_not_serve_is_refused(server):
    """--allowed-hosts: a request naming another Host (DNS rebinding) gets nothing."""
    url, _ = server
    auth = "Basic " + b64encode(f"admin:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": "attacker.example:80", "Authorization": auth},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (400, 403)
