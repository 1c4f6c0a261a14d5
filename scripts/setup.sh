#!/usr/bin/env bash
# Sets fmae up on a Debian/Ubuntu machine: the FashionMNIST data package, PostgreSQL (the cluster
# recipe's tracking database), Chromium (for the MLflow UI tests) and a Python virtual environment
# in .venv with the project installed (console command `fmae`).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
log=$(mktemp -t fmae-setup.XXXXXX.log)  # apt's and pip's full output: named if something fails
updated=""
run_logged() {
  "$@" >>"$log" 2>&1 || { echo "scripts/setup.sh: '$*' failed; its output is in $log" >&2; tail -20 "$log" >&2; exit 1; }
}
apt_install() {
  [ -n "$updated" ] || { run_logged $sudo apt-get update -q; updated=1; }
  run_logged env DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "$@"
}

data=/usr/share/datasets/fashion-mnist
if [ -z "${FMAE_DATA_DIR:-}" ] && [ ! -f "$data/t10k-labels-idx1-ubyte.gz" ]; then
  echo "Installing the Debian package dataset-fashion-mnist (FashionMNIST into $data) ..."
  apt_install dataset-fashion-mnist
fi

# The ui tests (tests/test_pipeline.py) drive this browser headless through Playwright; Playwright's
# own browser download (`playwright install`) reaches beyond the package registries, so it is not used.
if ! command -v chromium >/dev/null; then
  echo "Installing the Debian package chromium (the MLflow UI tests' browser) ..."
  apt_install chromium
fi

# PostgreSQL: the cluster recipe's tracking database, and the one the cluster tests start.
if ! compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; then
  echo "Installing the Debian package postgresql (the cluster recipe's tracking database) ..."
  apt_install postgresql
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
echo "Installing fmae and its pinned dependencies into .venv (a few minutes the first time) ..."
# its output goes to the log, which a failure names
run_logged .venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/fmae --help >/dev/null
rm -f "$log"
echo "fmae is set up: . .venv/bin/activate"
