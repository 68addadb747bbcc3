"""``IAMKubeSpawner``: KubeSpawner whose pods hold fresh audience-scoped token files.

Token path through a pod (why each step exists):

1. Before the pod is created, the user's exchanged tokens go into a per-server Secret
   (``token_secret_name_template``) — never into the pod's environment or spec.
2. An init container (``cmsaf-token-init``), running as the session's uid, copies the Secret's
   files into an in-memory ``emptyDir`` at ``token_dir`` with mode 0600. (A Secret volume with
   ``fsGroup`` ends up 0440, which XRootD's token client refuses.) The Secret volume is mounted in
   the init container only.
3. A sidecar (``cmsaf-token-refresher``, ``python -m spawners.refresher``) shares the ``emptyDir``
   and keeps the files fresh by asking the cluster service; it holds only the server's own
   ``JUPYTERHUB_API_TOKEN``, never a refresh token.
4. The Secret is deleted when the server stops.

The manifest builders below are pure; the only Kubernetes I/O this module adds is three calls on
KubeSpawner's ``self.api`` (create/replace/delete a namespaced Secret), in ``apply_token_secret``
and ``delete_token_secret``.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Mapping

from kubernetes_asyncio.client import V1Container, V1ObjectMeta, V1Secret, V1Volume, V1VolumeMount
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from kubespawner.utils import get_k8s_model
from traitlets import Dict, List, Unicode, default

from .delivery import TokenDeliveryMixin, spawn_refusal
from .profiles import (
    ImageNotAllowed,
    build_profile_list,
    check_image,
    check_option_choices,
    custom_image_choice,
)
from .tokens import token_files

TOKEN_VOLUME = "cmsaf-tokens"
SECRET_VOLUME = "cmsaf-token-secret"
INIT_CONTAINER = "cmsaf-token-init"
REFRESHER_CONTAINER = "cmsaf-token-refresher"
#: Copies every ``*.token`` of the Secret volume into the emptyDir, 0600, as the running uid.
COPY_SCRIPT = (
    'set -eu; umask 077; for f in "$SRC"/*.token; do [ -e "$f" ] || continue; '
    'cat "$f" > "$DST/.$(basename "$f").tmp"; mv "$DST/.$(basename "$f").tmp" "$DST/$(basename "$f")"; '
    "done"
)


def make_token_secret(
    name: str, files: Mapping[str, str], labels: Mapping[str, str], annotations: Mapping[str, str]
) -> V1Secret:
    """The per-server Secret holding the initial token files (``{filename: content}``)."""
    return V1Secret(
        metadata=V1ObjectMeta(name=name, labels=dict(labels), annotations=dict(annotations)),
        type="Opaque",
        data={
            filename: base64.b64encode(content.encode("ascii")).decode("ascii")
            for filename, content in sorted(files.items())
        },
    )


def token_volumes(secret_name: str) -> list[dict[str, Any]]:
    """The Secret volume (init container only) and the in-memory token directory."""
    return [
        {"name": SECRET_VOLUME, "secret": {"secretName": secret_name, "defaultMode": 0o400}},
        {"name": TOKEN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}},
    ]


def token_init_container(
    image: str, secret_mount_path: str, token_dir: str, security_context: Any
) -> dict[str, Any]:
    """Init container copying Secret → 0600 files, with the session container's security context."""
    return {
        "name": INIT_CONTAINER,
        "image": image,
        "command": ["/bin/sh", "-c", COPY_SCRIPT],
        "env": [{"name": "SRC", "value": secret_mount_path}, {"name": "DST", "value": token_dir}],
        "securityContext": security_context,
        "volumeMounts": [
            {"name": SECRET_VOLUME, "mountPath": secret_mount_path, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": token_dir},
        ],
        "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}},
    }


def token_refresher_container(
    image: str, command: list[str], env: Mapping[str, str], token_dir: str, security_context: Any
) -> dict[str, Any]:
    """Sidecar running the refresher beside the notebook server, sharing the token directory."""
    return {
        "name": REFRESHER_CONTAINER,
        "image": image,
        "command": list(command),
        "env": [{"name": key, "value": value} for key, value in sorted(env.items())],
        "securityContext": security_context,
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": token_dir}],
        "resources": {"limits": {"cpu": "100m", "memory": "128Mi"}},
    }


#: What the refresher sidecar needs from the notebook container's environment.
REFRESHER_ENV_KEYS = ("CMSAF_SERVICE_URL", "CMSAF_TOKEN_DIR", "JUPYTERHUB_API_TOKEN")


class IAMKubeSpawner(TokenDeliveryMixin, KubeSpawner):
    """KubeSpawner with Secret-delivered, sidecar-refreshed token files and sized profiles."""

    token_secret_name_template = Unicode(
        "cmsaf-tokens-{user_server}",
        help="""Name of the per-server Secret holding the initial token files. Same fields as
        ``pod_name_template``.""",
    ).tag(config=True)

    token_secret_mount_path = Unicode(
        "/var/run/cmsaf/initial-tokens",
        help="""Where the init container sees the token Secret (never mounted in the session).""",
    ).tag(config=True)

    refresher_image = Unicode(
        "",
        help="""Image of the token refresher sidecar; it needs cmsaf-hub installed, e.g.
        ``"registry.cern.ch/cmsaf/cmsaf-hub:0.1"``. Empty: the session's image (fine for the
        curated images; set it when users may bring their own images).""",
    ).tag(config=True)

    refresher_command = List(
        Unicode(),
        ["python", "-m", "spawners.refresher"],
        help="""Command of the token refresher sidecar.""",
    ).tag(config=True)

    session_sizes = List(
        Dict(),
        help="""Session sizes offered on the spawn page, one profile each, e.g.
        ``[{"slug": "small", "display_name": "Small", "cpu": 2, "memory": "4G"},
        {"slug": "gpu", "display_name": "1 GPU", "cpu": 4, "memory": "16G", "gpu": 1}]``.
        Used to build ``profile_list`` unless ``profile_list`` is set explicitly.""",
    ).tag(config=True)

    session_images = Dict(
        value_trait=Dict(),
        help="""Curated images offered with every size, in order (the first is the default), e.g.
        ``{"coffea": {"display_name": "Coffea 2025", "image": "coffeateam/coffea-dask:2025.1"}}``.""",
    ).tag(config=True)

    image_allowlist = List(
        Unicode(),
        help="""Patterns (``fnmatch``) a user-provided image must match, e.g.
        ``["registry.cern.ch/cmsaf/*", "docker.io/coffeateam/*"]``. Empty: users can only pick
        from ``session_images``.""",
    ).tag(config=True)

    @default("token_dir")
    def _default_token_dir(self) -> str:
        return "/var/run/cmsaf/tokens"

    @default("uid")
    def _default_uid(self) -> int:
        return 1000

    @default("fs_gid")
    def _default_fs_gid(self) -> int:
        return 100

    @default("profile_list")
    def _default_profile_list(self) -> list[dict[str, Any]]:
        if not self.session_sizes:
            return []
        return build_profile_list(
            self.session_sizes, self.session_images, allow_custom_image=bool(self.image_allowlist)
        )

    @property
    def token_secret_name(self) -> str:
        return self._expand_user_properties(self.token_secret_name_template)

    # --- options: the image allowlist, on the form path and the REST path alike ---

    def check_user_options(self, user_options: Mapping[str, Any]) -> None:
        """Raise ``ImageNotAllowed`` (shown on the spawn page) for a disallowed custom image."""
        image = custom_image_choice(user_options)
        if image is not None:
            check_image(image, self.image_allowlist)
        if isinstance(self.profile_list, list):
            check_option_choices(self.profile_list, user_options)

    def _options_from_form(self, formdata: dict[str, list[str]]) -> dict[str, Any]:
        user_options = super()._options_from_form(formdata)
        self.check_user_options(user_options)
        return user_options

    async def load_user_options(self) -> None:
        """Apply the chosen profile; bad choices (REST or form) become a clear spawn refusal."""
        try:
            self.check_user_options(self.user_options or {})
            await super().load_user_options()
        except (ImageNotAllowed, ValueError) as e:
            raise spawn_refusal(str(e), reason="options") from None

    # --- manifests (pure given the spawner's configuration) ---

    def get_token_secret_manifest(self, files: Mapping[str, str]) -> V1Secret:
        labels = self._build_common_labels(self._expand_all(self.extra_labels))
        annotations = self._build_common_annotations(self._expand_all(self.extra_annotations))
        return make_token_secret(self.token_secret_name, files, labels, annotations)

    async def get_pod_manifest(self):
        """KubeSpawner's pod plus the token volumes, init container and refresher sidecar."""
        pod = await super().get_pod_manifest()
        notebook = pod.spec.containers[0]
        token_dir = self.resolved_token_dir()
        security_context = notebook.security_context
        pod.spec.volumes = list(pod.spec.volumes or []) + [
            get_k8s_model(V1Volume, volume) for volume in token_volumes(self.token_secret_name)
        ]
        notebook.volume_mounts = list(notebook.volume_mounts or []) + [
            get_k8s_model(V1VolumeMount, {"name": TOKEN_VOLUME, "mountPath": token_dir, "readOnly": True})
        ]
        init = token_init_container(
            self.image, self.token_secret_mount_path, token_dir, security_context
        )
        notebook_env = {item.name: item.value for item in notebook.env or [] if item.value}
        refresher_env = {key: notebook_env[key] for key in REFRESHER_ENV_KEYS if key in notebook_env}
        refresher = token_refresher_container(
            self.refresher_image or self.image,
            self.refresher_command,
            refresher_env,
            token_dir,
            security_context,
        )
        pod.spec.init_containers = [get_k8s_model(V1Container, init)] + list(
            pod.spec.init_containers or []
        )
        pod.spec.containers.append(get_k8s_model(V1Container, refresher))
        return pod

    # --- Kubernetes I/O: the Secret's life follows the server's ---

    async def apply_token_secret(self, files: Mapping[str, str]) -> None:
        """Create the token Secret, or replace it if a previous server left one behind."""
        manifest = self.get_token_secret_manifest(files)
        timeout = self.k8s_api_request_timeout
        try:
            await asyncio.wait_for(
                self.api.create_namespaced_secret(self.namespace, manifest), timeout
            )
        except ApiException as e:
            if e.status != 409:
                raise
            await asyncio.wait_for(
                self.api.replace_namespaced_secret(self.token_secret_name, self.namespace, manifest),
                timeout,
            )
        self.log.info("Token Secret %s/%s ready", self.namespace, self.token_secret_name)

    async def delete_token_secret(self) -> None:
        try:
            await asyncio.wait_for(
                self.api.delete_namespaced_secret(self.token_secret_name, self.namespace),
                self.k8s_api_request_timeout,
            )
        except ApiException as e:
            if e.status != 404:
                raise
        self.log.info("Token Secret %s/%s deleted", self.namespace, self.token_secret_name)

    async def _start(self):
        await self.load_user_options()  # refuse bad options before creating anything
        tokens = await self.load_session_tokens()
        if self.enable_user_namespaces:
            await self._ensure_namespace()
        await self.apply_token_secret(token_files(tokens))
        return await super()._start()

    async def stop(self, now: bool = False):
        try:
            await super().stop(now=now)
        finally:  # the tokens must not outlive the server, even if deleting the pod failed
            await self.delete_token_secret()
