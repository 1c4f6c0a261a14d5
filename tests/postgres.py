"""A throwaway PostgreSQL, the database the cluster recipe's tracking server runs on: Debian's
`postgresql` package (scripts/setup.sh installs it), a data folder of its own, listening on
127.0.0.1 only, gone afterwards."""

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import free_port


def postgres_bin() -> Path:
    """The newest server binaries Debian's package installed (/usr/lib/postgresql/<ver>/bin), else
    pg_ctl's folder on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parent.parent.name))
    pg_ctl = found[-1] if found else shutil.which("pg_ctl")
    if not pg_ctl:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup.sh (Debian package postgresql).")
    return Path(pg_ctl).resolve().parent


@contextlib.contextmanager
def throwaway_postgres(database: str = "mlflow", user: str = "fmae") -> Iterator[str]:
    """A PostgreSQL server with one database; yields its URI, postgresql://user:pw@127.0.0.1:PORT/database.
    PostgreSQL refuses to run as root: as root, the server runs as the package's `postgres` user."""
    bin_dir = postgres_bin()
    folder = Path(tempfile.mkdtemp(prefix="fmae-postgres-"))  # under /tmp: the postgres user must reach it
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    password, port = secrets.token_urlsafe(12), free_port()
    data, log = folder / "data", folder / "postgres.log"

    def run(*cmd: str, **env: str) -> None:
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=120)
        if done.returncode != 0:
            server_log = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd)} exited {done.returncode}:\n{done.stderr}\n{server_log}")

    try:
        password_file = folder / "password"
        password_file.write_text(password)
        if as_owner:
            shutil.chown(password_file, "postgres", "postgres")
        # Passwords over TCP (scram-sha-256), as a server on a network would check them; the unix
        # socket lives in the folder, out of everyone else's way.
        run(
            *as_owner,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            user,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--encoding=UTF8",
            "--no-sync",
        )
        password_file.unlink()
        run(
            *as_owner,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder}",
            "start",
        )
        try:
            run(
                str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, database, PGPASSWORD=password
            )
            yield f"postgresql://{user}:{password}@127.0.0.1:{port}/{database}"
        finally:
            run(*as_owner, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
