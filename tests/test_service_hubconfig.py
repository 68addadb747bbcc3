"""cmsaf_hub.service.hubconfig: what the hub config gets (the real-hub tests use it for every service start)."""

import json
import os
import stat

import pytest
from traitlets.config import Config

from cmsaf_hub.service.crypto import CRYPT_KEY_ENV, CRYPT_KEY_FILE_ENV, new_crypt_key, read_crypt_keys
from cmsaf_hub.service.hubconfig import SERVICE_SCOPES, cluster_service, service_command


def test_command_per_backend():
    cmd = service_command(db_url="sqlite:///x.sqlite", python="/py")
    assert cmd[:3] == ["/py", "-m", "cmsaf_hub"]
    assert "--CmsafService.backend_class=cmsaf_hub.service.backends.local.LocalBackend" in cmd
    condor = service_command(db_url="sqlite:///x.sqlite", backend="htcondor", config_file="/etc/c.py")
    assert "--CmsafService.backend_class=cmsaf_hub.service.backends.htcondor.HTCondorBackend" in condor
    assert "--config=/etc/c.py" in condor


def test_registers_service_roles_and_user_access(tmp_path):
    c = Config()
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self"]}]
    service = cluster_service(c, url="http://127.0.0.1:10101", public_url="https://hub.example/",
                              db_url="sqlite:///s.sqlite", crypt_key="k" * 44, extra_env={"X": "1"},
                              cluster_env={"CMSAF_XCACHE_URL": "root://cache:1094"}, cwd=str(tmp_path))
    assert c.JupyterHub.services == [service]
    assert service["name"] == "cmsaf" and service["url"] == "http://127.0.0.1:10101"
    assert service["environment"]["CMSAF_PUBLIC_URL"] == "https://hub.example/"
    assert service["environment"]["X"] == "1"
    assert "--CmsafService.cluster_env=CMSAF_XCACHE_URL=root://cache:1094" in service["command"]
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["cmsaf-service"] == {"name": "cmsaf-service", "scopes": SERVICE_SCOPES, "services": ["cmsaf"]}
    assert roles["user"]["scopes"] == ["self", "access:services!service=cmsaf"]


def test_lazy_config_gets_a_user_role(tmp_path):
    c = Config()  # nothing set yet: traitlets hands out lazy lists
    cluster_service(c, url="http://127.0.0.1:1", public_url="", db_url="sqlite://", cwd=str(tmp_path))
    roles = c.JupyterHub.load_roles.get_value([])
    assert {"name": "user", "scopes": ["self", "access:services!service=cmsaf"]} in roles


def test_the_crypt_key_reaches_the_service_as_a_0600_file_never_in_its_stored_environment(tmp_path, monkeypatch):
    """JupyterHub stores a service's environment in its database, and the proxy inherits the hub's."""
    key = new_crypt_key()
    monkeypatch.setenv(CRYPT_KEY_ENV, key)
    monkeypatch.delenv(CRYPT_KEY_FILE_ENV, raising=False)
    c = Config()
    service = cluster_service(c, url="http://127.0.0.1:1", public_url="", db_url="sqlite://", cwd=str(tmp_path))
    path = tmp_path / "cmsaf-service-crypt-key"
    assert service["environment"] == {CRYPT_KEY_FILE_ENV: str(path), "CMSAF_PUBLIC_URL": ""} | (
        {"PYTHONPATH": os.environ["PYTHONPATH"]} if "PYTHONPATH" in os.environ else {})
    assert key not in json.dumps(service)
    assert CRYPT_KEY_ENV not in os.environ  # read and removed: children of the hub do not inherit it
    assert path.read_text() == key and stat.S_IMODE(path.stat().st_mode) == 0o600
    # the service reads it from there
    assert read_crypt_keys({CRYPT_KEY_FILE_ENV: str(path)}) == key
    # a restart without a key reuses the file (clusters are re-adopted), an explicit file is passed as is
    again = cluster_service(Config(), url="http://127.0.0.1:1", public_url="", db_url="sqlite://", cwd=str(tmp_path))
    assert again["environment"][CRYPT_KEY_FILE_ENV] == str(path) and path.read_text() == key
    given = cluster_service(Config(), url="http://127.0.0.1:1", public_url="", db_url="sqlite://",
                            crypt_key_file="/run/secrets/cmsaf-key")
    assert given["environment"][CRYPT_KEY_FILE_ENV] == "/run/secrets/cmsaf-key"
    assert "--LocalBackend.same_user=True" not in given["command"]  # isolated unless asked
    with pytest.raises(ValueError, match="cannot read CMSAF_SERVICE_CRYPT_KEY_FILE=/nonexistent: No such file"):
        read_crypt_keys({CRYPT_KEY_FILE_ENV: "/nonexistent"})


def test_same_user_mode_follows_the_stack_wide_switch(monkeypatch, tmp_path):
    def command(**kw):
        return cluster_service(Config(), url="http://127.0.0.1:1", public_url="", db_url="sqlite://",
                               cwd=str(tmp_path), **kw)["command"]

    monkeypatch.delenv("CMSAF_SAME_USER", raising=False)
    assert "--LocalBackend.same_user=True" not in command()
    assert "--LocalBackend.same_user=True" in command(same_user=True)
    monkeypatch.setenv("CMSAF_SAME_USER", "on")
    assert "--LocalBackend.same_user=True" in command()
    assert "--LocalBackend.same_user=True" not in command(same_user=False)
