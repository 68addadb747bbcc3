"""The user's journey in a real browser: headless Debian Chromium driven by Playwright, against a real hub
(IAMAuthenticator, IAMLocalSpawner, configurable-http-proxy), the dev IAM (HTTPS, trusted through an NSS
database, never by turning verification off) and the cluster service with the local backend.

Screenshots of every step go to test-artifacts/<test name>/NN-step.png (not committed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from cmsaf_hub.service.crypto import new_crypt_key
from devstack.hub import free_port
from devstack.hubs import launch_hub, shutdown_hub
from devstack.service_hubs import HUB_ENV, REPO, ServiceHub, service_config_text

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.asyncio(loop_scope="module")]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = REPO / "test-artifacts"
PREFIX = "services/cmsaf/"
#: long enough for a scheduler and workers to start on a busy 2-core machine
SLOW_STEP_MS = 120_000


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install playwright)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if shutil.which("certutil") is None:
        return "certutil is missing (apt-get install libnss3-tools), needed to trust the dev CA"
    return None


if reason := missing_browser():
    pytest.skip(reason, allow_module_level=True)

from playwright.async_api import Page, async_playwright, expect  # noqa: E402


#: The repository's config as a newcomer runs it (IAMAuthenticator, IAMLocalSpawner with JupyterLab), except:
#: no admin groups, so bob is a plain /cms user; the service registered by the test (fast loops); and
#: sessions as the hub's OS user (the browser journey is tested here, isolation in tests/test_isolation_*).
JOURNEY_ENV = {**HUB_ENV, "CMSAF_ADMIN_GROUPS": "", "CMSAF_SAME_USER": "on"}
#: a busy 2-core machine may need more than the default 30 s for JupyterLab to answer
SLOW_SPAWN = "c.Spawner.http_timeout = 90\nc.Spawner.start_timeout = 90\n"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def journey(tmp_path_factory, dev_pki):
    """One hub, dev IAM and cluster service for the whole module."""
    base = tmp_path_factory.mktemp("browser-e2e")
    service_dir = base / "service"
    key = new_crypt_key()
    hub = await launch_hub(
        base, env=JOURNEY_ENV,
        extra_config=SLOW_SPAWN + service_config_text(service_dir, port=free_port(), crypt_key=key),
    )
    try:
        sh = ServiceHub(hub=hub, service_dir=service_dir, crypt_key=key)
        await sh.wait_ready()
        yield sh
    finally:
        await shutdown_hub(hub, leftovers=base)


@pytest.fixture(scope="module")
def browser_home(tmp_path_factory, journey) -> Path:
    """A HOME whose NSS database trusts the dev CA: how Chromium on Linux learns a CA."""
    home = tmp_path_factory.mktemp("browser-home")
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True, timeout=30)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "cmsaf-dev-ca",
                    "-i", str(journey.hub.iam.ca_cert)], check=True, timeout=30)  # fmt: skip
    return home


@pytest_asyncio.fixture(loop_scope="module")
async def open_browser(browser_home, tmp_path):
    """``await open_browser()`` → a fresh Chromium page (own profile, so own cookies); closed after the test."""
    contexts = []
    async with async_playwright() as pw:

        async def factory() -> Page:
            profile = tmp_path / f"profile-{len(contexts)}"
            context = await pw.chromium.launch_persistent_context(
                str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                env={**os.environ, "HOME": str(browser_home)}, viewport={"width": 1280, "height": 900},
            )  # fmt: skip
            contexts.append(context)
            page = context.pages[0] if context.pages else await context.new_page()
            page.set_default_timeout(60_000)
            return page

        yield factory
        for context in contexts:
            await context.close()


class Shots:
    """Numbered full-page screenshots under test-artifacts/<test name>/."""

    def __init__(self, request) -> None:
        self.dir = ARTIFACTS / request.node.name
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self.n = 0

    async def __call__(self, page: Page, step: str) -> None:
        self.n += 1
        await page.screenshot(path=self.dir / f"{self.n:02d}-{step}.png", full_page=True)


@pytest.fixture
def shots(request) -> Shots:
    return Shots(request)


async def iam_login(page: Page, hub_url: str, iam_issuer: str, user: str, shots: Shots) -> None:
    """From the hub's front page through the dev IAM's login form, as a person would."""
    await page.goto(hub_url)
    if not page.url.startswith(iam_issuer):
        await shots(page, "hub-login")
        await page.locator("a", has_text=re.compile("Sign in with", re.I)).click()
    await page.wait_for_url(re.compile("^" + re.escape(iam_issuer)))
    await expect(page.get_by_label("Password")).to_be_visible()
    await page.get_by_label(re.compile("user", re.I)).fill(user)
    await page.get_by_label("Password").fill(f"{user}-password")
    await shots(page, "iam-login")
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(re.compile("^" + re.escape(hub_url)))


async def test_alice_logs_in_starts_her_server_and_runs_a_cluster(journey, open_browser, shots):
    hub = journey.hub
    page = await open_browser()
    await iam_login(page, hub.url, hub.iam.issuer, "alice", shots)

    # her server: started from the hub's home page, through the spawn-pending page
    await page.goto(f"{hub.url}hub/home")
    await shots(page, "hub-home")
    start = page.locator("#start")
    if await start.count():
        await start.click()
    await page.wait_for_url(re.compile(re.escape(f"{hub.url}user/alice/")), timeout=SLOW_STEP_MS)
    await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=SLOW_STEP_MS)  # JupyterLab's shell
    await shots(page, "server-started")

    # the cluster pages, from the hub's Services menu
    await page.goto(f"{hub.url}hub/home")
    await page.get_by_role("button", name="Services").or_(page.get_by_role("link", name="Services")).click()
    await shots(page, "services-menu")
    await page.get_by_role("link", name="Dask clusters").click()
    await expect(page.get_by_role("heading", name="My clusters")).to_be_visible()
    await expect(page.locator("#clusters-empty")).to_be_visible()
    await shots(page, "my-clusters-empty")

    # create: the API's field-level error, then a valid cluster
    await page.get_by_role("link", name="New cluster").first.click()
    await page.get_by_label("Cores").fill("99")
    await page.get_by_role("button", name="Create cluster").click()
    await expect(page.locator("#error-cores")).to_contain_text("at most 8")
    await expect(page.get_by_label("Cores")).to_have_attribute("aria-invalid", "true")
    await shots(page, "create-field-error")
    await page.get_by_label("Cores").fill("1")
    await page.get_by_label("Workers").fill("1")
    await page.get_by_label("Memory").fill("1")
    await page.get_by_role("button", name="Create cluster").click()
    await page.wait_for_url(re.compile(re.escape(f"{hub.url}{PREFIX}clusters/") + "[0-9a-f]{32}$"))
    cluster_id = page.url.rsplit("/", 1)[1]

    # live updates, no reload: running, with its worker
    status = page.locator("#cluster-status .cmsaf-status")
    await expect(status).to_have_text("running", timeout=SLOW_STEP_MS)
    await expect(page.locator("#cluster-workers")).to_contain_text("1 / 1 running", timeout=SLOW_STEP_MS)
    await shots(page, "cluster-running")

    # the dashboard, through the hub's proxy, shows the status plots
    dashboard = page.get_by_role("link", name="Dashboard")
    assert await dashboard.get_attribute("href") == f"{hub.url}{PREFIX}clusters/{cluster_id}/dashboard/status"
    await dashboard.click()
    await page.wait_for_url(f"{hub.url}{PREFIX}clusters/{cluster_id}/dashboard/status")
    await expect(page.locator("canvas").first).to_be_attached(timeout=SLOW_STEP_MS)
    await page.wait_for_timeout(1500)  # let Bokeh paint before the picture
    await shots(page, "dashboard-status")
    await page.go_back()

    # scale with the keyboard: the form submits on Enter
    await page.get_by_label("Number of workers").fill("2")
    await page.get_by_label("Number of workers").press("Enter")
    await expect(page.locator("#action-message")).to_contain_text("Scaling to 2 workers")
    await expect(page.locator("#cluster-workers")).to_contain_text("2 / 2 running", timeout=SLOW_STEP_MS)
    await shots(page, "scaled-to-2")

    # adapt: the page shows the range the service recorded
    await page.get_by_label("Minimum").fill("1")
    await page.get_by_label("Maximum").fill("")
    await page.get_by_role("button", name="Adapt").click()
    await expect(page.locator("#action-message")).to_have_text("Maximum: enter a whole number of workers")
    await page.get_by_label("Maximum").fill("3")
    await page.get_by_role("button", name="Adapt").click()
    await expect(page.locator("#cluster-adapt")).to_have_text("between 1 and 3 workers")

    # the browser holds none of alice's IAM tokens: the pages only carry the service's login cookie
    auth_state = (await hub.get_user("alice"))["auth_state"]
    tokens = [auth_state["access_token"], auth_state["refresh_token"]]
    tokens += [e["access_token"] for e in auth_state["exchanged_tokens"].values()]
    html = await page.content()
    assert all(token not in html for token in tokens)

    # logs: the scheduler's and each worker's
    await page.get_by_role("link", name="Logs").click()
    await expect(page.locator("details.cmsaf-log summary").first).to_have_text("scheduler")
    assert await page.locator("details.cmsaf-log").count() >= 3
    await shots(page, "logs")
    await page.go_back()

    # stop, with the confirmation: keeping it first, then stopping
    await page.get_by_role("button", name="Stop cluster…").click()
    dialog = page.locator("dialog#confirm-stop")
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text(cluster_id)
    await shots(page, "stop-confirmation")
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()
    await expect(status).to_have_text("running")
    await page.get_by_role("button", name="Stop cluster…").click()
    await dialog.get_by_role("button", name="Stop cluster").click()
    await expect(status).to_have_text("stopped", timeout=SLOW_STEP_MS)
    await expect(page.get_by_role("button", name="Scale")).to_be_disabled()
    await shots(page, "stopped")

    await page.goto(f"{hub.url}{PREFIX}clusters")
    await page.get_by_label("Show stopped and failed clusters").check()
    await expect(page.locator(f'tr[data-cluster="{cluster_id}"]')).to_contain_text("stopped")
    await shots(page, "my-clusters-after")


async def test_bob_cannot_open_alices_dashboard(journey, open_browser, shots):
    hub = journey.hub
    async with journey.client(await hub.create_user("alice")) as alice:
        created = await alice.post("clusters", json={"options": {"workers": 0}})
        assert created.status_code == 201, created.text
        cluster = await journey.wait_status(alice, created.json()["id"], "running")
        try:
            page = await open_browser()
            await iam_login(page, hub.url, hub.iam.issuer, "bob", shots)
            await page.goto(f"{hub.url}{PREFIX}")  # bob's own pages work
            await expect(page.get_by_role("heading", name="My clusters")).to_be_visible()
            response = await page.goto(cluster["dashboard_link"])
            assert response.status == 403
            await expect(page.locator("body")).to_contain_text("may not use this cluster")
            await shots(page, "alices-dashboard-refused")
            response = await page.goto(f"{hub.url}{PREFIX}clusters/{cluster['id']}")
            assert response.status == 404
            await expect(page.locator("#cmsaf-error-message")).to_contain_text("No cluster")
            await shots(page, "alices-cluster-page-hidden")
        finally:
            await alice.delete(f"clusters/{cluster['id']}")


async def test_a_held_worker_shows_with_its_reason_on_the_cluster_page(journey, open_browser, shots):
    """The page draws what the model says of held workers. The local backend never holds one, so the
    browser's copy of alice's real cluster model is given one held worker with the reason the real
    HTCondor pool gave (tests/integration/test_htcondor_pool.py proves the model carries it)."""
    hub = journey.hub
    reason = "removed after being held longer than 1 s: integration test hold (by user alice)"
    async with journey.client(await hub.create_user("alice")) as alice:
        created = await alice.post("clusters", json={"options": {"workers": 0}})
        assert created.status_code == 201, created.text
        cluster = await journey.wait_status(alice, created.json()["id"], "running")
        try:
            page = await open_browser()
            await iam_login(page, hub.url, hub.iam.issuer, "alice", shots)

            async def with_a_held_worker(route):
                response = await route.fetch()
                model = await response.json()
                assert model["workers"]["held_reasons"] == []  # the real model, before the change
                model["workers"].update(requested=1, held=1, held_reasons=[reason])
                await route.fulfill(response=response, json=model)

            await page.route(re.compile(re.escape(f"{hub.url}{PREFIX}api/v1/clusters/{cluster['id']}") + r"(\?.*)?$"),
                             with_a_held_worker)
            await page.goto(f"{hub.url}{PREFIX}clusters/{cluster['id']}")
            workers = page.locator("#cluster-workers")
            await expect(workers).to_contain_text("0 / 1 running · 0 queued · 1 held")
            await expect(workers.locator("ul.cmsaf-held li")).to_have_text(f"held: {reason}")
            await shots(page, "held-worker")
        finally:
            await alice.delete(f"clusters/{cluster['id']}")


async def test_an_admin_filters_every_users_clusters_and_stops_one(journey, open_browser, shots):
    hub = journey.hub
    async with journey.client(await hub.create_user("bob")) as bob:
        created = await bob.post("clusters", json={"options": {"workers": 0}})
        assert created.status_code == 201, created.text
        cluster_id = created.json()["id"]
        await hub.create_user("alice", admin=True)
        try:
            page = await open_browser()
            await iam_login(page, hub.url, hub.iam.issuer, "alice", shots)
            await page.goto(f"{hub.url}{PREFIX}")
            await page.get_by_role("link", name="All clusters (admin)").click()
            row = page.locator(f'tr[data-cluster="{cluster_id}"]')
            await expect(row).to_contain_text("bob")
            await page.get_by_label("Filter by owner or cluster id").fill("nobody")
            await expect(row).to_have_count(0)
            await page.get_by_label("Filter by owner or cluster id").fill("bo")
            await expect(row).to_be_visible()
            await shots(page, "admin-filtered")
            await row.get_by_role("button", name=f"Stop cluster {cluster_id} of bob").click()
            await page.locator("dialog#confirm-stop").get_by_role("button", name="Stop cluster").click()
            await journey.wait_status(bob, cluster_id, "stopped")
            await page.get_by_label("Status").select_option("stopped")
            await expect(row).to_contain_text("stopped by admin alice")
            await shots(page, "admin-stopped")
        finally:
            async with hub.admin_client() as api:
                await api.patch("/users/alice", json={"admin": False})
            await bob.delete(f"clusters/{cluster_id}")


async def test_eve_outside_cms_sees_the_refusal_page(journey, open_browser, shots):
    hub = journey.hub
    page = await open_browser()
    await iam_login(page, hub.url, hub.iam.issuer, "eve", shots)
    await expect(page.locator("body")).to_contain_text("not a member of /cms")
    await shots(page, "refused")
    # the way out of the wrong account: IAM's sign-out, then back to the hub's login page
    await page.get_by_role("link", name="Sign out of IAM and sign in with another account").click()
    await page.get_by_role("button", name="Sign out").click()
    await expect(page).to_have_url(f"{hub.url}hub/login")
    await shots(page, "signed-out-of-iam")
    async with httpx.AsyncClient(base_url=hub.api_url, headers={"Authorization": f"token {hub.admin_token}"}) as api:
        assert (await api.get("/users/eve")).status_code == 404  # never became a hub user


async def test_sidebar_dashboard_panels_draw_in_a_fresh_browser(journey, open_browser, shots):
    """The Dask sidebar's panels (``<server>/dask/dashboard/<id>/<plot>``) in a browser that logged
    into JupyterLab only, never into the service's pages: every Bokeh asset and the plot's websocket
    go through the session's proxy with its token, so the plot is drawn; the same browser still gets
    401 straight from the service (it holds no service cookie), which is what left the panels blank."""
    hub = journey.hub
    async with journey.client(await hub.create_user("alice")) as alice:
        created = await alice.post("clusters", json={"options": {"workers": 1, "cores": 1, "memory": 1.0}})
        assert created.status_code == 201, created.text
        cluster = await journey.wait_status(alice, created.json()["id"], "running")
        try:
            page = await open_browser()
            refused: list[str] = []
            page.on("response", lambda r: refused.append(r.url) if r.status in (401, 403) else None)
            await iam_login(page, hub.url, hub.iam.issuer, "alice", shots)
            await page.goto(f"{hub.url}hub/home")
            start = page.locator("#start")
            if await start.count():
                await start.click()
            await page.wait_for_url(re.compile(re.escape(f"{hub.url}user/alice/")), timeout=SLOW_STEP_MS)
            await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=SLOW_STEP_MS)
            await shots(page, "lab")

            # the sidebar's listing, as the extension fetches it (JupyterLab sends the _xsrf cookie's value)
            lab_id, listed = None, None
            for _ in range(60):
                listed = await page.evaluate("""() => fetch('/user/alice/dask/clusters', {headers: {
                        'X-XSRFToken': (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || ''}})
                    .then(async r => ({status: r.status, body: await r.text()}))""")
                if listed["status"] == 200:
                    lab_id = next((c["id"] for c in json.loads(listed["body"]) if cluster["id"] in c["name"]), None)
                if lab_id:
                    break
                await page.wait_for_timeout(500)
            assert lab_id, listed
            panel = f"{hub.url}user/alice/dask/dashboard/{lab_id}/individual-workers-memory"
            response = await page.goto(panel)
            assert response.status == 200
            await expect(page.locator("canvas").first).to_be_attached(timeout=SLOW_STEP_MS)
            await page.wait_for_timeout(1500)  # let Bokeh paint before the picture
            await shots(page, "panel-workers-memory")
            assert refused == [], refused
            box = await page.locator("canvas").first.bounding_box()  # Bokeh draws in its shadow DOM
            assert box and box["width"] > 100 and box["height"] > 100, box

            # the refusal the proxy avoids: the service's own asset URL, from this same browser
            direct = await page.request.get(
                f"{hub.url}{PREFIX}clusters/{cluster['id']}/dashboard/statics/css/base.css", max_redirects=0)
            assert direct.status == 401, (direct.status, direct.url)
        finally:
            await alice.delete(f"clusters/{cluster['id']}")
