"""The Kubernetes deployment (deploy/): validated offline, and consistent with the code it deploys.

- Every manifest in deploy/manifests/ is validated strictly (unknown fields are errors) against the
  Kubernetes OpenAPI schemas shipped by PyPI ``kubernetes-validate``, for the oldest Kubernetes
  release we support and the newest the validator knows.
- The zero-to-jupyterhub values (deploy/helm/) are checked structurally against the chart's keys
  this deployment uses (the chart's own values schema is not published in any package registry,
  so it cannot be fetched offline), and every Kubernetes object embedded in them (volumes, mounts,
  env vars, service ports, network-policy rules) against the Kubernetes schemas.
- The names in the values must exist in the code: configurable traits of IAMAuthenticator,
  IAMKubeSpawner, CmsafService and HTCondorBackend, JupyterHub scopes, the Secret verbs the spawner
  uses, the HTCondor series of the bindings.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import pytest
import yaml
from traitlets.config import Config

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="offline Kubernetes schemas: `pip install kubernetes-validate==1.37.0`"
)
from kubernetes_validate import utils as kv_utils  # noqa: E402
from referencing import Registry, Resource  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
CVMFS_CSI_OVERLAY = DEPLOY / "helm" / "cvmfs-csi.yaml"
ADMIN_GUIDE = REPO / "docs" / "admin-guide.md"

#: Oldest Kubernetes release the deployment supports, and the newest the validator ships.
KUBERNETES_VERSIONS = ("1.30.0", kv_utils.latest_version())


def manifest_documents() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted((DEPLOY / "manifests").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield f"{path.name}:{doc.get('kind')}/{doc.get('metadata', {}).get('name')}", doc


MANIFESTS = list(manifest_documents())


def helm_merge(base: Any, overlay: Any) -> Any:
    """Helm's values merge: maps merge key by key, everything else (lists too) is replaced."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        merged = dict(base)
        for key, value in overlay.items():
            merged[key] = helm_merge(base.get(key), value) if key in base else copy.deepcopy(value)
        return merged
    return copy.deepcopy(overlay)


def load_values(*overlays: Path) -> dict[str, Any]:
    values = yaml.safe_load(VALUES.read_text())
    for overlay in overlays:
        values = helm_merge(values, yaml.safe_load(overlay.read_text()))
    return values


SITE_EXAMPLE = DEPLOY / "helm" / "site-example.yaml"
VALUE_SETS = {
    "values": load_values(),
    "values+cvmfs-csi": load_values(CVMFS_CSI_OVERLAY),
    "values+site-example": load_values(SITE_EXAMPLE),
}


# --- Kubernetes manifests ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", [d for _, d in MANIFESTS], ids=[i for i, _ in MANIFESTS])
def test_manifest_is_valid_kubernetes(doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {path}: {e.message}")
    except kv_utils.SchemaNotFoundError as e:
        pytest.fail(e.message)  # an unknown kind or apiVersion is a typo too


def test_strict_validation_rejects_a_typo():
    """The validator really is strict: a misspelt field fails (guards the tests above)."""
    _, deployment = next((i, d) for i, d in MANIFESTS if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["volumeMount"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[0], strict=True)


# --- zero-to-jupyterhub values: structure -------------------------------------------------------------


def obj(properties: dict[str, Any] | set[str], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A closed JSON-schema object; a set of names means "any value" for each."""
    if isinstance(properties, set):
        properties = {name: {} for name in properties}
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(required)}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
IMAGE = obj({"name": {"type": "string"}, "tag": {"type": "string"}, "pullPolicy": {},
             "pullSecrets": {"type": "array"}}, required=("name", "tag"))
NETWORK_POLICY = obj({
    "enabled": {"type": "boolean"}, "ingress": {"type": "array"}, "egress": {"type": "array"},
    "egressAllowRules": obj({name: {"type": "boolean"} for name in (
        "cloudMetadataServer", "dnsPortsCloudMetadataServer", "dnsPortsKubeSystemNamespace",
        "dnsPortsPrivateIPs", "nonPrivateIPs", "privateIPs")}),
    "interNamespaceAccessLabels": {"enum": ["accept", "ignore"]}, "allowedIngressPorts": {"type": "array"},
})
EXTRA_FILES = {"type": "object", "additionalProperties": {
    **obj({"mountPath": {"type": "string"}, "data": {"type": "object"}, "stringData": {"type": "string"},
           "binaryData": {"type": "string"}, "mode": {"type": "number"}}, required=("mountPath",)),
    "oneOf": [{"required": ["data"]}, {"required": ["stringData"]}, {"required": ["binaryData"]}],
}}
ENV = {"type": ["object", "array"]}

#: The zero-to-jupyterhub 4.x keys, at every level this deployment touches (names as in the chart's
#: values.schema.yaml). A key outside these is a typo, or a chart key to add here on purpose.
Z2JH_VALUES = obj({
    **{name: {} for name in ("enabled", "fullnameOverride", "nameOverride", "imagePullSecret",
                              "imagePullSecrets", "custom", "scheduling", "prePuller", "debug",
                              "rbac", "global")},
    "hub": obj({
        **{name: {} for name in (
            "revisionHistoryLimit", "baseUrl", "command", "args", "cookieSecret", "labels",
            "initContainers", "extraConfig", "fsGid", "pdb", "existingSecret", "nodeSelector",
            "tolerations", "activeServerLimit", "allowNamedServers", "annotations",
            "authenticatePrometheus", "concurrentSpawnLimit", "consecutiveFailureLimit",
            "podSecurityContext", "containerSecurityContext", "deploymentStrategy", "extraContainers",
            "livenessProbe", "readinessProbe", "namedServerLimitPerUser", "redirectToServer",
            "resources", "lifecycle", "shutdownOnLogout", "templatePaths", "templateVars",
            "serviceAccount", "extraPodSpec")},
        "config": {"type": "object", "additionalProperties": {"type": "object"}},
        "extraFiles": EXTRA_FILES,
        "image": IMAGE,
        "networkPolicy": NETWORK_POLICY,
        "db": obj({"type": {"enum": ["sqlite-pvc", "sqlite-memory", "mysql", "postgres", "other"]},
                   "pvc": {"type": "object"}, "upgrade": {}, "url": {}, "password": {}}),
        "extraEnv": ENV,
        "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                        "ports": {"type": "object"}, "annotations": STRING_MAP,
                        "extraPorts": {"type": "array"}, "loadBalancerIP": {}}),
        "extraVolumes": {"type": "array"}, "extraVolumeMounts": {"type": "array"},
        "services": {"type": "object", "additionalProperties": {"type": "object", "properties": {
            "name": {"type": "string"}, "admin": {"type": "boolean"},
            "command": {"type": ["string", "array"]}, "url": {"type": "string"}}}},
        "loadRoles": {"type": "object", "additionalProperties": obj({
            "name": {"type": "string"}, "description": {"type": "string"},
            "scopes": {"type": "array", "items": {"type": "string"}},
            "users": {"type": "array"}, "services": {"type": "array"}, "groups": {"type": "array"}})},
    }),
    "proxy": obj({
        **{name: {} for name in ("secretToken", "https", "traefik", "labels", "annotations",
                                  "deploymentStrategy", "secretSync")},
        "service": obj({"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
                        **{n: {} for n in ("labels", "annotations", "nodePorts", "disableHttpPort",
                                           "extraPorts", "loadBalancerIP", "loadBalancerSourceRanges")}}),
        "chp": obj({
            **{name: {} for name in (
                "revisionHistoryLimit", "extraCommandLineFlags", "extraEnv", "pdb", "nodeSelector",
                "tolerations", "containerSecurityContext", "livenessProbe", "readinessProbe",
                "resources", "defaultTarget", "errorTarget", "extraPodSpec")},
            "image": IMAGE, "networkPolicy": NETWORK_POLICY}),
    }),
    "singleuser": obj({
        **{name: {} for name in (
            "podNameTemplate", "cpu", "memory", "initContainers", "profileList", "extraFiles",
            "nodeSelector", "extraTolerations", "extraNodeAffinity", "extraPodAffinity",
            "extraPodAntiAffinity", "cloudMetadata", "events", "extraAnnotations", "extraContainers",
            "extraLabels", "extraPodConfig", "extraResource", "lifecycleHooks", "networkTools",
            "serviceAccountName", "startTimeout", "allowPrivilegeEscalation")},
        "networkPolicy": NETWORK_POLICY, "image": IMAGE, "extraEnv": ENV,
        "uid": {"type": ["integer", "null"]}, "fsGid": {"type": ["integer", "null"]},
        "cmd": {"type": ["array", "string", "null"]}, "defaultUrl": {"type": ["string", "null"]},
        "storage": obj({
            "type": {"enum": ["dynamic", "static", "none"]}, "homeMountPath": {"type": "string"},
            "capacity": {"type": ["string", "null"]}, "extraVolumes": {"type": "array"},
            "extraVolumeMounts": {"type": "array"},
            **{n: {} for n in ("dynamic", "extraLabels", "static")}}, required=("type", "homeMountPath")),
    }),
    "ingress": obj({"enabled": {"type": "boolean"}, "annotations": STRING_MAP,
                    "ingressClassName": {"type": ["string", "null"]}, "hosts": {"type": "array"},
                    "pathSuffix": {}, "pathType": {"enum": ["Prefix", "Exact", "ImplementationSpecific"]},
                    "tls": {"type": "array"}}, required=("enabled",)),
    "cull": obj({"enabled": {"type": "boolean"},
                 **{n: {"type": ["integer", "null"]} for n in ("timeout", "every", "concurrency", "maxAge")},
                 **{n: {"type": ["boolean", "null"]} for n in ("users", "adminUsers", "removeNamedServers")}},
                required=("enabled",)),
})


@pytest.mark.parametrize("name", VALUE_SETS)
def test_values_use_only_chart_keys(name):
    errors = sorted(jsonschema.Draft7Validator(Z2JH_VALUES).iter_errors(VALUE_SETS[name]), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_site_example_overrides_every_site_setting():
    """Nothing of the placeholder facility (example.org) is left once the site example is merged."""
    placeholders = [line for line in VALUES.read_text().splitlines() if "# SITE" in line]
    assert len(placeholders) >= 10
    merged = yaml.safe_dump(VALUE_SETS["values+site-example"])
    assert "example.org" not in merged, [line for line in merged.splitlines() if "example.org" in line]


def test_values_structure_check_rejects_a_typo():
    broken = load_values()
    broken["hub"]["extraEnvs"] = broken["hub"].pop("extraEnv")
    assert not jsonschema.Draft7Validator(Z2JH_VALUES).is_valid(broken)


# --- zero-to-jupyterhub values: embedded Kubernetes objects ------------------------------------------


def fragment_errors(value: Any, schema_name: str, version: str) -> list[str]:
    """Strict Kubernetes-schema errors of one embedded object, e.g. ``volume-v1``."""
    schema_dir = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv_utils.schema_contents(f"{schema_dir}/{schema_name}.json", version)
    definitions = kv_utils.schema_contents(f"{schema_dir}/_definitions.json", version)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    validator = jsonschema.Draft202012Validator(schema, registry=registry)
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(value)]


def env_vars(env: dict[str, Any] | list[Any]) -> list[dict[str, Any]]:
    """The chart's env notations (``NAME: value`` or ``NAME: {valueFrom: ...}``) as EnvVars."""
    if isinstance(env, list):
        return env
    return [{"name": k, "value": v} if isinstance(v, str) else {"name": k, **v} for k, v in env.items()]


def embedded_objects(values: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:
    hub, singleuser, chp = values["hub"], values["singleuser"], values["proxy"]["chp"]
    for where, items, kind in (
        ("hub.extraVolumes", hub.get("extraVolumes", []), "volume-v1"),
        ("hub.extraVolumeMounts", hub.get("extraVolumeMounts", []), "volumemount-v1"),
        ("singleuser.storage.extraVolumes", singleuser["storage"].get("extraVolumes", []), "volume-v1"),
        ("singleuser.storage.extraVolumeMounts", singleuser["storage"].get("extraVolumeMounts", []),
         "volumemount-v1"),
        ("hub.extraEnv", env_vars(hub.get("extraEnv", {})), "envvar-v1"),
        ("singleuser.extraEnv", env_vars(singleuser.get("extraEnv", {})), "envvar-v1"),
        ("hub.service.extraPorts", hub.get("service", {}).get("extraPorts", []), "serviceport-v1"),
    ):
        for index, item in enumerate(items):
            yield f"{where}[{index}]", kind, item
    for where, policy in (("hub", hub), ("singleuser", singleuser), ("proxy.chp", chp)):
        for direction in ("ingress", "egress"):
            for index, rule in enumerate(policy.get("networkPolicy", {}).get(direction, [])):
                yield (f"{where}.networkPolicy.{direction}[{index}]",
                       f"networkpolicy{direction}rule-networking-v1", rule)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_values_embed_valid_kubernetes_objects(name, version):
    found = list(embedded_objects(VALUE_SETS[name]))
    assert len(found) >= 10  # volumes, mounts, env, ports and policy rules are all present
    errors = [f"{where}: {error}" for where, kind, item in found for error in fragment_errors(item, kind, version)]
    assert not errors, "\n".join(errors)


def test_embedded_object_check_rejects_a_typo():
    volume = {"name": "cvmfs", "hostpath": {"path": "/cvmfs"}}
    assert fragment_errors(volume, "volume-v1", KUBERNETES_VERSIONS[0])


# --- CVMFS: node path by default, CSI by overlay ----------------------------------------------------


def session_volumes(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in values["singleuser"]["storage"]["extraVolumes"]}


def test_cvmfs_overlay_swaps_only_the_cvmfs_volume():
    base, csi = session_volumes(VALUE_SETS["values"]), session_volumes(VALUE_SETS["values+cvmfs-csi"])
    assert base["cvmfs"]["hostPath"]["path"] == "/cvmfs"
    claim = csi["cvmfs"]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    # Helm replaces lists whole: the overlay must keep every other session volume
    assert {k: v for k, v in csi.items() if k != "cvmfs"} == {k: v for k, v in base.items() if k != "cvmfs"}
    pvc = next(d for _, d in MANIFESTS if d["kind"] == "PersistentVolumeClaim"
               and d["metadata"]["name"] == claim["claimName"])
    storage_class = next(d for _, d in MANIFESTS if d["kind"] == "StorageClass")
    assert pvc["spec"]["storageClassName"] == storage_class["metadata"]["name"]
    assert storage_class["provisioner"] == "cvmfs.csi.cern.ch"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_sessions_mount_cvmfs_read_only_with_propagation(name):
    mounts = {m["name"]: m for m in VALUE_SETS[name]["singleuser"]["storage"]["extraVolumeMounts"]}
    assert mounts["cvmfs"]["mountPath"] == "/cvmfs"
    assert mounts["cvmfs"]["readOnly"] is True
    assert mounts["cvmfs"]["mountPropagation"] == "HostToContainer"


def test_worker_jobs_bind_cvmfs():
    condor = condor_configmap()["data"]["90-cmsaf-execute-point.conf"]
    assert re.search(r'^SINGULARITY_BIND_EXPR\s*=\s*"/cvmfs"', condor, re.M)
    assert re.search(r"^DOCKER_VOLUME_DIR_CVMFS\s*=\s*/cvmfs:/cvmfs:ro", condor, re.M)


# --- the values name real things ----------------------------------------------------------------------


def configurable_classes() -> dict[str, type]:
    from jupyterhub.app import JupyterHub
    from jupyterhub.auth import Authenticator

    from authenticators import IAMAuthenticator
    from cmsaf_hub.service.app import CmsafService
    from cmsaf_hub.service.backends.htcondor import HTCondorBackend
    from cmsaf_hub.service.broker import Broker
    from cmsaf_hub.service.gateway import DaskGateway
    from spawners import IAMKubeSpawner

    return {cls.__name__: cls for cls in (JupyterHub, Authenticator, IAMAuthenticator, IAMKubeSpawner,
                                          CmsafService, HTCondorBackend, DaskGateway, Broker)}


def unknown_traits(config: dict[str, dict[str, Any]]) -> list[str]:
    classes = configurable_classes()
    return [
        f"{section}.{trait}"
        for section, traits in config.items()
        for trait in traits
        if section not in classes or trait not in classes[section].class_trait_names(config=True)
    ]


def test_hub_loads_the_project_classes_by_their_entry_point_names():
    from jupyterhub.app import JupyterHub

    from authenticators import IAMAuthenticator
    from spawners import IAMKubeSpawner

    names = VALUE_SETS["values"]["hub"]["config"]["JupyterHub"]
    assert (names["authenticator_class"], names["spawner_class"]) == ("cmsaf-iam", "cmsaf-kube")
    hub = JupyterHub(config=Config({"JupyterHub": names}))  # resolved as JupyterHub resolves them
    assert hub.authenticator_class is IAMAuthenticator
    assert hub.spawner_class is IAMKubeSpawner


def test_hub_config_sets_only_existing_traits():
    config = VALUE_SETS["values"]["hub"]["config"]
    assert {"IAMAuthenticator", "IAMKubeSpawner"} <= set(config)
    assert not unknown_traits(config)


def test_authenticator_accepts_the_configured_values():
    from authenticators import IAMAuthenticator

    settings = VALUE_SETS["values"]["hub"]["config"]["IAMAuthenticator"]
    authenticator = IAMAuthenticator(config=Config({"IAMAuthenticator": settings}))
    assert authenticator.token_exchanges["condor"]["scope"].split() == [
        "compute.read", "compute.create", "compute.modify", "compute.cancel"]
    assert authenticator.issuer.endswith("/")


def test_spawn_page_profiles_build_from_the_values():
    from spawners.profiles import build_profile_list

    spawner = VALUE_SETS["values"]["hub"]["config"]["IAMKubeSpawner"]
    profiles = build_profile_list(spawner["session_sizes"], spawner["session_images"], allow_custom_image=False)
    assert [p["slug"] for p in profiles] == [size["slug"] for size in spawner["session_sizes"]]
    images = {i["image"] for i in spawner["session_images"].values()}
    session = VALUE_SETS["values"]["singleuser"]["image"]
    assert f"{session['name']}:{session['tag']}" in images  # the default image is on offer


def service_config(tmp_path, monkeypatch, values_name: str = "values") -> Config:
    """The service config file run as the hub runs it: the service's environment, mounted secrets."""
    (tmp_path / "db-password").write_text("db-secret\n")
    (tmp_path / "crypt-key").write_text("lPl3QbHDnAvU4AMvK6ieH9uyzIb9iWd2aFQ0aTzo_dY=\n")
    hub = VALUE_SETS[values_name]["hub"]
    for name, value in hub["services"]["cmsaf"]["environment"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CMSAF_SECRETS_DIR", str(tmp_path))
    source = hub["extraFiles"]["cmsaf-service-config"]["stringData"]
    config = Config()
    exec(compile(source, "cmsaf_service_config.py", "exec"), {"get_config": lambda: config})
    return config


def test_service_config_file_sets_existing_traits(tmp_path, monkeypatch):
    config = service_config(tmp_path, monkeypatch)
    assert not unknown_traits({section: dict(traits) for section, traits in config.items()})


def test_site_service_settings_reach_the_service(tmp_path, monkeypatch):
    from cmsaf_hub.service.backends.htcondor import HTCondorBackend

    config = service_config(tmp_path, monkeypatch, "values+site-example")
    assert HTCondorBackend(config=config).default_image.startswith("docker://registry.cms-af.example.eu/")


def test_service_config_builds_a_working_service_and_backend(tmp_path, monkeypatch):
    from cmsaf_hub.service.app import CmsafService
    from cmsaf_hub.service.backends.htcondor import HTCondorBackend

    config = service_config(tmp_path, monkeypatch)
    environment = VALUE_SETS["values"]["hub"]["services"]["cmsaf"]["environment"]
    service = CmsafService(config=config)
    assert service.backend_class is HTCondorBackend and service.backend_tokens
    assert service.db_url.startswith("postgresql+psycopg://cmsaf:db-secret@cmsaf-db:5432/")
    assert (service.public_url, service.issuer) == (environment["CMSAF_PUBLIC_URL"], environment["CMSAF_ISSUER"])
    assert service.cluster_env["CMSAF_XCACHE_URL"] == environment["CMSAF_XCACHE_URL"]
    backend = HTCondorBackend(config=config)
    assert backend.condor_config["COLLECTOR_HOST"] == "cmsaf-condor-cm:9618"
    assert backend.default_image == environment["CMSAF_WORKER_IMAGE"]


@pytest.mark.parametrize("values_name", ["values", "values+site-example"])
def test_the_brokers_paths_on_the_hubs_public_host_go_to_its_listener(tmp_path, monkeypatch, values_name):
    """Broker.listen's port is a hub Service port the network policy admits; the broker Ingress
    routes the broker's paths (and only those) of the hub's own public host there; the public URL
    workers are told (the API's and HTCondor's) is the hub's."""
    import re
    from urllib.parse import urlsplit

    from cmsaf_hub.service.backends.htcondor import HTCondorBackend
    from cmsaf_hub.service.broker import Broker, ingress_path

    hub = VALUE_SETS[values_name]["hub"]
    config = service_config(tmp_path, monkeypatch, values_name)
    broker = Broker(config=config)
    public_url = hub["services"]["cmsaf"]["environment"]["CMSAF_BROKER_PUBLIC_URL"]
    assert broker.public_url == HTCondorBackend(config=config).broker_url == public_url
    assert urlsplit(public_url).hostname == urlsplit(hub["services"]["cmsaf"]["environment"]["CMSAF_PUBLIC_URL"]).hostname
    assert urlsplit(public_url).hostname in VALUE_SETS[values_name]["ingress"]["hosts"]
    port = int(broker.listen.rpartition(":")[2])
    assert {"name": "cmsaf-broker", "port": port, "targetPort": port} in hub["service"]["extraPorts"]
    assert any(port in [p["port"] for p in rule["ports"]] for rule in hub["networkPolicy"]["ingress"])
    [ingress] = [d for name, d in MANIFESTS if name == "broker-ingress.yaml:Ingress/cmsaf-broker"]
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/use-regex"] == "true"
    [rule] = ingress["spec"]["rules"]
    [path] = rule["http"]["paths"]
    assert path["path"] == ingress_path("services/cmsaf") and path["pathType"] == "ImplementationSpecific"
    assert path["backend"]["service"] == {"name": "hub", "port": {"number": port}}
    if values_name == "values":  # the manifest carries the placeholder host, as values.yaml does
        assert rule["host"] == urlsplit(public_url).hostname
        assert ingress["spec"]["tls"] == VALUE_SETS[values_name]["ingress"]["tls"]
    # the routed paths are the broker's URLs, and none of the service's others
    routed = re.compile("^" + path["path"])
    cid = "3f2a9c"
    for url in (f"/services/cmsaf/clusters/{cid}/broker/w1", f"/services/cmsaf/clusters/{cid}/broker/w1/T0k",
                f"/services/cmsaf/clusters/{cid}/workers/w1"):
        assert routed.match(url), url
        assert any(re.fullmatch(spec, url) for spec, _, _ in broker.handlers("services/cmsaf", None, None)), url
    for url in (f"/services/cmsaf/clusters/{cid}/comm", f"/services/cmsaf/clusters/{cid}/tls",
                f"/services/cmsaf/clusters/{cid}/dashboard/status", "/services/cmsaf/api/v1/clusters",
                f"/services/cmsaf/api/v1/clusters/{cid}/workers", "/hub/api/users"):
        assert not routed.match(url), url


def test_service_is_registered_where_the_proxy_and_command_find_it():
    hub = VALUE_SETS["values"]["hub"]
    service = hub["services"]["cmsaf"]
    port = int(service["url"].rsplit(":", 1)[1])
    assert service["url"] == f"http://hub:{port}"
    assert {"name": "cmsaf", "port": port, "targetPort": port} in hub["service"]["extraPorts"]
    assert any(port in [p["port"] for p in rule["ports"]] for rule in hub["networkPolicy"]["ingress"])
    assert any(port in [p["port"] for p in rule["ports"]]
               for rule in VALUE_SETS["values"]["proxy"]["chp"]["networkPolicy"]["egress"])
    from cmsaf_hub.service.app import CmsafService

    assert service["command"][:3] == ["python3", "-m", "cmsaf_hub"]  # cmsaf_hub/__main__.py
    assert (REPO / "cmsaf_hub" / "__main__.py").exists()
    flag, _, config_path = service["command"][3].partition("=")
    assert CmsafService.aliases[flag.lstrip("-")] == "CmsafService.config_file"
    assert hub["extraFiles"]["cmsaf-service-config"]["mountPath"] == config_path


def test_service_entries_are_jupyterhub_service_fields():
    from jupyterhub.services.service import Service

    fields = set(Service.class_trait_names()) | {"apiToken"}  # the chart renames apiToken
    for name, service in VALUE_SETS["values"]["hub"]["services"].items():
        assert set(service) <= fields, f"hub.services.{name}: {set(service) - fields}"


def test_roles_use_real_scopes_and_give_the_service_what_it_needs():
    from jupyterhub.scopes import _check_scopes_exist

    roles = VALUE_SETS["values"]["hub"]["loadRoles"]
    for role in roles.values():
        _check_scopes_exist(role["scopes"])
    service_role = next(r for r in roles.values() if "cmsaf" in r.get("services", []))
    assert {"admin:auth_state", "read:users", "list:users", "access:services"} <= set(service_role["scopes"])
    for default_role in ("user", "server"):  # browsers and sessions' JUPYTERHUB_API_TOKEN reach the service
        assert "access:services!service=cmsaf" in roles[default_role]["scopes"]


#: Keys that hold secrets (but not keys naming one, like ``secretName`` or ``bearer_token_name``).
SECRET_NAME = re.compile(r"(secret|password|token|crypt.?key)(?!.*name$)", re.I)


def literal_secrets(node: Any, path: str = "") -> Iterator[str]:
    """Paths of secret-named keys given a literal value (a secret written into the values)."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else str(key)
            if SECRET_NAME.search(str(key)) and isinstance(value, (str, int)) and not isinstance(value, bool):
                yield where
            elif SECRET_NAME.search(str(key)) and isinstance(value, dict) and "value" in value:
                yield where
            else:
                yield from literal_secrets(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from literal_secrets(value, f"{path}[{index}]")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_secrets_come_from_kubernetes_secrets_only(name):
    hub = VALUE_SETS[name]["hub"]
    for variable in ("OAUTH_CLIENT_ID", "OAUTH_CLIENT_SECRET", "JUPYTERHUB_CRYPT_KEY"):
        assert "secretKeyRef" in hub["extraEnv"][variable]["valueFrom"]
    assert not list(literal_secrets(VALUE_SETS[name]))


def test_literal_secret_check_catches_one():
    values = helm_merge(load_values(), {"hub": {"extraEnv": {"JUPYTERHUB_CRYPT_KEY": "0123abcd"},
                                                "config": {"IAMAuthenticator": {"client_secret": "s3"}}}})
    assert sorted(literal_secrets(values)) == [
        "hub.config.IAMAuthenticator.client_secret", "hub.extraEnv.JUPYTERHUB_CRYPT_KEY"]


def referenced_secrets() -> set[str]:
    """Names of every Secret the values and manifests read."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secret"):
                ref = node.get(key)
                if isinstance(ref, dict):
                    found.add(ref.get("name") or ref.get("secretName"))
            if "secretName" in node:
                found.add(node["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(VALUE_SETS["values"])
    walk(VALUE_SETS["values+cvmfs-csi"])
    for _, doc in MANIFESTS:
        walk(doc)
    return found


def test_admin_guide_says_how_to_create_every_secret():
    guide = ADMIN_GUIDE.read_text()
    missing = [name for name in sorted(referenced_secrets())
               if not re.search(rf"kubectl[^\n]*create secret[^\n]*\s{re.escape(name)}\s", guide)]
    assert not missing, f"docs/admin-guide.md has no `kubectl create secret` for {missing}"


# --- RBAC for the spawner's token Secrets -------------------------------------------------------------

#: kubernetes_asyncio method prefix -> the RBAC verb it needs.
API_VERBS = {"create": "create", "read": "get", "replace": "update", "patch": "patch",
             "delete": "delete", "list": "list"}


def test_token_secret_role_grants_every_verb_the_spawner_uses():
    source = (REPO / "spawners" / "kube.py").read_text()
    calls = set(re.findall(r"\.api\.(\w+?)_namespaced_secret\(", source))
    assert calls, "IAMKubeSpawner no longer calls the Secret API: revisit this Role"
    role = next(d for _, d in MANIFESTS if d["kind"] == "Role" and d["metadata"]["name"] == "cmsaf-hub-token-secrets")
    (rule,) = role["rules"]
    assert rule["resources"] == ["secrets"]
    assert {API_VERBS[call] for call in calls} <= set(rule["verbs"])
    binding = next(d for _, d in MANIFESTS if d["kind"] == "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hub"}]


# --- HTCondor pool -------------------------------------------------------------------------------------


def condor_configmap() -> dict[str, Any]:
    return next(d for _, d in MANIFESTS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "cmsaf-condor-config")


def test_schedd_uses_the_verified_scitokens_recipe():
    schedd = condor_configmap()["data"]["90-cmsaf-schedd.conf"]
    pool = condor_configmap()["data"]["90-cmsaf-pool.conf"]
    assert re.search(r"^SEC_DEFAULT_AUTHENTICATION_METHODS\s*=.*\bSCITOKENS\b", pool, re.M)
    for setting in ("AUTH_SSL_SERVER_CERTFILE", "AUTH_SSL_SERVER_KEYFILE", "CERTIFICATE_MAPFILE"):
        assert re.search(rf"^{setting}\s*=\s*\S", schedd, re.M), setting
    assert re.search(r"^CERTIFICATE_MAPFILE_ASSUME_HASH_KEYS\s*=\s*True$", schedd, re.M)


def test_mapfile_maps_iam_identities_to_listed_accounts():
    data = condor_configmap()["data"]
    accounts = {line.split()[0] for line in data["users"].splitlines() if line.strip()}
    lines = [line for line in data["mapfile"].splitlines() if line.strip()]
    assert lines
    for line in lines:
        method, regex, account = line.split()
        assert method == "SCITOKENS"
        # "<issuer with trailing slash>,<subject>", slashes escaped (hash keys assumed)
        assert re.fullmatch(r"/\^https:\\/\\/.+\\/,.+\$/", regex), line
        assert account in accounts


def test_condor_daemons_match_the_bindings_release():
    from importlib import metadata

    series = ".".join(metadata.version("htcondor").split(".")[:2])  # e.g. 25.14
    for _, doc in MANIFESTS:
        if doc["kind"] in ("Deployment", "StatefulSet") and doc["metadata"]["name"].startswith("cmsaf-condor"):
            image = doc["spec"]["template"]["spec"]["containers"][0]["image"]
            assert image.split(":")[1].startswith(series + "."), image


def test_spawner_and_service_point_at_the_pool_services():
    services = {d["metadata"]["name"]: d for _, d in MANIFESTS if d["kind"] == "Service"}
    spawner = VALUE_SETS["values"]["hub"]["config"]["IAMKubeSpawner"]
    collector_host, collector_port = spawner["condor_collector_host"].split(":")
    assert int(collector_port) in [p["port"] for p in services[collector_host]["spec"]["ports"]]
    assert spawner["condor_schedd_host"] in services
    assert f'CONDOR_HOST = {collector_host}' in condor_configmap()["data"]["90-cmsaf-pool.conf"]


# --- the admin guide's knob tables stay true ----------------------------------------------------------


def test_admin_guide_knobs_exist():
    """Every ``| `knob` |`` row under a ``#### `Class` `` heading names a real configurable trait."""
    from cmsaf_hub.service.app import CmsafService
    from cmsaf_hub.service.backends.htcondor import HTCondorBackend
    from spawners import IAMKubeSpawner, IAMLocalSpawner
    from spawners.delivery import TokenDeliveryMixin
    from authenticators import IAMAuthenticator

    known = {cls.__name__: cls for cls in (IAMAuthenticator, TokenDeliveryMixin, IAMKubeSpawner,
                                           IAMLocalSpawner, CmsafService, HTCondorBackend,
                                           *CmsafService.classes)}
    section, stale, rows = None, [], 0
    for line in ADMIN_GUIDE.read_text().splitlines():
        heading = re.match(r"#### `(\w+)`", line)
        if heading:
            section = heading.group(1)
            assert section in known, f"admin guide documents unknown class {section}"
            continue
        row = re.match(r"\| `(\w+)` \|", line)
        if section and row:
            rows += 1
            if row.group(1) not in known[section].class_trait_names(config=True):
                stale.append(f"{section}.{row.group(1)}")
        elif not line.startswith("|") and line.strip():
            section = None
    assert rows > 50 and not stale, f"stale knobs in docs/admin-guide.md: {stale}"


def test_admin_guide_links_the_per_part_documents():
    guide = ADMIN_GUIDE.read_text()
    for doc in ("architecture.md", "authenticator.md", "spawners.md", "cluster-service.md", "htcondor.md",
                "proxy.md", "client.md", "user-guide.md", "web-ui.md", "data-access.md", "dask-gateway.md",
                "outbound-workers.md", "threat-model.md"):
        assert f"]({doc})" in guide


# --- the user guide's commands and imports are real ---------------------------------------------------

USER_GUIDE = REPO / "docs" / "user-guide.md"


def test_user_guide_cli_commands_exist():
    from cmsaf_hub.client.cli import build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices
    used = re.findall(r"^cmsaf-dask (?:--\S+ )*([a-z]+)", USER_GUIDE.read_text(), re.M)
    assert len(used) >= 6
    assert set(used) <= set(subcommands), set(used) - set(subcommands)


def test_user_guide_python_names_exist():
    import importlib

    text = USER_GUIDE.read_text()
    imports = re.findall(r"^\s*from (cmsaf_hub[\w.]*) import ([\w, ]+)$", text, re.M)
    assert imports
    for module, names in imports:
        loaded = importlib.import_module(module)
        for name in names.split(","):
            assert hasattr(loaded, name.strip()), f"{module}.{name.strip()}"
    from cmsaf_hub.client import Hub, HubCluster

    for method in re.findall(r"\bhub\.(\w+)\(|Hub\(\)\.(\w+)\(", text):
        assert hasattr(Hub, "".join(method)), method
    for method in re.findall(r"\bcluster\.(\w+)\(|HubCluster\.(\w+)\(", text):
        assert hasattr(HubCluster, "".join(method)), method


# --- the HTCondor configuration, read by HTCondor's own parser ----------------------------------------

CONDOR_ROLES = {  # role -> settings that role must end up with
    "cm": {"DAEMON_LIST": "MASTER, SHARED_PORT, COLLECTOR, NEGOTIATOR"},
    "schedd": {"DAEMON_LIST": "MASTER, SHARED_PORT, SCHEDD", "CERTIFICATE_MAPFILE_ASSUME_HASH_KEYS": True,  # typed: HTCondor knows it as a boolean
               "CERTIFICATE_MAPFILE": "/etc/cmsaf-condor/config/mapfile",
               "SEC_DEFAULT_AUTHENTICATION_METHODS": "FS, IDTOKENS, SCITOKENS"},
    "execute-point": {"SINGULARITY_BIND_EXPR": '"/cvmfs"', "CCB_ADDRESS": "cmsaf-condor-cm:9618"},
}

READ_PARAMS = """
import json, sys
import htcondor2
print(json.dumps({name: htcondor2.param.get(name) for name in sys.argv[1:]}))
"""


@pytest.mark.parametrize("role", CONDOR_ROLES)
def test_condor_config_parses_with_htcondor(role, tmp_path):
    """Pool + role files, installed in start.sh's order, as the htcondor2 bindings read them."""
    import os
    import subprocess
    import sys

    data = condor_configmap()["data"]
    config_dir = tmp_path / "config.d"
    config_dir.mkdir()
    (config_dir / "90-cmsaf-pool.conf").write_text(data["90-cmsaf-pool.conf"])
    (config_dir / f"91-cmsaf-{role}.conf").write_text(data[f"90-cmsaf-{role}.conf"])
    (tmp_path / "condor_config").write_text(f"LOCAL_CONFIG_DIR = {config_dir}\n")
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith("_condor_")}
    env["CONDOR_CONFIG"] = str(tmp_path / "condor_config")
    expected = CONDOR_ROLES[role]
    result = subprocess.run([sys.executable, "-c", READ_PARAMS, *expected], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr  # HTCondor exits on a syntax error
    assert json.loads(result.stdout.splitlines()[-1]) == expected


def test_condor_start_script_is_valid_and_every_role_has_its_config():
    import subprocess

    data = condor_configmap()["data"]
    check = subprocess.run(["bash", "-n"], input=data["start.sh"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    roles = [d["spec"]["template"]["spec"]["containers"][0]["command"] for _, d in MANIFESTS
             if d["kind"] in ("Deployment", "StatefulSet") and d["metadata"]["name"].startswith("cmsaf-condor")]
    assert len(roles) == 2
    for command in roles:
        assert command[:2] == ["/bin/bash", "/etc/cmsaf-condor/config/start.sh"]
        assert f"90-cmsaf-{command[2]}.conf" in data


# --- the mapfile generator (deploy/htcondor_mapfile.py) ------------------------------------------------


@pytest.fixture(scope="module")
def mapfile_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("htcondor_mapfile", DEPLOY / "htcondor_mapfile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mapfile_regex(line: str) -> re.Pattern[str]:
    """The regex HTCondor takes from a line (between the outer slashes, ``\\/`` meaning ``/``)."""
    body = re.fullmatch(r"SCITOKENS /(.*)/ \S+", line).group(1)
    return re.compile(body.replace("\\/", "/"))


def test_mapfile_line_matches_exactly_the_authenticated_identity(mapfile_tool):
    line = mapfile_tool.mapfile_line("https://iam.example:8443", "a1b2-c3", "alice")
    assert line == r"SCITOKENS /^https:\/\/iam\.example:8443\/,a1b2-c3$/ alice"  # as in notes/htcondor.md
    regex = mapfile_regex(line)
    assert regex.fullmatch("https://iam.example:8443/,a1b2-c3")  # issuer gets its trailing slash
    for other in ("https://iamXexample:8443/,a1b2-c3", "https://iam.example:8443/,a1b2-c3x",
                  "https://evil/,https://iam.example:8443/,a1b2-c3"):
        assert not regex.fullmatch(other)
    with pytest.raises(ValueError, match="local account"):
        mapfile_tool.mapfile_line("https://iam.example/", "s", "Alice Smith")


def test_mapfile_tool_keeps_uids_and_skips_unusable_users(mapfile_tool, tmp_path):
    scim = {"Resources": [
        {"id": "sub-b", "userName": "bob", "active": True},
        {"id": "sub-a", "userName": "Alice"},
        {"id": "sub-x", "userName": "gone", "active": False},
        {"id": "sub-s", "userName": "has space"},
    ]}
    (tmp_path / "scim.json").write_text(json.dumps(scim))
    (tmp_path / "previous").write_text("bob 20005\n")
    code = mapfile_tool.main(["--issuer", "https://iam.example/", "--scim", str(tmp_path / "scim.json"),
                              "--mapfile", str(tmp_path / "mapfile"), "--users", str(tmp_path / "users"),
                              "--previous-users", str(tmp_path / "previous")])
    assert code == 0
    assert mapfile_tool.parse_users_file((tmp_path / "users").read_text()) == {"bob": 20005, "alice": 20006}
    lines = (tmp_path / "mapfile").read_text().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["alice", "bob"]
    assert mapfile_regex(lines[0]).fullmatch("https://iam.example/,sub-a")


def test_shipped_mapfile_is_what_the_tool_writes_for_the_configured_issuer(mapfile_tool):
    issuer = VALUE_SETS["values"]["hub"]["config"]["IAMAuthenticator"]["issuer"]
    for line in condor_configmap()["data"]["mapfile"].splitlines():
        account = line.rsplit(" ", 1)[1]
        subject = re.search(r",(.*)\$/", line).group(1).replace("\\", "")
        assert line == mapfile_tool.mapfile_line(issuer, subject, account)


def test_user_guide_submit_file_parses_with_htcondor():
    import htcondor2

    text = USER_GUIDE.read_text()
    body = re.search(r"cat > hello\.sub <<'EOF'\n(.*?)\nEOF\n", text, re.S).group(1)
    submit = htcondor2.Submit(body)  # HTCondor's own parser: raises on a malformed description
    assert submit["executable"] == "/bin/echo" and submit.getQArgs() == "5"
    assert submit["MY.SingularityImage"].strip('"').startswith("/cvmfs/")
    forward = re.search(r"```\n(transfer_input_files.*?)```", text, re.S).group(1)
    extra = htcondor2.Submit(forward)
    assert extra["transfer_input_files"] == "$ENV(BEARER_TOKEN_FILE)"
    assert "BEARER_TOKEN_FILE=xrootd.token" in extra["environment"]
