"""Where the client finds the service and its token (pure apart from token files)."""

import dask.config
import pytest

from cmsaf_hub.client.config import resolve_config, service_url_from_hub_url
from cmsaf_hub.client.errors import ConfigurationError

SESSION_ENV = {
    "CMSAF_SERVICE_URL": "http://127.0.0.1:8000/services/cmsaf/",
    "JUPYTERHUB_API_TOKEN": "session-token",
}


def test_zero_config_inside_a_session():
    config = resolve_config(env=SESSION_ENV)
    assert config.service_url == "http://127.0.0.1:8000/services/cmsaf/"
    assert config.api_url == "http://127.0.0.1:8000/services/cmsaf/api/v1/"
    assert config.token == "session-token"


def test_laptop_env_wins_over_session_env():
    env = {**SESSION_ENV, "CMSAF_HUB_URL": "https://hub.example", "CMSAF_TOKEN": "laptop-token"}
    config = resolve_config(env=env)
    assert config.service_url == "https://hub.example/services/cmsaf/"
    assert config.token == "laptop-token"


def test_arguments_win_over_env(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    config = resolve_config(hub_url="https://other.example/hub/", token_file=str(token_file), env=SESSION_ENV)
    assert config.service_url == "https://other.example/services/cmsaf/"
    assert config.token == "file-token"
    assert resolve_config(service_url="http://x/services/cmsaf", token="t", env={}).service_url == (
        "http://x/services/cmsaf/"
    )


@pytest.mark.parametrize(
    "hub_url, service_url",
    [
        ("https://hub.example", "https://hub.example/services/cmsaf/"),
        ("https://hub.example/", "https://hub.example/services/cmsaf/"),
        ("https://hub.example/hub/", "https://hub.example/services/cmsaf/"),
        ("https://cms.example/prefix/", "https://cms.example/prefix/services/cmsaf/"),
    ],
)
def test_service_url_from_hub_url(hub_url, service_url):
    assert service_url_from_hub_url(hub_url) == service_url


def test_dask_config_file_settings(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("cfg-token")
    with dask.config.set({"cmsaf.hub-url": "https://cfg.example/", "cmsaf.token-file": str(token_file)}):
        config = resolve_config(env={})
    assert (config.service_url, config.token) == ("https://cfg.example/services/cmsaf/", "cfg-token")


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        ({}, {"CMSAF_TOKEN": "t"}, "no cluster service configured: set CMSAF_HUB_URL"),
        ({}, {"CMSAF_HUB_URL": "https://hub.example/"}, "no hub API token: set CMSAF_TOKEN"),
        ({"hub_url": "hub.example"}, {"CMSAF_TOKEN": "t"}, "must start with http:// or https://"),
        ({"token_file": "/nonexistent/token"}, {"CMSAF_HUB_URL": "http://h/"}, "cannot read token file /nonexistent/token"),
    ],
)
def test_configuration_errors_are_one_clear_line(kwargs, env, message):
    with pytest.raises(ConfigurationError) as info:
        resolve_config(env=env, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_empty_token_file_is_refused(tmp_path):
    (tmp_path / "t").write_text("\n")
    with pytest.raises(ConfigurationError, match="is empty"):
        resolve_config(token_file=str(tmp_path / "t"), env={"CMSAF_HUB_URL": "http://h/"})


def test_token_never_in_repr():
    config = resolve_config(env={**SESSION_ENV, "JUPYTERHUB_API_TOKEN": "s3cr3t-token"})
    assert "s3cr3t-token" not in repr(config)


@pytest.mark.parametrize(
    "address, ours",
    [
        ("ws://127.0.0.1:8000/services/cmsaf/clusters/abc/comm", True),
        ("ws://127.0.0.1:8000/services/cmsaf/clusters/abc/dashboard", False),
        ("ws://127.0.0.1:9999/services/cmsaf/clusters/abc/comm", False),  # another port: no token
        ("ws://evil.example:8000/services/cmsaf/clusters/abc/comm", False),
        ("wss://127.0.0.1:8000/services/cmsaf/clusters/abc/comm", False),  # service is http
        ("tcp://127.0.0.1:8786", False),
    ],
)
def test_security_loader_only_sends_the_token_to_the_configured_service(address, ours, monkeypatch):
    from cmsaf_hub.client.security import is_service_comm_address, security_loader

    config = resolve_config(env=SESSION_ENV)
    assert is_service_comm_address(address, config) is ours
    for name, value in SESSION_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CMSAF_HUB_URL", raising=False)
    monkeypatch.delenv("CMSAF_TOKEN", raising=False)
    security = security_loader({"address": address})
    if ours:
        args = security.get_connection_args("client")
        assert args["extra_conn_args"]["headers"] == {"Authorization": "token session-token"}
        assert "session-token" not in repr(security)
    else:
        assert security is None


def test_security_loader_without_configuration_defers_to_dask(monkeypatch):
    from cmsaf_hub.client.security import security_loader

    for name in ("CMSAF_SERVICE_URL", "CMSAF_HUB_URL", "CMSAF_TOKEN", "JUPYTERHUB_API_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert security_loader({"address": "ws://h/services/cmsaf/clusters/a/comm"}) is None
