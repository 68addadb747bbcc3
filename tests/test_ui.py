"""The cluster pages: pure rendering (hub look, labels, no external resources) and, under a real hub,
browser-cookie access with the XSRF rule the API enforces."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx
import pytest

from cmsaf_hub.service.options import ClusterOptions, OptionField
from cmsaf_hub.service.ui.render import HubLook, PageUser, form_fields, template_environment
from devstack.login import login_via_iam
from devstack.service_hubs import start_service_hub

PREFIX = "/services/cmsaf/"


class _Controls(HTMLParser):
    """Collects form controls, label targets, and every URL the page loads or links to."""

    def __init__(self) -> None:
        super().__init__()
        self.controls: list[dict[str, str]] = []
        self.label_for: set[str] = set()
        self.urls: list[str] = []
        self._label_depth = 0

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        if tag == "label":
            self._label_depth += 1
            if a.get("for"):
                self.label_for.add(a["for"])
        if tag in ("input", "select", "textarea") or (tag == "button" and not a.get("aria-label")):
            self.controls.append({"tag": tag, **a, "_in_label": str(self._label_depth > 0)})
        for key in ("src", "href"):
            if a.get(key):
                self.urls.append(a[key])

    def handle_endtag(self, tag):
        if tag == "label":
            self._label_depth -= 1


def render(template: str, user: PageUser | None = PageUser("alice"), **context) -> str:
    look = HubLook(hub_prefix="/hub/", service_prefix=PREFIX)
    return template_environment().get_template(template).render(**look.namespace(user, "xsrf-123"), **context)


def parse(html: str) -> _Controls:
    parser = _Controls()
    parser.feed(html)
    return parser


def test_form_fields_follow_the_schema_and_leave_out_fixed_choices():
    fields = ClusterOptions().for_groups([]) + [
        OptionField("site", "string", None, help="Where", nullable=True, choices=(None, "T2_US", "T2_DE")),
        OptionField("queue", "string", "short"),
    ]
    by_name = {f.name: f for f in form_fields(fields)}
    # the default "image" and "site" fields have one fixed choice; the second "site" offers three
    assert sorted(by_name) == ["cores", "memory", "queue", "site", "workers"]
    cores = by_name["cores"]
    assert (cores.input, cores.minimum, cores.maximum, cores.step, cores.default) == ("number", 1, 8, "1", 1)
    assert by_name["memory"].step == "any"
    assert by_name["site"].choices == (("null", "default"), ('"T2_US"', "T2_US"), ('"T2_DE"', "T2_DE"))
    assert by_name["queue"].input == "text"


@pytest.mark.parametrize("template, context", [
    ("cmsaf_clusters.html", {"page": "clusters"}),
    ("cmsaf_create.html", {"page": "create", "fields": form_fields(ClusterOptions().for_groups([]))}),
    ("cmsaf_cluster.html", {"page": "cluster", "cluster_id": "c0ffee", "owner": "alice"}),
    ("cmsaf_logs.html", {"page": "logs", "cluster_id": "c0ffee"}),
    ("cmsaf_admin.html", {"page": "admin"}),
])
def test_pages_have_the_hub_look_labels_on_every_control_and_no_external_resources(template, context):
    html = render(template, user=PageUser("alice", admin=True), **context)
    page = parse(html)
    assert "/hub/static/css/style.min.css" in page.urls  # the hub's own styles
    assert f"{PREFIX}ui/static/cmsaf-ui.js" in page.urls
    assert f'href="{PREFIX}"' in html  # the hub's Services menu lists the service
    assert 'xsrf_token: "xsrf-123"' in html
    for url in page.urls:
        assert not re.match(r"^(https?:)?//", url), f"external resource {url}"
    assert page.controls, "every page has controls"
    for control in page.controls:
        if control["tag"] == "button":
            continue  # buttons are labelled by their text (or aria-label)
        assert control.get("id") in page.label_for or control["_in_label"] == "True", f"unlabelled {control}"


def test_user_names_are_escaped_and_non_admins_get_no_admin_link():
    html = render("cmsaf_clusters.html", user=PageUser("<img src=x onerror=alert(1)>"), page="clusters")
    assert "<img src=x" not in html
    assert f"{PREFIX}admin" not in html
    assert PageUser('a"</script>').json_escaped_name == 'a\\"\\u003c/script\\u003e'


def page_xsrf(html: str) -> str:
    return re.search(r'xsrf_token: "([^"]+)"', html).group(1)


@pytest.mark.slow
async def test_pages_under_a_real_hub_cookie_changes_need_the_xsrf_token(hub_factory, tmp_path):
    sh = await start_service_hub(hub_factory, tmp_path)
    alice = await login_via_iam(sh.hub, "alice", "alice-password", next_url=PREFIX)
    bob = await login_via_iam(sh.hub, "bob", "bob-password", next_url=PREFIX)
    async with alice, bob:
        landed = alice.login_response
        assert landed.status_code == 200 and str(landed.url).endswith(PREFIX), landed.url
        assert "My clusters" in landed.text and 'id="clusters-table"' in landed.text
        home = await alice.get(f"{sh.hub.url}hub/home")
        assert f'href="{PREFIX}"' in home.text  # the hub's own Services menu links the pages

        api = f"{sh.hub.url}services/cmsaf/api/v1/"
        body = {"options": {"workers": 0}}
        xsrf = page_xsrf(landed.text)
        refused = await alice.post(api + "clusters", json=body)
        assert refused.status_code == 403, refused.text
        forged = await alice.post(api + "clusters", json=body, headers={"X-XSRFToken": xsrf[:-4] + "AAAA"})
        assert forged.status_code == 403, forged.text
        listed = await alice.get(api + "clusters")
        assert listed.status_code == 200 and listed.json() == []  # nothing was created by the refused posts

        created = await alice.post(api + "clusters", json=body, headers={"X-XSRFToken": xsrf})
        assert created.status_code == 201, created.text
        cid = created.json()["id"]

        cluster_page = await alice.get(f"{sh.hub.url}services/cmsaf/clusters/{cid}")
        assert cluster_page.status_code == 200 and f'data-cluster="{cid}"' in cluster_page.text
        assert (await alice.get(f"{sh.hub.url}services/cmsaf/clusters/{cid}/logs")).status_code == 200
        assert "Number of workers" in cluster_page.text
        unknown = await alice.get(f"{sh.hub.url}services/cmsaf/clusters/{cid}x")
        assert unknown.status_code == 404 and "No cluster" in unknown.text and "Traceback" not in unknown.text
        assert (await bob.get(f"{sh.hub.url}services/cmsaf/clusters/{cid}")).status_code == 200  # admin
        admin_for_alice = await alice.get(f"{sh.hub.url}services/cmsaf/admin")
        assert admin_for_alice.status_code == 403 and "for hub admins" in admin_for_alice.text
        assert (await bob.get(f"{sh.hub.url}services/cmsaf/admin")).status_code == 200  # bob: /cms/admins

        create_page = await alice.get(f"{sh.hub.url}services/cmsaf/clusters/new")
        assert 'id="opt-workers"' in create_page.text and 'max="50"' in create_page.text
        js = await alice.get(f"{sh.hub.url}services/cmsaf/ui/static/cmsaf-ui.js")
        assert js.status_code == 200 and "X-XSRFToken" in js.text

        stop_refused = await alice.delete(api + f"clusters/{cid}")
        assert stop_refused.status_code == 403
        stopped = await alice.delete(api + f"clusters/{cid}", headers={"X-XSRFToken": xsrf})
        assert stopped.status_code == 200, stopped.text
        async with sh.client(await sh.hub.user_token("alice")) as api_client:
            await sh.wait_status(api_client, cid, "stopped")

    # a browser without the service's login is sent through the hub's OAuth
    async with httpx.AsyncClient() as anonymous:
        r = await anonymous.get(f"{sh.hub.url}services/cmsaf/clusters")
        assert r.status_code == 302 and "/hub/api/oauth2/authorize" in r.headers["location"]
    # a service's token is not a user: it owns no clusters and gets no pages
    async with httpx.AsyncClient(headers={"Authorization": f"token {sh.hub.admin_token}"}) as service:
        r = await service.get(f"{sh.hub.url}services/cmsaf/clusters")
        assert r.status_code == 403 and "Only hub users own clusters." in r.text
        assert sh.hub.admin_token not in r.text
