"""`main`: the whole study as one parent run, through `mlflow run . -e main`; and what a person
then sees in the MLflow UI: headless Chromium (Debian's `chromium`, driven by Playwright) browsing
a real `mlflow server` on the store that study wrote. One small study serves both (the `ui` tests
leave screenshots in their tmp_path)."""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from mlflow.tracking import MlflowClient

from experiments.errors import UserError
from experiments.pipeline import Config
from experiments.tracking.links import ui_path
from experiments.tracking.queries import get_run
from tests.helpers import free_port, start_mlflow_server, stop_mlflow_server, subprocess_env
from tests.study import STUDY

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ML = "workflowType=machine_learning"  # the UI's training view (MLflow 3 opens experiments in its GenAI view)
WAIT_MS = 60_000  # a loaded 2-core machine renders slowly


def test_main_runs_the_steps_in_order_as_children(study, tmp_path):
    parent = study.main
    assert parent.info.status == "FINISHED" and parent.info.run_name == "main"
    steps = sorted(
        (r for r in study.runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id),
        key=lambda r: r.info.start_time,
    )
    assert [r.data.tags["fmae.step"] for r in steps] == ["tune", "finetune", "finetune", "vae", "analyze"]
    # top_encoders=1: the search's best trial that ran to the end is fine-tuned in full mode as well
    assert steps[1:3] == [study.frozen, study.full]
    trial = get_run(study.full.data.tags["fmae.source_run_id"])
    assert trial.data.tags["mlflow.parentRunId"] == study.tune.info.run_id and "fmae.pruned" not in trial.data.tags
    assert study.full.data.params["model_uri"] == f"runs:/{trial.info.run_id}/encoder"
    assert study.full.data.tags["fmae.source_trial"] == trial.info.run_name
    assert study.frozen.data.params["model_uri"] == "models:/fmae-cae-encoder/1"  # this run's search
    assert study.frozen.data.params["epochs"] == str(
        STUDY["epochs"]
    )  # a step parameter given to main reaches the steps
    for run in study.runs:  # trials ASHA stopped early too: that is the search working
        assert run.info.status == "FINISHED", (run.info.run_name, run.info.status)
    # The study's results on the top run, and a description linking every step's run
    best_classifier = max((study.frozen, study.full), key=lambda r: r.data.metrics["test_accuracy"])
    expected = {
        "best_test_loss": study.tune,
        "test_accuracy": best_classifier,
        "test_recon_mse": study.vae,
        "cae_knn_accuracy": study.analyze,
        "vae_knn_accuracy": study.analyze,
    }
    for metric, run in expected.items():
        assert parent.data.metrics[metric] == pytest.approx(run.data.metrics[metric]), metric
    assert parent.data.metrics["frozen_test_accuracy"] == pytest.approx(study.frozen.data.metrics["test_accuracy"])
    note = parent.data.tags["mlflow.note.content"]
    for run in steps:
        assert f"[{run.data.tags['fmae.step']}](#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in note


def test_every_run_says_what_it_is(study):
    """A description on each step run and each trial: what it trained, its result, where it came from."""
    for run in study.runs:
        note = run.data.tags.get("mlflow.note.content", "")
        assert len(note) > 40, (run.info.run_name, note)
    assert "ran all" in study.finished.data.tags["mlflow.note.content"]
    assert "Stopped early" in study.pruned.data.tags["mlflow.note.content"]
    assert study.analyze.data.tags["mlflow.note.content"].startswith("**Both latent spaces compared**")


def test_report_puts_results_first_and_links_every_run(study, tmp_path):
    page = MlflowClient().download_artifacts(study.main.info.run_id, "report.html", str(tmp_path))
    html = open(page).read()
    base = f"http://127.0.0.1:{study.ui_port}/#/experiments/{study.experiment_id}/runs/"
    for run in (study.tune, study.frozen, study.full, study.vae, study.analyze):
        assert f'<h2>{run.data.tags["fmae.step"]}</h2><p>Run <a href="{base}{run.info.run_id}?{ML}">' in html
    best = [t for t in study.trials if t.data.tags.get("fmae.best_trial") == "true"]
    assert len(best) == 1 and f'{base}{best[0].info.run_id}?{ML}">{best[0].info.run_name}</a>' in html
    for key in ("encoded_space_dim", "n_channels", "optimizer", "batch_norm"):  # the best hyperparameters
        assert f"<tr><td>{key}</td><td>{study.tune.data.params['best_' + key]}</td></tr>" in html
    lr = re.search(r"<td>lr</td><td>([^<]+)</td>", html).group(1)  # a float param, rounded like the metrics
    assert len(lr.split("e")[0].replace(".", "").lstrip("0")) <= 4
    assert float(lr) == pytest.approx(float(study.tune.data.params["best_lr"]), rel=1e-3)
    assert "data:image/png;base64," in html and "size–quality front" in html
    tables = re.findall(r"<table>(.*?)</table>", html.split("<details>")[0])
    assert tables and not [t for t in tables if "system/" in t]  # system metrics only in the folded part
    shown = re.search(r"<td>best_test_loss</td><td>([^<]+)</td>", html).group(1)  # rounded to what means something
    assert len(shown.replace(".", "").lstrip("0")) <= 4 and float(shown) == pytest.approx(
        study.tune.data.metrics["best_test_loss"], rel=1e-3
    )


def test_main_rejects_a_parameter_no_step_takes():
    with pytest.raises(UserError, match="no step has that parameter"):
        Config.from_argv(["--nonsense", "1"])
    with pytest.raises(UserError, match="not a valid int"):
        Config.from_argv(["--num_samples", "many"])


# --- what a person sees in the MLflow UI -------------------------------------------------------


@pytest.mark.parametrize("stop, status", [(signal.SIGTERM, 143), (signal.SIGKILL, -signal.SIGKILL)])
def test_fmae_ui_serves_the_study_without_mlflows_job_runner_and_stops_with_it(study, tmp_path, stop, status):
    """`fmae ui` prints the link to the study's runs and serves it, spares the machine MLflow's job
    runner (GenAI jobs, none of them fmae's, whose polling consumers burn over half a core), and
    stopped by kill (SIGTERM, or even SIGKILL, to it alone) takes its server with it: none is left
    on the port."""
    port, experiment = free_port(), MlflowClient().get_experiment(study.experiment_id).name
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments", "ui", "--port", str(port)],
        cwd=tmp_path,
        env=subprocess_env(
            MLFLOW_TRACKING_URI=f"sqlite:///{study.folder / 'mlflow.db'}", MLFLOW_EXPERIMENT_NAME=experiment
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    server = []
    try:
        lines = iter(proc.stdout.readline, "")
        link = next((line.split("Open: ", 1)[1].strip() for line in lines if line.startswith("Open: ")), None)
        assert link == f"http://127.0.0.1:{port}/{ui_path(study.experiment_id)}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as answer:
            assert answer.status == 200
        server += psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in server]
        assert commands and not [c for c in commands if "huey" in c or "_job_runner" in c], commands
        proc.send_signal(stop)
        assert proc.wait(60) == status
        _, alive = psutil.wait_procs(server, timeout=30)
        assert not alive, [p.cmdline() for p in alive]
    finally:  # whatever a failure left behind
        for process in [psutil.Process(proc.pid), *server] if proc.poll() is None else server:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        proc.wait(60)


@pytest.fixture(scope="module")
def ui(tmp_path_factory, study):
    """The URL of `mlflow server` serving the study's store (and its artifacts) on 127.0.0.1, at the
    port the study's links (console, report.html) were written for."""
    folder = tmp_path_factory.mktemp("ui")
    proc, url = start_mlflow_server(folder, store=f"sqlite:///{study.folder / 'mlflow.db'}", port=study.ui_port)
    yield url
    stop_mlflow_server(proc)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the test extra has playwright: pip install -e '.[test]'"
    )
    if CHROMIUM is None:
        message = "no chromium on PATH: scripts/setup.sh installs Debian's chromium package"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI's setup installs it: a skip there would hide a broken set-up
        pytest.skip(message)
    sync_api.expect.set_options(timeout=WAIT_MS)
    with sync_api.sync_playwright() as playwright:
        # Debian's Chromium, not one Playwright downloads (`playwright install` needs the internet)
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.set_default_timeout(WAIT_MS)
    yield page
    page.close()


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def shown_text(markdown: str) -> str:
    """The first line of a markdown text as a page shows it: links by their text, no emphasis or list marks."""
    line = next(line for line in markdown.splitlines() if line.strip())
    line = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", line)
    line = re.sub(r"^\s*(#+|[-*+]|\d+\.)\s+", "", line)
    return " ".join(re.sub(r"\*\*|__|\*|`", "", line).split())


def tick_value(label: str) -> float:
    """A Plotly axis label as a number ("0.08", "−0.1", "2k", "50m")."""
    label = label.replace("\u2212", "-").strip()
    scale = {"k": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "m": 1e-3, "\u03bc": 1e-6, "\u00b5": 1e-6}.get(label[-1:], 1)
    return float(label[:-1] if scale != 1 else label) * scale


def curves(plot, runs: int) -> dict[str, float]:
    """The runs a Plotly chart draws a curve for, each with its highest point, once it draws at least
    `runs` of them (the UI fetches metric histories one run at a time)."""
    deadline = time.monotonic() + WAIT_MS / 1000
    while True:
        drawn = dict(
            plot.evaluate("p => (p.data || []).filter(t => t.y && t.y.length).map(t => [t.name, Math.max(...t.y)])")
        )
        if len(drawn) >= runs or time.monotonic() > deadline:
            return drawn
        time.sleep(0.5)


def open_metric_page(page, metric: str) -> None:
    """Click a metric's link on the Compare page until its metric page opens: on a loaded machine a
    click while the page re-renders was lost once, and the curves were then read from the parallel
    coordinates plot left on the Compare page (seen in a full local run)."""
    link = page.get_by_role("link", name=metric, exact=True)
    for _ in range(3):
        if "#/metric?" not in page.url:  # not yet there: a slow navigation is not clicked again
            link.click()
        with contextlib.suppress(AssertionError):
            expect(page).to_have_url(re.compile(r"#/metric\?"), timeout=20_000)
            return
    expect(page).to_have_url(re.compile(r"#/metric\?"))


def open_run_tree(page, ui, experiment_id, view=""):
    """The experiment's training runs (table, or CHART view) with `main` and its `tune` step unfolded, as a
    person does to reach the trials: they are grandchildren of `main`."""
    page.goto(f"{ui}/#/experiments/{experiment_id}/runs?{ML}" + (f"&compareRunsMode={view}" if view else ""))
    for parent in ("main", "tune"):
        page.get_by_role("gridcell").filter(has=page.get_by_role("link", name=parent, exact=True)).get_by_role(
            "button"
        ).click()


@pytest.mark.ui
def test_main_run_shows_its_headline_metrics_and_a_description_linking_its_steps(page, ui, study, tmp_path):
    main, eid = study.main, study.experiment_id
    page.goto(f"{ui}/#/experiments/{eid}/runs/{main.info.run_id}?{ML}")
    expect(page.get_by_role("heading", name="main", exact=True)).to_be_visible()
    for metric in ("best_test_loss", "test_accuracy", "test_recon_mse", "cae_knn_accuracy", "vae_knn_accuracy"):
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=metric, exact=True))
        row.scroll_into_view_if_needed()
        expect(row).to_be_visible()
        expect(row).to_contain_text(str(main.data.metrics[metric]))
    page.screenshot(path=tmp_path / "main_metrics.png")
    note = main.data.tags["mlflow.note.content"]
    expect(page.get_by_text(shown_text(note))).to_be_visible()
    show_more = page.get_by_text("Show more", exact=True)  # a long description opens folded
    if show_more.count():
        show_more.click()
    page.screenshot(path=tmp_path / "main_description.png")
    steps = {r.info.run_name: r for r in study.runs if r.data.tags.get("mlflow.parentRunId") == main.info.run_id}
    assert set(steps) == {"tune", "finetune", "vae", "analyze"}
    for name, run in steps.items():  # links into the training view, not the GenAI one
        expect(page.locator(f'a[href*="/runs/{run.info.run_id}?{ML}"]')).to_have_text(name)
    with page.context.expect_page() as opened:  # the description's links open a new tab
        page.locator(f'a[href*="/runs/{steps["tune"].info.run_id}?{ML}"]').click()
    expect(opened.value.get_by_role("heading", name="tune", exact=True)).to_be_visible()
    opened.value.close()


@pytest.mark.ui
def test_search_figures_are_served(page, ui, study, tmp_path):
    page.goto(f"{ui}/#/experiments/{study.experiment_id}/runs/{study.tune.info.run_id}?{ML}")
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("learning_curves.png", exact=True).click()
    page.wait_for_function("() => [...document.images].some(i => i.complete && i.naturalWidth >= 400)")
    page.screenshot(path=tmp_path / "learning_curves.png")


@pytest.mark.ui
def test_val_loss_chart_holds_only_the_cae_trials_on_their_scale(page, ui, study, tmp_path):
    """val_loss is the CAE's MSE per pixel; the VAE's val_elbo (nats per image) must not share its
    chart, or the trials' curves flatten at the bottom of a 0-500 axis."""
    open_run_tree(page, ui, study.experiment_id, view="CHART")
    cae_runs = {r.info.run_name for r in study.runs if "val_loss" in r.data.metrics}
    assert cae_runs == {r.info.run_name for r in study.trials}

    def chart(metric):
        page.get_by_placeholder("Search metric charts").fill(metric)
        card = page.get_by_test_id("experiment-view-compare-runs-card").filter(has=page.get_by_text(metric, exact=True))
        plotted = curves(card.locator(".js-plotly-plot"), len(cae_runs) if metric == "val_loss" else 1)
        page.screenshot(path=tmp_path / f"chart_{metric}.png")
        return plotted, [tick_value(t) for t in card.locator(".ytick text").all_text_contents()]

    plotted, ticks = chart("val_loss")
    assert set(plotted) == cae_runs and study.vae.info.run_name not in plotted, plotted
    assert ticks and all(0 <= t < 1 for t in ticks), ticks  # what a person reads off the axis
    assert max(plotted.values()) < 1
    # The check above can fail: the VAE's own chart is on a scale of hundreds of nats.
    plotted, ticks = chart("val_elbo")
    assert set(plotted) == {study.vae.info.run_name} and max(ticks) > 1, (plotted, ticks)


@pytest.mark.ui
def test_compare_a_stopped_trial_with_a_finished_one(page, ui, study, tmp_path):
    open_run_tree(page, ui, study.experiment_id)
    pair = [study.pruned.info.run_name, study.finished.info.run_name]
    for name in pair:
        row = page.get_by_role("row").filter(has=page.get_by_role("link", name=name, exact=True))
        row.get_by_role("checkbox", name=re.compile("row selection")).check()
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_text("Run details")).to_be_visible()
    expect(page.get_by_role("heading", name="Comparing 2 Runs from 1 Experiment")).to_be_visible()
    for name in pair:
        expect(page.get_by_text(name, exact=True).first).to_be_visible()
    expect(page.get_by_role("row").filter(has=page.get_by_text("fmae.pruned", exact=True))).to_contain_text("true")
    expect(page.get_by_text("trial_config.json").first).to_be_visible()  # the artifacts section (it broke Compare once)
    for tab in ("Scatter Plot", "Box Plot", "Contour Plot", "Parallel Coordinates Plot"):
        page.get_by_role("tab", name=tab).click()
        page.screenshot(path=tmp_path / f"compare_{tab.split()[0].lower()}.png")
        expect(page.get_by_text("Something went wrong")).to_have_count(0)
    open_metric_page(page, "val_loss")  # both runs' curves on one chart
    assert set(curves(page.locator(".js-plotly-plot"), 2)) == set(pair)
    page.screenshot(path=tmp_path / "compare_val_loss.png")
    expect(page.get_by_text("Something went wrong")).to_have_count(0)


@pytest.mark.ui
def test_champion_encoder_version_page_shows_its_description(page, ui, study, tmp_path):
    version = MlflowClient().get_model_version_by_alias("fmae-cae-encoder", "champion")
    page.goto(f"{ui}/#/models/fmae-cae-encoder/versions/{version.version}")
    expect(page.get_by_role("heading", name=f"Version {version.version}")).to_be_visible()
    expect(page.get_by_role("status", name="champion")).to_be_visible()  # its alias tag "@ champion"
    page.screenshot(path=tmp_path / "champion.png")
    assert (version.description or "").strip(), f"fmae-cae-encoder version {version.version} has no description"
    expect(page.get_by_text(shown_text(version.description)).first).to_be_visible()


def expect_training_view(page) -> None:
    """The Model-training view (its runs, its run pages), not MLflow 3's GenAI overview."""
    expect(page).to_have_url(re.compile(ML))
    expect(page.get_by_role("link", name="Judges")).to_have_count(0)  # a GenAI-only page in its side bar


@pytest.mark.ui
def test_every_link_fmae_gives_lands_on_the_training_runs_in_a_fresh_browser(page, ui, study, tmp_path):
    """A fresh profile (MLflow keeps the GenAI / Model-training choice per browser, GenAI first):
    `fmae ui`'s link, the console's run link, a version's and report.html's links all land on runs."""
    from experiments.tracking.links import ui_path

    page.goto(f"{ui}/{ui_path(study.experiment_id)}")  # what `fmae ui` prints: the study's runs
    expect(page.get_by_role("gridcell").get_by_role("link", name="main", exact=True)).to_be_visible()
    expect_training_view(page)
    page.screenshot(path=tmp_path / "fmae_ui_link.png")
    printed = re.search(rf"Run: (http://127.0.0.1:{study.ui_port}/\S+/runs/{study.main.info.run_id}\S*)", study.console)
    page.goto(printed.group(1))  # the link `main` printed when it ended
    expect(page.get_by_role("heading", name="main", exact=True)).to_be_visible()
    expect_training_view(page)
    page.goto(f"{ui}/#/models/fmae-cae-encoder/versions/1")  # a version's description links its run (in a new tab)
    with page.context.expect_page() as opened:
        page.locator(f'a[href*="/runs/{study.tune.info.run_id}?{ML}"]').first.click()
    expect(opened.value.get_by_role("heading", name="tune", exact=True)).to_be_visible()
    expect_training_view(opened.value)
    opened.value.close()
    report = MlflowClient().download_artifacts(study.main.info.run_id, "report.html", str(tmp_path))
    page.goto(f"file://{report}")  # report.html read on its own: its links open the runs
    page.get_by_role("link", name="vae", exact=True).click()
    expect(page.get_by_role("heading", name="vae", exact=True)).to_be_visible()
    expect_training_view(page)


@pytest.mark.ui
def test_a_visitor_on_the_genai_overview_reads_where_the_study_is(page, ui, study, tmp_path):
    page.goto(f"{ui}/#/experiments/{study.experiment_id}")  # the experiment list's link, in a fresh browser
    expect(page).to_have_url(re.compile("workflowType=genai"))
    expect(page.get_by_text('This study\'s runs are under "Model training" (top left of this page)')).to_be_visible()
    page.screenshot(path=tmp_path / "genai_overview.png")
    got_it = page.get_by_role("button", name="Got it")  # MLflow's "Detect Issues" pop-over holds the page
    if got_it.count():
        got_it.click()
    page.get_by_role("button", name="Model training").click()  # where the first line says to go
    expect(page.get_by_role("gridcell").get_by_role("link", name="main", exact=True)).to_be_visible()


@pytest.mark.ui
def test_stopped_trials_stand_apart_in_the_runs_table(page, ui, study, tmp_path):
    open_run_tree(page, ui, study.experiment_id)
    stopped = page.get_by_role("gridcell").get_by_role("link", name=re.compile(r"^t\d\d-stopped-"))
    expect(stopped).to_have_count(len([t for t in study.trials if t.data.tags.get("fmae.pruned") == "true"]))
    expect(page.get_by_role("link", name=study.finished.info.run_name, exact=True)).to_be_visible()
    page.screenshot(path=tmp_path / "runs_table.png")


@pytest.mark.ui
def test_the_best_trial_links_the_version_its_encoder_became(page, ui, study, tmp_path):
    best = next(t for t in study.trials if t.data.tags.get("fmae.best_trial") == "true")
    page.goto(f"{ui}/#/experiments/{study.experiment_id}/runs/{best.info.run_id}?{ML}")
    show_more = page.get_by_text("Show more", exact=True)
    if show_more.count():
        show_more.click()
    with page.context.expect_page() as opened:  # description links open a new tab
        page.get_by_role("link", name="fmae-cae-encoder version 1", exact=True).click()
    expect(opened.value.get_by_role("heading", name="Version 1")).to_be_visible()
    opened.value.screenshot(path=tmp_path / "best_trial_version.png")


@pytest.mark.ui
def test_no_system_metric_is_listed_under_a_model(page, ui, study, tmp_path):
    """A finished trial's metrics table: its encoder holds its test_loss, not CPU and disk figures."""
    page.goto(f"{ui}/#/experiments/{study.experiment_id}/runs/{study.finished.info.run_id}?{ML}")
    row = page.get_by_role("row").filter(
        has=page.get_by_role("link", name="system/cpu_utilization_percentage", exact=True)
    )
    row.scroll_into_view_if_needed()
    expect(row).to_be_visible()
    expect(row).not_to_contain_text("encoder")
    result = page.get_by_role("row").filter(has=page.get_by_role("link", name="test_loss", exact=True))
    expect(result).to_contain_text("encoder")  # the trial's result is its models\'
    page.screenshot(path=tmp_path / "tune_metrics.png")
