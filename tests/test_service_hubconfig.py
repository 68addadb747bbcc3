"""cmsaf_hub.service.hubconfig: what the hub config gets (the real-hub tests use it for every service start)."""

from traitlets.config import Config

from cmsaf_hub.service.hubconfig import SERVICE_SCOPES, cluster_service, service_command


def test_command_per_backend():
    cmd = service_command(db_url="sqlite:///x.sqlite", python="/py")
    assert cmd[:3] == ["/py", "-m", "cmsaf_hub"]
    assert "--CmsafService.backend_class=cmsaf_hub.service.backends.local.LocalBackend" in cmd
    condor = service_command(db_url="sqlite:///x.sqlite", backend="htcondor", config_file="/etc/c.py")
    assert "--CmsafService.backend_class=cmsaf_hub.service.backends.htcondor.HTCondorBackend" in condor
    assert "--config=/etc/c.py" in condor


def test_registers_service_roles_and_user_access():
    c = Config()
    c.JupyterHub.services = []
    c.JupyterHub.load_roles = [{"name": "user", "scopes": ["self"]}]
    service = cluster_service(c, url="http://127.0.0.1:10101", public_url="https://hub.example/",
                              db_url="sqlite:///s.sqlite", crypt_key="k" * 44, extra_env={"X": "1"})
    assert c.JupyterHub.services == [service]
    assert service["name"] == "cmsaf" and service["url"] == "http://127.0.0.1:10101"
    assert service["environment"]["CMSAF_PUBLIC_URL"] == "https://hub.example/"
    assert service["environment"]["X"] == "1"
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["cmsaf-service"] == {"name": "cmsaf-service", "scopes": SERVICE_SCOPES, "services": ["cmsaf"]}
    assert roles["user"]["scopes"] == ["self", "access:services!service=cmsaf"]


def test_lazy_config_gets_a_user_role():
    c = Config()  # nothing set yet: traitlets hands out lazy lists
    cluster_service(c, url="http://127.0.0.1:1", public_url="", db_url="sqlite://")
    roles = c.JupyterHub.load_roles.get_value([])
    assert {"name": "user", "scopes": ["self", "access:services!service=cmsaf"]} in roles
