"""What a person sees, in a real browser: Debian's Chromium, headless, driven through its chromedriver.

A real small sweep is run once for the module. Its report.html must render without console errors, with
every plot decoded; and the link the sweep prints, opened against a real ``mlflow ui`` (started here on
127.0.0.1 with a free port, ended afterwards), must show the sweep's runs rather than MLflow 3's GenAI
overview. Screenshots are kept under each test's tmp_path.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from needs import import_extra, missing

from mnist_bench.schema import Tag

CHROMIUM = "apt-get install chromium chromium-driver"
# 12 jobs: more than the 10 runs MLflow's charts draw unless a view says otherwise
SWEEP = ["-m", "lr=0.1,0.5", "seed=range(0,6)", "epochs=1", "dataset.train_limit=1000", "dataset.test_limit=500"]
JOBS = 12
SWEEP_NAME = "browser-sweep"
UI_START_S = 240  # mlflow ui on 2 busy cores takes up to a minute or two to answer
PAGE_S = 60


@dataclass
class Sweep:
    folder: Path
    uri: str
    stdout: str
    job_names: list[str]  # each job's run name (the parent's is SWEEP_NAME)


@pytest.fixture(scope="module")
def sweep(mnist_dir, tmp_path_factory, run_cli, make_store, hydra_args, runs_of) -> Sweep:
    folder = tmp_path_factory.mktemp("browser-sweep")
    store = make_store(folder)
    proc = run_cli([*SWEEP, f"sweep_name={SWEEP_NAME}", f"tracking.uri={store.uri}", *hydra_args(folder)], folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    names = sorted(run.info.run_name for run in runs_of(store.uri))
    assert len(names) == JOBS + 1 and SWEEP_NAME in names
    return Sweep(folder, store.uri, proc.stdout, [name for name in names if name != SWEEP_NAME])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium with its console log kept."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        missing(CHROMIUM)
    import_extra("selenium", "dev")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=webdriver.ChromeService(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def distinct_colours(png: Path) -> int:
    from PIL import Image  # matplotlib's own dependency

    with Image.open(png) as image:
        return len(image.convert("RGB").getcolors(maxcolors=1 << 24))


def severe(driver: Any) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.mark.slow  # with the module's sweep: about 40 s
def test_report_html_renders_with_every_plot_and_no_console_error(
    browser: Any, sweep: Sweep, run_cli, tmp_path: Path
) -> None:
    [line] = [line for line in sweep.stdout.splitlines() if line.startswith("report: ")]
    command = shlex.split(line.removeprefix("report: "))
    done = run_cli([*command[1:], "--out", str(tmp_path / "report")], sweep.folder)
    assert done.returncode == 0, done.stderr
    page = tmp_path / "report" / "report.html"

    browser.get_log("browser")  # what earlier pages logged is not this page's
    browser.get(page.as_uri())
    deadline = time.monotonic() + PAGE_S
    while browser.execute_script("return document.readyState") != "complete" and time.monotonic() < deadline:
        time.sleep(0.2)
    images = browser.execute_script(
        "return Array.from(document.images, i => [i.getAttribute('src').slice(0, 22), i.complete, i.naturalWidth])"
    )
    screenshot = tmp_path / "report.png"
    browser.save_screenshot(str(screenshot))

    assert severe(browser) == []
    assert len(images) >= 4, images  # curves, accuracy vs lr, seconds per epoch, confusion matrices
    assert all(src.startswith("data:image/png;base64") and done and width > 0 for src, done, width in images), images
    assert distinct_colours(screenshot) > 16, f"{screenshot} looks blank"
    text = browser.find_element("tag name", "body").text
    assert SWEEP_NAME in text
    assert "**" not in text and "`" not in text, "Markdown shown as its markers"


def link_query(link: str) -> tuple[str, dict[str, list[str]]]:
    """The UI's route and query parameters in a link to it: both follow the ``#``."""
    route, _, query = urllib.parse.urlsplit(link).fragment.partition("?")
    return route, urllib.parse.parse_qs(query)


def test_next_steps_link_to_the_runs_table_of_the_sweep_on_a_local_store_and_on_a_server() -> None:
    from mnist_bench.hydra_app.sweeper import next_steps

    report, runs = next_steps("my sweep", "sqlite:////tmp/a b/mlflow.db", "mnist-bench", "7", "k1")
    assert report.startswith("report: mnist-bench report --sweep 'my sweep'")
    serve, _, link = runs.removeprefix("runs: ").partition(", then open ")
    assert shlex.split(serve) == [
        "mlflow",
        "ui",
        "--backend-store-uri",
        "sqlite:////tmp/a b/mlflow.db",
        "--port",
        "5000",
    ]
    assert link.startswith("http://127.0.0.1:5000/#/experiments/7/runs?") and " " not in link
    route, query = link_query(link)
    assert route == "/experiments/7/runs"
    # No search parameter of its own: with one, MLflow's UI ignores the shared view (searchFilter and the rest)
    assert query == {"workflowType": ["machine_learning"], "viewStateShareKey": ["k1"]}

    _, runs = next_steps("it's", "https://user:secret@mlflow.example:8443/ui/?token=abc", "e", "3", "k2")
    link = runs.removeprefix("runs: ")
    assert link.startswith("https://mlflow.example:8443/ui/#/experiments/3/runs?") and "secret" not in link
    assert link_query(link)[1]["viewStateShareKey"] == ["k2"]


def test_a_view_the_store_refuses_is_one_warning_and_the_link_opens_the_experiments_runs(store, caplog) -> None:
    """A full disk can refuse the view at the sweep's end, after its jobs: the sweep still prints where to look."""
    from mnist_bench import tracking
    from mnist_bench.hydra_app.sweeper import next_steps, sweep_view

    client, _ = tracking.open_store(store.uri, "views")
    with caplog.at_level("WARNING", logger="mnist_bench.hydra_app"):
        assert sweep_view(client, "999999", "s", store.uri) is None  # no such experiment: the store refuses
    [record] = caplog.records
    assert "runs view was not saved" in record.getMessage() and "\n" not in record.getMessage()
    _, runs = next_steps("s", store.uri, "views", "999999", None)
    assert link_query(runs.rpartition(", then open ")[2])[1] == {"workflowType": ["machine_learning"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def mlflow_ui(sweep: Sweep) -> Iterator[tuple[list[str], int]]:
    """The ``mlflow ui`` command the sweep printed, run on 127.0.0.1 at a free port with one worker; it and
    the processes it starts (one process group) are ended afterwards. Yields the command as printed and
    the port."""
    [line] = [line for line in sweep.stdout.splitlines() if line.startswith("runs: ")]
    printed = shlex.split(line.removeprefix("runs: ").partition(", then open ")[0])
    assert printed[:2] == ["mlflow", "ui"] and printed[-2:] == ["--port", "5000"], line
    port = free_port()
    command = [sys.executable, "-m", "mlflow", *printed[1:-2], "--host", "127.0.0.1", "--port", str(port)]
    command += ["--workers", "1"]
    log = (sweep.folder / f"mlflow-ui-{port}.log").open("w")
    server = subprocess.Popen(command, cwd=sweep.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + UI_START_S
        while True:
            assert server.poll() is None, f"mlflow ui exited {server.returncode}: see {log.name}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"mlflow ui did not answer within {UI_START_S} s: see {log.name}"
            time.sleep(1)
        yield printed, port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.mark.slow  # mlflow ui takes 20-60 s to start on 2 cores
def test_the_printed_link_opens_the_sweeps_runs_in_mlflow_ui(
    browser: Any, sweep: Sweep, mlflow_ui: tuple[list[str], int], tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    _, port = mlflow_ui
    [line] = [line for line in sweep.stdout.splitlines() if line.startswith("runs: ")]
    link = line.rpartition(", then open ")[2]
    assert link.startswith("http://127.0.0.1:5000/#/experiments/"), line
    experiment_id = link_query(link)[0].split("/")[2]
    (key,) = link_query(link)[1]["viewStateShareKey"]
    view = json.loads(MlflowClient(sweep.uri).get_experiment(experiment_id).tags[Tag.SHARED_VIEW + key])
    search = view["searchFilter"]
    assert search == f"tags.sweep_name = '{SWEEP_NAME}' and tags.`mlflow.parentRunId` IS NOT NULL"
    browser.get(link.replace(":5000/", f":{port}/", 1))

    def body(driver: Any) -> str:
        return driver.find_element("tag name", "body").text

    try:
        WebDriverWait(browser, PAGE_S, poll_frequency=0.5).until(
            lambda driver: all(name in body(driver) for name in sweep.job_names)
        )
    except TimeoutException:
        pass  # the assertion below says what the page showed
    finally:
        browser.save_screenshot(str(tmp_path / "mlflow-runs.png"))
    text = body(browser)
    assert all(name in text for name in sweep.job_names), f"{sweep.job_names} not all in the page:\n{text[:2000]}"
    assert SWEEP_NAME not in text, "the parent run (no metrics) is left out of the runs and their charts"
    searches = browser.execute_script("return Array.from(document.querySelectorAll('input'), i => i.value)")
    assert "Run Name" in text and search in searches, searches

    # The chart view draws every job: its first chart is a bar chart of a summary metric, a bar a drawn run.
    browser.get(link.replace(":5000/", f":{port}/", 1) + "&compareRunsMode=CHART")
    bars = (
        "return Array.from(document.querySelectorAll('.js-plotly-plot'), "
        "p => p.querySelectorAll('.bars .point').length)"
    )
    try:
        WebDriverWait(browser, PAGE_S, poll_frequency=0.5).until(
            lambda driver: max(driver.execute_script(bars), default=0) >= JOBS
        )
    except TimeoutException:
        pass
    finally:
        browser.save_screenshot(str(tmp_path / "mlflow-charts.png"))
    assert max(browser.execute_script(bars), default=0) == JOBS, "runs drawn per bar chart, for 12 jobs"
