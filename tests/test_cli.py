"""``cmsaf-dask``: argument parsing, output and exit codes, against a loopback JSON server."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from cmsaf_hub.client.cli import build_parser, format_logs, main, requested_options
from cmsaf_hub.client.errors import OptionsError
from tests.test_client_http import API, TOKEN, cluster_json
from tests.client_fixtures import server  # noqa: F401 (fixtures)


@pytest.fixture
def env(server, monkeypatch):
    for name in ("CMSAF_SERVICE_URL", "JUPYTERHUB_API_TOKEN", "CMSAF_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CMSAF_HUB_URL", f"http://127.0.0.1:{server.port}/")
    monkeypatch.setenv("CMSAF_TOKEN", TOKEN)
    return server


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_parser_collects_option_flags_in_order():
    args = build_parser().parse_args(["create", "--workers", "3", "-o", "gpu=true", "--memory", "4"])
    assert requested_options(args) == [("workers", "3"), ("memory", "4"), ("gpu", "true")]
    with pytest.raises(OptionsError, match="-o expects NAME=VALUE, got 'gpu'"):
        requested_options(build_parser().parse_args(["create", "-o", "gpu"]))


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["scale", "c1", "many"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2


def test_list_text_and_json(env, capsys):
    env.routes[("GET", API + "clusters")] = (
        200,
        [cluster_json("c1"), cluster_json("c2", "failed", reason="scheduler exited")],
    )
    code, out, err = run(capsys, "list", "--all")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "WORKERS", "PENDING", "HELD", "FAILED", "CREATED"]
    assert lines[1].split()[:3] == ["c1", "running", "1/2"]
    assert "failed (scheduler exited)" in lines[2]
    code, out, _ = run(capsys, "--json", "list", "--all")
    assert code == 0 and [c["id"] for c in json.loads(out)] == ["c1", "c2"]
    assert env.requests[-1].headers["Authorization"] == f"token {TOKEN}"


def test_list_shows_active_clusters_unless_asked(env, capsys):
    env.routes[("GET", API + "clusters")] = (200, [
        cluster_json("c1"), cluster_json("c2", "stopped"), cluster_json("c3", "pending"),
        cluster_json("c4", "failed", reason="no slots"), cluster_json("c5", "starting"), cluster_json("c6", "stopping"),
    ])

    def listed(*args):
        code, out, err = run(capsys, "--json", "list", *args)
        assert (code, err) == (0, "")
        return [c["id"] for c in json.loads(out)]

    assert listed() == ["c1", "c3", "c5"]  # like dask-gateway: pending, starting, running
    assert listed("--all") == ["c1", "c2", "c3", "c4", "c5", "c6"]
    assert listed("--status", "failed", "--status", "stopped") == ["c2", "c4"]
    with pytest.raises(SystemExit) as info:
        main(["list", "--status", "gone"])
    assert info.value.code == 2


def test_list_clusters_of_the_hub_filters_like_the_cli(env):
    from cmsaf_hub.client import Hub

    env.routes[("GET", API + "clusters")] = (200, [cluster_json("c1"), cluster_json("c2", "stopped")])
    with Hub() as hub:
        assert [r.id for r in hub.list_clusters()] == ["c1"]
        assert [r.id for r in hub.list_clusters(status="all")] == ["c1", "c2"]
        assert [r.id for r in hub.list_clusters(status=["stopped"])] == ["c2"]
        with pytest.raises(ValueError, match="unknown cluster status 'gone'; valid: pending, starting, running"):
            hub.list_clusters(status="gone")


def test_create_sends_typed_options_and_waits(env, capsys):
    env.routes[("POST", API + "clusters")] = (201, cluster_json("c7", "pending"))
    env.routes[("GET", API + "clusters/c7")] = [(200, cluster_json("c7", "pending")), (200, cluster_json("c7"))]
    code, out, _ = run(capsys, "--json", "create", "--workers", "3", "-o", "cores=2", "--wait")
    assert code == 0
    assert json.loads(out)["status"] == "running"
    (post,) = [r for r in env.requests if r.method == "POST"]
    assert json.loads(post.body) == {"options": {"workers": 3, "cores": 2}}


def test_create_wait_prints_the_dashboard_and_the_scheduler(env, capsys):
    env.routes[("POST", API + "clusters")] = (201, cluster_json("c7", "pending"))
    env.routes[("GET", API + "clusters/c7")] = [(200, cluster_json("c7", "pending")), (200, cluster_json("c7"))]
    code, out, err = run(capsys, "create", "--wait")
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "c7",
        "  dashboard: http://127.0.0.1/services/cmsaf/clusters/c7/dashboard/status",
        "  scheduler: ws://127.0.0.1/services/cmsaf/clusters/c7/comm  (HubCluster.from_id('c7') connects)",
    ]
    # without --wait, only the id (scripts capture it)
    env.routes[("GET", API + "clusters/c7")] = (200, cluster_json("c7", "pending"))
    code, out, _ = run(capsys, "create")
    assert (code, out) == (0, "c7\n")


def test_create_that_fails_exits_1_with_the_reason(env, capsys):
    env.routes[("POST", API + "clusters")] = (201, cluster_json("c8", "pending"))
    env.routes[("GET", API + "clusters/c8")] = (200, cluster_json("c8", "failed", reason="no slots"))
    code, out, err = run(capsys, "create", "--wait")
    assert (code, out, err) == (1, "", "cmsaf-dask: cluster c8 failed: no slots\n")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["create", "--cores", "99"], "invalid value 99 for option 'cores': must be an integer from 1 to 8"),
        (["create", "--workers", "lots"], "invalid value 'lots' for option 'workers': must be an integer from 0 to 50"),
        (["create", "-o", "colour=red"], "unknown option 'colour'; available options: cores, workers"),
        (["adapt", "c1", "--minimum", "5", "--maximum", "2"], "--maximum 2 is below --minimum 5"),
    ],
)
def test_invalid_options_exit_2_before_anything_is_sent(env, capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert err == f"cmsaf-dask: {message}\n"
    assert not [r for r in env.requests if r.method == "POST"]


@pytest.mark.parametrize(
    "status, payload, code, message",
    [
        (401, {"error": "invalid or expired token"}, 4, "invalid or expired token"),
        (404, {"error": "no cluster c1"}, 6, "no cluster c1"),
        (409, {"error": "quota exceeded: 60 workers of 50"}, 7, "quota exceeded: 60 workers of 50"),
        (400, {"error": "workers must be at least 0"}, 7, "workers must be at least 0"),
        (500, {"error": "internal error"}, 8, "internal error"),
    ],
)
def test_service_errors_give_distinct_codes_and_one_line(env, capsys, status, payload, code, message):
    env.routes[("POST", API + "clusters/c1/scale")] = (status, payload)
    got, out, err = run(capsys, "scale", "c1", "60")
    assert (got, out, err) == (code, "", f"cmsaf-dask: {message}\n")
    assert TOKEN not in err


def test_scale_adapt_dashboard_delete(env, capsys):
    env.routes[("POST", API + "clusters/c1/scale")] = (200, cluster_json("c1"))
    env.routes[("POST", API + "clusters/c1/adapt")] = (200, cluster_json("c1", adapt={"minimum": 1, "maximum": 4}))
    env.routes[("GET", API + "clusters/c1")] = (200, cluster_json("c1"))
    env.routes[("GET", API + "clusters/c2")] = (200, cluster_json("c2", "pending", dashboard_link=None))
    env.routes[("DELETE", API + "clusters/c1")] = (200, cluster_json("c1", "stopping"))
    env.routes[("DELETE", API + "clusters/c3")] = (200, cluster_json("c3", "stopping"))
    assert run(capsys, "scale", "c1", "4")[:2] == (0, "c1  running  workers 1/2\n")
    assert json.loads(env.requests[-1].body) == {"workers": 4}
    code, out, _ = run(capsys, "--json", "adapt", "c1", "--minimum", "1", "--maximum", "4")
    assert code == 0 and json.loads(out)["adapt"] == {"minimum": 1, "maximum": 4}
    assert json.loads(env.requests[-1].body) == {"minimum": 1, "maximum": 4}
    assert run(capsys, "dashboard", "c1")[:2] == (
        0,
        "http://127.0.0.1/services/cmsaf/clusters/c1/dashboard/status\n",
    )
    assert run(capsys, "dashboard", "c2") == (1, "", "cmsaf-dask: cluster c2 is pending: no dashboard\n")
    code, out, _ = run(capsys, "--json", "delete", "c1", "c3")
    assert code == 0 and json.loads(out) == {"deleted": ["c1", "c3"]}
    assert [r.path for r in env.requests if r.method == "DELETE"] == [API + "clusters/c1", API + "clusters/c3"]


def test_logs_are_printed_per_component(env, capsys):
    env.routes[("GET", API + "clusters/c1/logs")] = (200, {"scheduler": "started\nready\n", "w-0": "joined"})
    code, out, _ = run(capsys, "logs", "c1")
    assert code == 0
    assert out == "==> scheduler <==\nstarted\nready\n\n==> w-0 <==\njoined\n\n"
    assert format_logs({"scheduler": ["a", "b"]}) == json.dumps({"scheduler": ["a", "b"]}, indent=2)


def test_no_token_and_no_hub_exit_3(monkeypatch, capsys):
    for name in ("CMSAF_SERVICE_URL", "JUPYTERHUB_API_TOKEN", "CMSAF_TOKEN", "CMSAF_HUB_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CMSAF_HUB_URL", "http://127.0.0.1:1/")
    code, _, err = run(capsys, "list")
    assert code == 3 and err.startswith("cmsaf-dask: no hub API token: set CMSAF_TOKEN")
    monkeypatch.delenv("CMSAF_HUB_URL")
    monkeypatch.setenv("CMSAF_TOKEN", TOKEN)
    code, _, err = run(capsys, "list")
    assert code == 3 and err.startswith("cmsaf-dask: no cluster service configured")


def test_unreachable_hub_exit_5_from_a_real_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "token").write_text(TOKEN)
    proc = subprocess.run(
        [sys.executable, "-m", "cmsaf_hub.client.cli", "--hub-url", f"http://127.0.0.1:{port}/",
         "--token-file", str(tmp_path / "token"), "list"],
        capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert proc.returncode == 5
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"cmsaf-dask: cannot reach http://127.0.0.1:{port}/services/cmsaf/")
    assert proc.stderr.count("\n") == 1 and TOKEN not in proc.stderr
