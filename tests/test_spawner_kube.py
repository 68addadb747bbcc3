"""IAMKubeSpawner without a cluster: pod and Secret manifests, profiles, image allowlist, Secret I/O seam."""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
from unittest import mock

import kubespawner.spawner
import pytest
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.client.rest import ApiException

from spawners.kube import COPY_SCRIPT, INIT_CONTAINER, REFRESHER_CONTAINER, IAMKubeSpawner
from spawners.profiles import ImageNotAllowed, build_profile_list, check_image
from tornado.web import HTTPError

from spawners.tokens import token_files

CONDOR_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb25kb3IifQ.Y29uZG9yLXNpZw"
XROOTD_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4cm9vdGQifQ.eHJvb3RkLXNpZw"
NEVER_IN_SESSION = {
    "login access token": "LOGIN-ACCESS-TOKEN-aaaa",
    "refresh token": "REFRESH-TOKEN-bbbb",
    "id token": "ID-TOKEN-cccc",
    "client secret": "CLIENT-SECRET-dddd",
}
AUTH_STATE = {
    "access_token": NEVER_IN_SESSION["login access token"],
    "refresh_token": NEVER_IN_SESSION["refresh token"],
    "id_token": NEVER_IN_SESSION["id token"],
    "token_response": {"client_secret": NEVER_IN_SESSION["client secret"]},
    "exchanged_tokens": {
        "condor": {"access_token": CONDOR_JWT, "expires_at": 1764000300.0},
        "xrootd": {"access_token": XROOTD_JWT, "expires_at": 1764000300.0},
    },
}
SIZES = [
    {"slug": "small", "display_name": "Small", "cpu": 1, "memory": "2G"},
    {"slug": "gpu", "display_name": "One GPU", "cpu": 4, "memory": "16G", "gpu": 1},
]
IMAGES = {
    "coffea": {"display_name": "Coffea", "image": "coffeateam/coffea-dask:2025.1.0"},
    "root": {"image": "registry.cern.ch/cmsaf/root:6.32"},
}
ALLOWLIST = ["registry.cern.ch/cmsaf/*", "docker.io/coffeateam/*"]


class HubUser:
    """The few attributes of a JupyterHub User a spawner reads, with the stored auth_state."""

    def __init__(self, name: str, auth_state: dict | None):
        self.name = name
        self.id = 7
        self.url = f"/user/{name}/"
        self.settings: dict = {}
        self._auth_state = auth_state

    async def get_auth_state(self):
        return self._auth_state


class RecordingCoreV1:
    """Stands in for kubernetes_asyncio's CoreV1Api at the Secret seam; records exact calls."""

    def __init__(self, fail: dict[str, int] | None = None):
        self.calls: list[tuple] = []
        self.fail = fail or {}

    async def _call(self, method, *args):
        self.calls.append((method, *args))
        if method in self.fail:
            raise ApiException(status=self.fail[method], reason="test")

    async def create_namespaced_secret(self, namespace, body):
        await self._call("create_namespaced_secret", namespace, body)

    async def replace_namespaced_secret(self, name, namespace, body):
        await self._call("replace_namespaced_secret", name, namespace, body)

    async def delete_namespaced_secret(self, name, namespace):
        await self._call("delete_namespaced_secret", name, namespace)


def make_spawner(auth_state=AUTH_STATE, **config) -> IAMKubeSpawner:
    settings = dict(
        service_url="https://cmsaf.example/services/cmsaf/",
        issuer="https://iam.example/",
        condor_collector_host="cm.example:9618",
        condor_schedd_host="schedd.example",
        condor_schedd_name="schedd.example",
        condor_ca_file="/etc/pki/ca.pem",
        image="coffeateam/coffea-dask:2025.1.0",
        refresher_image="registry.cern.ch/cmsaf/cmsaf-hub:0.1",
        namespace="cmsaf",
    )
    settings.update(config)
    with mock.patch.object(kubespawner.spawner, "load_config", lambda **kw: None):
        spawner = IAMKubeSpawner(_mock=True, user=HubUser("alice", auth_state), **settings)
    spawner.api_token = "hub-server-token"
    return spawner


def pod_dict(pod) -> dict:
    return ApiClient().sanitize_for_serialization(pod)


def containers(pod: dict) -> dict[str, dict]:
    return {c["name"]: c for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])}


async def manifest(spawner: IAMKubeSpawner) -> dict:
    await spawner.load_session_tokens()
    await spawner.load_user_options()
    return pod_dict(await spawner.get_pod_manifest())


async def test_pod_env_volumes_and_containers():
    spawner = make_spawner(cmd=["jupyterhub-singleuser"])  # as deploy/helm/values.yaml sets it
    pod = await manifest(spawner)
    by_name = containers(pod)
    notebook = by_name["notebook"]
    env = {e["name"]: e.get("value") for e in notebook["env"]}
    assert env["CMSAF_TOKEN_DIR"] == "/var/run/cmsaf/tokens"
    assert env["BEARER_TOKEN_FILE"] == "/var/run/cmsaf/tokens/xrootd.token"
    assert env["_condor_SCITOKENS_FILE"] == "/var/run/cmsaf/tokens/condor.token"
    assert env["_condor_SEC_CLIENT_AUTHENTICATION_METHODS"] == "SCITOKENS"
    assert env["_condor_COLLECTOR_HOST"] == "cm.example:9618"
    assert env["_condor_AUTH_SSL_CLIENT_CAFILE"] == "/etc/pki/ca.pem"
    assert env["CMSAF_SERVICE_URL"] == "https://cmsaf.example/services/cmsaf/"
    assert env["CMSAF_ISSUER"] == "https://iam.example/"
    assert env["DASK_LABEXTENSION__FACTORY__CLASS"] == "HubCluster"
    assert env["DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER"] == "cmsaf_hub.client.security.security_loader"
    assert "--ServerApp.jpserver_extensions={'cmsaf_hub.client.labextension': True}" in notebook["args"]

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["cmsaf-token-secret"]["secret"] == {
        "secretName": "cmsaf-tokens-alice",
        "defaultMode": 0o400,
    }
    assert volumes["cmsaf-tokens"]["emptyDir"]["medium"] == "Memory"
    assert {m["name"]: m["mountPath"] for m in notebook["volumeMounts"]}["cmsaf-tokens"] == (
        "/var/run/cmsaf/tokens"
    )
    assert "cmsaf-token-secret" not in {m["name"] for m in notebook["volumeMounts"]}

    init = by_name[INIT_CONTAINER]
    assert pod["spec"]["initContainers"][0]["name"] == INIT_CONTAINER
    assert init["image"] == "coffeateam/coffea-dask:2025.1.0"
    assert {m["name"]: m["mountPath"] for m in init["volumeMounts"]} == {
        "cmsaf-token-secret": "/var/run/cmsaf/initial-tokens",
        "cmsaf-tokens": "/var/run/cmsaf/tokens",
    }
    refresher = by_name[REFRESHER_CONTAINER]
    assert refresher["image"] == "registry.cern.ch/cmsaf/cmsaf-hub:0.1"
    assert refresher["command"] == ["python", "-m", "spawners.refresher"]
    assert {e["name"]: e["value"] for e in refresher["env"]} == {
        "CMSAF_SERVICE_URL": "https://cmsaf.example/services/cmsaf/",
        "CMSAF_TOKEN_DIR": "/var/run/cmsaf/tokens",
        "JUPYTERHUB_API_TOKEN": "hub-server-token",
    }
    assert [m["name"] for m in refresher["volumeMounts"]] == ["cmsaf-tokens"]


async def test_not_privileged_and_same_uid_everywhere():
    pod = await manifest(make_spawner())
    assert pod["spec"]["securityContext"]["fsGroup"] == 100
    for container in containers(pod).values():
        context = container["securityContext"]
        assert context["runAsUser"] == 1000
        assert context["allowPrivilegeEscalation"] is False
        assert not context.get("privileged")


async def test_no_iam_token_or_secret_anywhere_in_the_pod():
    pod_text = json.dumps(await manifest(make_spawner()))
    for what, value in NEVER_IN_SESSION.items():
        assert value not in pod_text, what
    assert CONDOR_JWT not in pod_text and XROOTD_JWT not in pod_text  # tokens travel in the Secret


async def test_secret_holds_exactly_the_exchanged_tokens():
    spawner = make_spawner()
    files = token_files(await spawner.load_session_tokens())
    secret = pod_dict(spawner.get_token_secret_manifest(files))
    assert secret["metadata"]["name"] == "cmsaf-tokens-alice"
    assert secret["metadata"]["labels"]["hub.jupyter.org/username"] == "alice"
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"condor.token": CONDOR_JWT + "\n", "xrootd.token": XROOTD_JWT + "\n"}
    secret_text = json.dumps(secret)
    for what, value in NEVER_IN_SESSION.items():
        assert value not in secret_text, what


def test_init_script_copies_secret_files_to_0600(tmp_path):
    """Run the init container's script with /bin/sh on a Secret-volume-like layout (symlinks, 0400)."""
    src, dst = tmp_path / "secret", tmp_path / "tokens"
    data = src / "..2026_11_25"
    data.mkdir(parents=True)
    dst.mkdir()
    for name, content in {"condor.token": CONDOR_JWT + "\n", "xrootd.token": XROOTD_JWT + "\n"}.items():
        (data / name).write_text(content)
        os.chmod(data / name, 0o400)
        os.symlink(os.path.join("..2026_11_25", name), src / name)
    subprocess.run(
        ["/bin/sh", "-c", COPY_SCRIPT], env={"SRC": str(src), "DST": str(dst), "PATH": os.environ["PATH"]},
        check=True, timeout=30,
    )
    assert sorted(os.listdir(dst)) == ["condor.token", "xrootd.token"]
    assert (dst / "condor.token").read_text() == CONDOR_JWT + "\n"
    for name in os.listdir(dst):
        assert not (dst / name).is_symlink()
        assert stat.S_IMODE((dst / name).stat().st_mode) == 0o600


async def test_secret_seam_create_replace_delete():
    spawner = make_spawner()
    files = token_files(await spawner.load_session_tokens())
    spawner.api = RecordingCoreV1()
    await spawner.apply_token_secret(files)
    await spawner.delete_token_secret()
    assert [c[:3] if c[0] == "delete_namespaced_secret" else c[:2] for c in spawner.api.calls] == [
        ("create_namespaced_secret", "cmsaf"),
        ("delete_namespaced_secret", "cmsaf-tokens-alice", "cmsaf"),
    ]
    assert spawner.api.calls[0][2].metadata.name == "cmsaf-tokens-alice"

    spawner.api = RecordingCoreV1(fail={"create_namespaced_secret": 409})
    await spawner.apply_token_secret(files)
    assert [c[0] for c in spawner.api.calls] == ["create_namespaced_secret", "replace_namespaced_secret"]
    assert spawner.api.calls[1][1:3] == ("cmsaf-tokens-alice", "cmsaf")

    spawner.api = RecordingCoreV1(fail={"delete_namespaced_secret": 404})
    await spawner.delete_token_secret()  # already gone is fine
    spawner.api = RecordingCoreV1(fail={"create_namespaced_secret": 403})
    with pytest.raises(ApiException):
        await spawner.apply_token_secret(files)


async def test_missing_auth_state_fails_start_before_any_kubernetes_call():
    spawner = make_spawner(auth_state=None)
    spawner.api = RecordingCoreV1()
    with pytest.raises(HTTPError, match="No stored login tokens for alice.*log out, log in again") as e:
        await spawner._start()
    assert e.value.status_code == 400
    assert spawner.api.calls == []


async def test_profiles_apply_size_and_gpu():
    spawner = make_spawner(session_sizes=SIZES, session_images=IMAGES, image_allowlist=ALLOWLIST)
    spawner.user_options = {"profile": "gpu", "image": "root"}
    pod = await manifest(spawner)
    notebook = containers(pod)["notebook"]
    assert notebook["image"] == "registry.cern.ch/cmsaf/root:6.32"
    assert notebook["resources"]["limits"] == {"cpu": 4.0, "memory": 16 * 2**30, "nvidia.com/gpu": "1"}
    assert containers(pod)[INIT_CONTAINER]["image"] == "registry.cern.ch/cmsaf/root:6.32"


async def test_default_profile_is_first_size_and_first_image():
    spawner = make_spawner(session_sizes=SIZES, session_images=IMAGES, image="placeholder:1")
    notebook = containers(await manifest(spawner))["notebook"]
    assert notebook["image"] == "coffeateam/coffea-dask:2025.1.0"
    assert notebook["resources"]["limits"] == {"cpu": 1.0, "memory": 2 * 2**30}


async def test_custom_image_inside_allowlist_is_used():
    spawner = make_spawner(session_sizes=SIZES, session_images=IMAGES, image_allowlist=ALLOWLIST)
    spawner.user_options = spawner.options_from_form(
        {"profile": ["small"], "profile-option-small--image--unlisted-choice": ["registry.cern.ch/cmsaf/mine:2"]}
    )
    notebook = containers(await manifest(spawner))["notebook"]
    assert notebook["image"] == "registry.cern.ch/cmsaf/mine:2"


async def test_custom_image_outside_allowlist_is_a_form_error():
    spawner = make_spawner(session_sizes=SIZES, session_images=IMAGES, image_allowlist=ALLOWLIST)
    with pytest.raises(ImageNotAllowed, match=r"'docker.io/evil/miner:1' is not allowed: it must match one of registry.cern.ch/cmsaf/\*"):
        spawner.options_from_form(
            {"profile": ["small"], "profile-option-small--image--unlisted-choice": ["docker.io/evil/miner:1"]}
        )


async def test_custom_image_via_rest_is_checked_too():
    spawner = make_spawner(session_sizes=SIZES, session_images=IMAGES, image_allowlist=ALLOWLIST)
    spawner.user_options = {"profile": "small", "image--unlisted-choice": "docker.io/evil/miner:1"}
    spawner.api = RecordingCoreV1()
    with pytest.raises(HTTPError, match="'docker.io/evil/miner:1' is not allowed") as e:
        await spawner._start()
    assert e.value.status_code == 400
    assert spawner.api.calls == []  # refused before any Secret is created


async def test_custom_image_refused_without_allowlist_and_bad_profile_named():
    spawner = make_spawner(session_sizes=SIZES, session_images=IMAGES)
    spawner.user_options = {"profile": "small", "image--unlisted-choice": "registry.cern.ch/cmsaf/x:1"}
    with pytest.raises(HTTPError, match="Custom images are not allowed"):
        await spawner.load_user_options()
    spawner.user_options = {"profile": "huge"}
    with pytest.raises(HTTPError, match="No such profile: huge"):
        await spawner.load_user_options()
    spawner.user_options = {"profile": "small", "image": "nope"}
    with pytest.raises(HTTPError, match="Unknown image 'nope' for 'small': choose one of coffea, root"):
        await spawner.load_user_options()
    spawner.user_options = {"profile": "small", "image--unlisted-choice": 7}
    with pytest.raises(HTTPError, match="The custom image must be a string"):
        await spawner.load_user_options()


@pytest.mark.parametrize(
    "image, ok",
    [
        ("registry.cern.ch/cmsaf/analysis:1.0", True),
        ("docker.io/coffeateam/coffea-dask@sha256:" + "a" * 64, True),
        ("registry.cern.ch/other/analysis:1.0", False),
        ("registry.cern.ch/cmsaf/analysis:1.0 --privileged", False),
        ("REGISTRY.cern.ch/cmsaf/x", False),
        ("", False),
    ],
)
def test_check_image(image, ok):
    if ok:
        assert check_image(image, ALLOWLIST) == image
    else:
        with pytest.raises(ImageNotAllowed):
            check_image(image, ALLOWLIST)


def test_profile_list_shape_and_bad_sizes():
    profiles = build_profile_list(SIZES, IMAGES, allow_custom_image=False)
    assert [p["slug"] for p in profiles] == ["small", "gpu"]
    assert profiles[0]["default"] and not profiles[1]["default"]
    assert profiles[1]["description"] == "4 CPU, 16G memory, 1 GPU"
    assert "unlisted_choice" not in profiles[0]["profile_options"]["image"]
    assert build_profile_list(SIZES, IMAGES, True)[0]["profile_options"]["image"]["unlisted_choice"]["enabled"]
    with pytest.raises(ValueError, match="unknown keys"):
        build_profile_list([{"slug": "x", "cpus": 2}], {}, False)
    with pytest.raises(ValueError, match="needs a 'slug'"):
        build_profile_list([{"cpu": 2}], {}, False)


async def test_user_name_cannot_escape_the_token_dir():
    spawner = make_spawner(token_dir="/var/run/cmsaf/{username}/tokens")
    spawner.user.name = ".."
    with pytest.raises(HTTPError, match="cannot name a session directory"):
        spawner.resolved_token_dir()


#: The complete environment of the notebook container: JupyterHub's variables for the server, the
#: session's settings (spawners.tokens.session_env) and nothing of the hub's own environment.
NOTEBOOK_ENV = {
    "JPY_API_TOKEN", "JUPYTERHUB_ACTIVITY_URL", "JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "JUPYTERHUB_BASE_URL",
    "JUPYTERHUB_CLIENT_ID", "JUPYTERHUB_COOKIE_HOST_PREFIX_ENABLED", "JUPYTERHUB_HOST",
    "JUPYTERHUB_OAUTH_ACCESS_SCOPES", "JUPYTERHUB_OAUTH_CALLBACK_URL", "JUPYTERHUB_OAUTH_CLIENT_ALLOWED_SCOPES",
    "JUPYTERHUB_OAUTH_SCOPES", "JUPYTERHUB_PUBLIC_HUB_URL", "JUPYTERHUB_PUBLIC_URL", "JUPYTERHUB_SERVER_NAME",
    "JUPYTERHUB_SERVICE_URL", "JUPYTERHUB_USER", "JUPYTER_IMAGE", "JUPYTER_IMAGE_SPEC",
    "BEARER_TOKEN_FILE", "CMSAF_ISSUER", "CMSAF_SERVICE_URL", "CMSAF_TOKEN_DIR",
    "DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER", "DASK_LABEXTENSION__FACTORY__CLASS",
    "DASK_LABEXTENSION__FACTORY__MODULE", "DASK_GATEWAY__ADDRESS", "DASK_GATEWAY__AUTH__TYPE",
    "DASK_GATEWAY__PROXY_ADDRESS", "DASK_GATEWAY__PUBLIC_ADDRESS",
    "_condor_AUTH_SSL_CLIENT_CAFILE", "_condor_COLLECTOR_HOST", "_condor_SCHEDD_HOST", "_condor_SCHEDD_NAME",
    "_condor_SCITOKENS_FILE", "_condor_SEC_CLIENT_AUTHENTICATION_METHODS",
}


async def test_pod_environments_are_built_never_inherited_from_the_hub(monkeypatch):
    """The hub's own secrets (in its environment) reach no container of the pod; each container's
    environment is exactly the built set."""
    hub_secrets = {"JUPYTERHUB_CRYPT_KEY": "hub-crypt-key-1", "CMSAF_IAM_CLIENT_SECRET": "iam-client-secret-2",
                   "CONFIGPROXY_AUTH_TOKEN": "proxy-token-3", "CMSAF_SERVICE_CRYPT_KEY": "service-key-4",
                   "PYTHONPATH": "/srv/hub-only", "PATH": "/srv/hub-only/bin"}
    for name, value in hub_secrets.items():
        monkeypatch.setenv(name, value)
    pod = await manifest(make_spawner())
    envs = {name: {e["name"]: e.get("value") for e in c.get("env") or []} for name, c in containers(pod).items()}
    assert set(envs["notebook"]) == NOTEBOOK_ENV
    assert set(envs[REFRESHER_CONTAINER]) == {"CMSAF_SERVICE_URL", "CMSAF_TOKEN_DIR", "JUPYTERHUB_API_TOKEN"}
    assert set(envs[INIT_CONTAINER]) == {"SRC", "DST"}
    pod_text = json.dumps(pod)
    for name, value in hub_secrets.items():
        assert value not in pod_text, name
