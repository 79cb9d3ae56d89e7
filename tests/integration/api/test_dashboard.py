"""The dashboard in a real headless Chromium (Debian's package, driven by Playwright): every page loads without
console errors and shows what the API returns; open a dataset, follow lineage, cancel a job as an operator and be
refused as a reader. Screenshots of each page go to ``$GRANARY_SCREENSHOT_DIR`` (docs/images/server for the docs)
or the test's temporary folder."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from granary.config import Settings
from tests.integration.api.seed import Seeded, seed, seed_models, seed_run
from tests.integration.api.server_proc import running_server

pytestmark = pytest.mark.slow
CHROMIUM = os.environ.get("GRANARY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Seeded, Path]]:
    """A seeded catalog behind a real `granary server` in tokens mode."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    root = tmp_path_factory.mktemp("dash")
    settings = Settings.from_env(environ={}, home=root / "g")
    seeded = seed(settings)
    seed_models(settings, seed_run(settings))  # a real tiny training run and models from it: the runs and models pages
    _fire_alert(settings, seeded)
    shots = Path(os.environ.get("GRANARY_SCREENSHOT_DIR") or root / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    with running_server(settings, auth="tokens", log=root / "server.log") as url:
        yield url, seeded, shots


def _fire_alert(settings: Settings, seeded: Seeded) -> None:
    from granary.catalog import open_catalog
    from granary.monitor.events import EventLog, Finding

    EventLog(open_catalog(settings.catalog_url)).sync(
        [Finding("stall", "critical", {"job": seeded.jobs[1], "rank": "0"}, "training stalled at step 40")],
        now=1000.0)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the dashboard tests need playwright (granary[dev])")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield b
        b.close()


def open_page(browser: Any, url: str, token: str) -> tuple[Any, list[str]]:
    """A 1366x900 page (a laptop) with ``token`` stored, collecting console errors and uncaught exceptions."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 900})
    ctx.add_init_script(f"localStorage.setItem('granary.token', {token!r})")
    page = ctx.new_page()
    page.set_default_timeout(60_000)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    return page, errors


def visit(page: Any, url: str) -> None:
    page.goto(url)
    page.wait_for_selector("main[data-ready='1']")


PAGES = [
    ("overview", "#/", ["Overview", "GPUs in use", "Versions committed per day", "Open alerts",
                        "training stalled at step 40"]),
    ("datasets", "#/datasets", ["web-clean", "web-tok", "crawled pages"]),
    ("dataset", "#/datasets/web", ["Dataset web", "second crawl", "Version graph"]),
    ("lineage", "#/lineage/web-tok", ["Lineage of web-tok", "crawl-1.jsonl", "curated with pipeline basic"]),
    ("jobs", "#/jobs", ["train-4", "submitted", "GPUs waiting"]),
    ("nodes", "#/nodes", ["gpu-01", "GPUs in use per node"]),
    ("audit", "#/audit", ["chain verified", "principal.add", "token.issue"]),
    ("gateway", "#/gateway", ["llama-8b", "replica-0"]),
    ("runs", "#/runs", ["Training runs", "tiny-ckpt"]),
    ("run", "#/runs/tiny-ckpt", ["Run tiny", "finished", "6 / 6", "Checkpoints", "corpus-tok@", "start"]),
    ("models", "#/models", ["Models", "tiny", "v3 (int8-dynamic)", "staging → v2"]),
    ("model", "#/models/tiny", ["Model tiny", "Perplexity across versions", "int8-dynamic", "staging",
                                "tiny-ckpt step 6", "unrestricted", "allowed", "Not deployed", "register"]),
]


@pytest.mark.parametrize(("name", "route", "expected"), PAGES, ids=[p[0] for p in PAGES])
def test_page_loads_and_shows_the_data(site: tuple[str, Seeded, Path], browser: Any, name: str, route: str,
                                       expected: list[str]) -> None:
    url, seeded, shots = site
    page, errors = open_page(browser, url, seeded.tokens_by_role["admin"])
    visit(page, f"{url}/ui/{route}")
    text = page.inner_text("main")
    for snippet in expected:
        assert snippet in text, f"{snippet!r} not on the {name} page:\n{text[:2000]}"
    assert "Something went wrong" not in text and not page.query_selector(".error")
    if name == "jobs":
        assert seeded.jobs[0] in text and seeded.other_job not in text  # only its own tenant's jobs
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert errors == [], errors
    page.context.close()


def test_open_dataset_follow_lineage_and_version(site: tuple[str, Seeded, Path], browser: Any) -> None:
    url, seeded, shots = site
    page, errors = open_page(browser, url, seeded.tokens_by_role["reader"])
    visit(page, f"{url}/ui/")
    page.get_by_role("link", name="Datasets").click()
    page.wait_for_selector("main[data-ready='1'] >> text=web-tok")
    page.get_by_role("link", name="web-tok", exact=True).click()
    page.wait_for_selector("main[data-ready='1'] >> text=Dataset web-tok")
    page.get_by_role("link", name="Open in the lineage explorer").click()
    page.wait_for_selector("main[data-ready='1'] >> text=Lineage of web-tok")
    assert page.locator("svg g.node").count() == 6  # 4 versions and 2 raw files
    page.locator(f"svg a[href*='web-clean@{seeded.clean[:16]}']").click()
    page.wait_for_selector("main[data-ready='1'] >> text=web-clean @")
    page.get_by_role("button", name="Show the first rows (an audited read)").click()
    page.wait_for_selector("main table >> text=document 0 about granaries")
    page.get_by_role("button", name="Quality report").click()
    page.wait_for_selector("svg[aria-label='Document length (characters)']")
    page.screenshot(path=str(shots / "version.png"), full_page=True)
    assert errors == [], errors


def test_cancel_as_operator_refused_as_reader(site: tuple[str, Seeded, Path], browser: Any) -> None:
    url, seeded, shots = site
    job = seeded.jobs[2]
    page, errors = open_page(browser, url, seeded.tokens_by_role["reader"])
    visit(page, f"{url}/ui/#/jobs/{job}")
    page.get_by_role("button", name="Cancel job").click()
    refused = page.wait_for_selector(".error")
    assert "may not cancel job" in refused.inner_text()
    # sign in as the operator with the token box, keyboard only
    page.focus("#token")
    page.keyboard.type(seeded.tokens_by_role["writer"])
    page.keyboard.press("Enter")
    page.wait_for_selector("#who >> text=olive")
    page.wait_for_selector("main[data-ready='1'] >> text=Cancel job")
    page.get_by_role("button", name="Cancel job").click()
    page.wait_for_selector("[role=status] >> text=cancel-requested")
    page.screenshot(path=str(shots / "job.png"), full_page=True)
    assert [e for e in errors if "403" not in e] == []  # the refused POST logs a 403 resource error


def test_without_a_token_the_page_says_what_to_do(site: tuple[str, Seeded, Path], browser: Any) -> None:
    url, _seeded, _shots = site
    page, _errors = open_page(browser, url, "")
    visit(page, f"{url}/ui/#/datasets")
    assert "needs a token" in page.inner_text("main")


def test_overview_first_paint(site: tuple[str, Seeded, Path], browser: Any) -> None:
    """The overview renders with its data; the time is reported (benchmarks/server_bench.py), bounded here only
    against a hang."""
    url, seeded, _shots = site
    page, _errors = open_page(browser, url, seeded.tokens_by_role["admin"])
    visit(page, f"{url}/ui/")
    ms = page.evaluate("performance.now()")
    assert 0 < ms < 60_000


def test_tokens_version_shows_loader_samples(site: tuple[str, Seeded, Path], browser: Any) -> None:
    url, seeded, _shots = site
    page, errors = open_page(browser, url, seeded.tokens_by_role["reader"])
    visit(page, f"{url}/ui/#/versions/corpus-tok")
    page.get_by_role("button", name="Show what the loader yields (an audited read)").click()
    cell = page.wait_for_selector("main table code")
    assert cell.inner_text().split()[:4] == ["0", "1", "2", "3"]
    assert "12 samples of 32 tokens per epoch" in page.inner_text("main")
    assert errors == [], errors


def test_open_a_run_and_see_its_loss_curve(site: tuple[str, Seeded, Path], browser: Any) -> None:
    """From the runs list to a run: the loss chart draws one point per logged step, the checkpoints link to their
    versions."""
    url, seeded, _shots = site
    page, errors = open_page(browser, url, seeded.tokens_by_role["reader"])
    visit(page, f"{url}/ui/")
    page.get_by_role("link", name="Runs").click()
    page.wait_for_selector("main[data-ready='1'] >> text=tiny-ckpt")
    page.get_by_role("link", name="tiny-ckpt").click()
    page.wait_for_selector("main[data-ready='1'] >> text=Run tiny")
    d = page.get_attribute("svg[aria-label^='Loss'] path.curve[data-series='loss']", "d")
    assert d is not None and d.count("L") == 5  # 6 steps: a move and five lines
    assert page.locator("main table a[href*='tiny-ckpt@']").count() == 3
    assert errors == [], errors


def test_open_a_model_and_see_its_versions_and_metric_chart(site: tuple[str, Seeded, Path], browser: Any) -> None:
    """From the nav to a model: its versions table and the perplexity chart (one point per evaluated version,
    the values the API returns); the metric can be switched to accuracy."""
    import httpx

    url, seeded, _shots = site
    token = seeded.tokens_by_role["reader"]
    api = httpx.get(f"{url}/api/v1/models/tiny", headers={"Authorization": f"Bearer {token}"}).json()
    page, errors = open_page(browser, url, token)
    visit(page, f"{url}/ui/")
    page.get_by_role("link", name="Models").click()
    page.wait_for_selector("main[data-ready='1'] >> text=v3 (int8-dynamic)")
    page.get_by_role("link", name="tiny", exact=True).click()
    page.wait_for_selector("main[data-ready='1'] >> text=Model tiny")
    rows = page.locator("main h2:has-text('Versions') + .panel tbody tr")
    assert [rows.nth(i).locator("td").nth(1).inner_text() for i in range(rows.count())] == \
        ["int8-dynamic", "registered", "registered"]
    d = page.get_attribute("svg[aria-label^='Perplexity'] path.curve", "d")
    assert d is not None and d.count("L") == 2  # versions 1, 2 and 3: a move and two lines
    text = page.inner_text("main")
    for e in api["evaluations"]:
        assert f"{e['perplexity']:.4f}" in text
    page.get_by_role("link", name="accuracy").click()
    page.wait_for_selector("main[data-ready='1'] svg[aria-label^='Accuracy']")
    assert errors == [], errors
