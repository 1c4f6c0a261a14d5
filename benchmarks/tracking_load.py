"""Many writers on one MLflow tracking store, as a search's trials write: where sqlite stops
being enough. One run, one table, ratios.

    python -m benchmarks.tracking_load                               # 2..64 writers, three stores
    python -m benchmarks.tracking_load --writers 8,16 --stores sqlite,server-sqlite --epochs 20

Stores, side by side:
- `sqlite`: a sqlite file that every writer opens itself (MLFLOW_TRACKING_URI=sqlite:///...,
  what a search on one machine does by default);
- `server-sqlite`: `mlflow server` (its default workers, no job runner) on a sqlite file, writers
  over HTTP;
- `server-postgres`: the same server on PostgreSQL (a throwaway one, tests/postgres.py), as the
  README's cluster recipe runs it.

Each writer is a process with its own MLflow client, as each trial is. It creates its run and
logs its params, waits for the others, then logs `epochs` epochs the way a trial logs one: one
log_batch of train_loss, val_loss and epoch_seconds with step = epoch, back to back. A real trial
writes one such batch every few seconds; back to back, the writers measure what the store can
take. A call that raises counts as an error (in a trial it would have failed the trial) and is
retried; afterwards every run must hold each epoch exactly once: what is missing is lost, what
is there twice is duplicated. For the servers, `retried` counts log-batch requests the server
answered with an error, which MLflow's client retried without a word, and `locked` the
"database is locked" errors in its log.

Timings are wall-clock and noisy (one machine runs the writers, the server and the database):
read the ratios.
"""

import argparse
import contextlib
import json
import multiprocessing
import os
import queue
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

STORES = ("sqlite", "server-sqlite", "server-postgres")
KEYS = ("train_loss", "val_loss", "epoch_seconds")
ATTEMPTS = 5  # a writer's own retries of a batch that raised, before it counts the epoch lost


def write_epochs(uri: str, experiment_id: str, epochs: int, barrier, results) -> None:
    """One writer (a trial): its run, then `epochs` batches back to back."""
    client = MlflowClient(uri)
    run_id = client.create_run(experiment_id).info.run_id
    client.log_batch(run_id, params=[Param(k, "1") for k in ("lr", "batch_size", "n_channels")])
    barrier.wait(timeout=600)
    started, latencies, errors, messages = time.time(), [], 0, []
    for epoch in range(1, epochs + 1):
        now = int(time.time() * 1000)
        batch = [Metric(key, 1.0 / epoch, now, epoch) for key in KEYS]
        for _ in range(ATTEMPTS):
            sent = time.perf_counter()
            try:
                client.log_batch(run_id, metrics=batch)
                latencies.append(time.perf_counter() - sent)
                break
            except MlflowException as exc:
                errors += 1
                text = str(exc)
                messages.append("database is locked" if "database is locked" in text else text.splitlines()[0][:200])
                time.sleep(0.1)
    results.put(
        {
            "run_id": run_id,
            "started": started,
            "ended": time.time(),
            "latencies": latencies,
            "errors": errors,
            "messages": messages[:3],
        }
    )


def count_values(client: MlflowClient, run_ids: list[str], epochs: int) -> tuple[int, int]:
    """(lost, duplicated) values over every run and key: each epoch must be there exactly once."""
    lost = duplicated = 0
    for run_id in run_ids:
        for key in KEYS:
            steps = [m.step for m in client.get_metric_history(run_id, key)]
            lost += len(set(range(1, epochs + 1)) - set(steps))
            duplicated += len(steps) - len(set(steps))
    return lost, duplicated


def measure(uri: str, writers: int, epochs: int, context) -> dict:
    """`writers` processes logging `epochs` epochs each to uri, started together."""
    client = MlflowClient(uri)
    experiment_id = client.create_experiment(f"load-{writers}-{time.time_ns()}")
    barrier, results = context.Barrier(writers), context.Queue()
    processes = [
        context.Process(target=write_epochs, args=(uri, experiment_id, epochs, barrier, results), daemon=True)
        for _ in range(writers)
    ]
    for process in processes:
        process.start()
    rows = []
    while len(rows) < writers:
        with contextlib.suppress(queue.Empty):
            rows.append(results.get(timeout=5))
        crashed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
        if crashed:
            raise RuntimeError(f"{len(crashed)} writer(s) crashed (exit {crashed[0]}); see their traceback above")
    for process in processes:
        process.join()
    latencies = sorted(s for row in rows for s in row["latencies"])
    seconds = max(r["ended"] for r in rows) - min(r["started"] for r in rows)
    lost, duplicated = count_values(client, [r["run_id"] for r in rows], epochs)
    return {
        "writers": writers,
        "writes": len(latencies),
        "seconds": seconds,
        "writes_per_s": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] if latencies else float("nan"),
        "max_ms": 1000 * latencies[-1] if latencies else float("nan"),
        "errors": sum(r["errors"] for r in rows),
        "lost": lost,
        "duplicated": duplicated,
        "messages": sorted({m for r in rows for m in r["messages"]})[:3],
    }


@contextlib.contextmanager
def open_store(store: str, folder: Path):
    """(tracking URI, server log or None) for one kind of store, fresh, in folder."""
    from tests.helpers import start_mlflow_server, stop_mlflow_server  # here: writers re-import this module
    from tests.postgres import throwaway_postgres

    if store == "sqlite":
        yield f"sqlite:///{folder / 'mlflow.db'}", None
        return
    with contextlib.ExitStack() as stack:
        backend = (
            f"sqlite:///{folder / 'server.db'}"
            if store == "server-sqlite"
            else stack.enter_context(throwaway_postgres())
        )
        # The recipe's server: MLflow's default workers, without its job runner (start_mlflow_server's default)
        server, url = start_mlflow_server(folder, store=backend, workers=None)
        stack.callback(stop_mlflow_server, server)
        yield url, folder / "server.log"


def server_answers(log: Path | None) -> dict[str, int]:
    """From a server's log: log-batch requests it answered with anything but 200 (MLflow's client
    retries those without a word), and "database is locked" errors."""
    text = log.read_text() if log else ""
    retried = sum(1 for line in text.splitlines() if "/runs/log-batch" in line and '" 200' not in line)
    return {"retried": retried, "locked": text.count("database is locked")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--writers", default="2,4,8,16,32,64", help="comma-separated numbers of concurrent writers")
    parser.add_argument("--epochs", type=int, default=30, help="batches each writer logs")
    parser.add_argument("--stores", default=",".join(STORES), help=f"comma-separated, from: {', '.join(STORES)}")
    parser.add_argument("--json", default="", help="also write the results to this file")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.writers.split(",")]
    stores = [s.strip() for s in args.stores.split(",")]
    unknown = set(stores) - set(STORES)
    if unknown:
        parser.error(f"unknown store(s) {', '.join(sorted(unknown))}; choose from {', '.join(STORES)}")
    # MLflow's telemetry thread, forked with the preloaded module, races the writers over os.environ.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Writers start from a process that has MLflow imported already: seconds, not minutes, for 32.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["mlflow", "mlflow.tracking", "sqlalchemy"])
    rows = []
    with contextlib.ExitStack() as stack:
        opened = {}
        for store in stores:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            opened[store] = stack.enter_context(open_store(store, folder))
            measure(opened[store][0], 4, 3, context)  # warm-up: each server worker's first requests set up its store
        for writers in counts:  # the stores take turns at each size: the machine's other load hits them alike
            for store, (uri, server_log) in opened.items():
                before = server_answers(server_log)
                row = {"store": store, **measure(uri, writers, args.epochs, context)}
                after = server_answers(server_log)
                row.update({key: after[key] - before[key] for key in after})
                rows.append(row)
                print(
                    f"{store:<16}{writers:>4} writers: {row['writes_per_s']:7.1f} writes/s, "
                    f"p99 {row['p99_ms']:7.1f} ms, "
                    f"{row['errors']} errors, {row['retried']} retried, {row['locked']} locked, {row['lost']} lost, "
                    f"{row['duplicated']} duplicated" + (f"  e.g. {row['messages'][0]}" if row["messages"] else ""),
                    flush=True,
                )

    by_key = {(r["store"], r["writers"]): r for r in rows}
    print(f"\none log_batch (3 metrics, step = epoch) per call, {args.epochs} per writer, back to back")
    print(
        f"{'store':<16}{'writers':>8}{'writes/s':>10}{'x sqlite':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}"
        f"{'errors':>8}{'retried':>8}{'locked':>8}{'lost':>6}{'dup':>5}"
    )
    for row in rows:
        base = by_key.get(("sqlite", row["writers"]))
        ratio = f"{row['writes_per_s'] / base['writes_per_s']:.2f}x" if base else "-"
        print(
            f"{row['store']:<16}{row['writers']:>8}{row['writes_per_s']:>10.1f}{ratio:>9}{row['p50_ms']:>9.1f}"
            f"{row['p99_ms']:>9.1f}{row['max_ms']:>9.1f}{row['errors']:>8}{row['retried']:>8}{row['locked']:>8}{row['lost']:>6}"
            f"{row['duplicated']:>5}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
