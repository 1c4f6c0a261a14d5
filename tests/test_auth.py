"""The cluster recipe's tracking server, as the README runs it: MLflow's basic-auth app. A client
without the right credentials is refused, and so is a request naming another host. A search
logging through it (and riding out its restart, with the password nowhere in what it leaves) is
tests/test_server_restart.py's."""

import secrets
import urllib.error
import urllib.request
from base64 import b64encode

import pytest

from tests.helpers import start_auth_server, stop_mlflow_server

pytestmark = pytest.mark.slow
PASSWORD = secrets.token_urlsafe(18)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    proc, url = start_auth_server(tmp_path_factory.mktemp("auth"), PASSWORD)
    yield url
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
    assert get(server) == 401
    assert get(server, "admin", "not-the-password") == 401
    assert get(server, "admin", PASSWORD) == 200


def test_a_host_it_does_not_serve_is_refused(server):
    """--allowed-hosts: a request naming another Host (DNS rebinding) gets nothing."""
    auth = "Basic " + b64encode(f"admin:{PASSWORD}".encode()).decode()
    request = urllib.request.Request(
        f"{server}/api/2.0/mlflow/experiments/search?max_results=1",
        headers={"Host": "attacker.example:80", "Authorization": auth},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code in (400, 403)
