"""Session choices for the Kubernetes spawner: sizes (CPU/memory/GPU) and images, as data.

``build_profile_list`` turns two small configuration tables into KubeSpawner's ``profile_list``:
one profile per size, each with an ``image`` option listing the curated images and, when an
allowlist is configured, a free-form "Other..." image. A user-provided image must match one of the
allowlist's patterns (``fnmatch`` style, e.g. ``"registry.cern.ch/cmsaf/*"``); ``check_image``
is the one place that decides, with a message meant for the spawn page.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any, Iterable, Mapping

#: A container image reference: [registry[:port]/]path[:tag][@digest], no whitespace or quotes.
IMAGE_REFERENCE = re.compile(
    r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$"
)
IMAGE_OPTION = "image"
UNLISTED_SUFFIX = "--unlisted-choice"


class ImageNotAllowed(ValueError):
    """A user-provided image is malformed or outside the allowlist (message for the spawn page)."""


def check_image(image: str, allowlist: Iterable[str]) -> str:
    """Return ``image`` if it is well-formed and matches an allowlist pattern, else raise."""
    patterns = list(allowlist)
    image = image.strip()
    if not IMAGE_REFERENCE.match(image):
        raise ImageNotAllowed(f"Image {image!r} is not a valid image reference.")
    if not patterns:
        raise ImageNotAllowed("Custom images are not allowed here: choose one from the list.")
    if not any(fnmatch.fnmatchcase(image, pattern) for pattern in patterns):
        raise ImageNotAllowed(
            f"Image {image!r} is not allowed: it must match one of {', '.join(patterns)}."
        )
    return image


def size_overrides(size: Mapping[str, Any]) -> dict[str, Any]:
    """KubeSpawner overrides for one size ``{cpu, memory, gpu}`` (limits = guarantees)."""
    unknown = set(size) - {"slug", "display_name", "description", "cpu", "memory", "gpu", "default"}
    if unknown:
        raise ValueError(f"session size {size.get('slug')!r} has unknown keys: {sorted(unknown)}")
    overrides: dict[str, Any] = {}
    if "cpu" in size:
        overrides["cpu_limit"] = overrides["cpu_guarantee"] = float(size["cpu"])
    if "memory" in size:
        overrides["mem_limit"] = overrides["mem_guarantee"] = str(size["memory"])
    gpus = int(size.get("gpu", 0))
    if gpus:
        overrides["extra_resource_limits"] = {"nvidia.com/gpu": str(gpus)}
        overrides["extra_resource_guarantees"] = {"nvidia.com/gpu": str(gpus)}
    return overrides


def image_option(images: Mapping[str, Mapping[str, str]], allow_custom: bool) -> dict[str, Any]:
    """The ``image`` profile option: the curated ``images`` and, if allowed, a free-form one."""
    choices = {
        slug: {
            "display_name": entry.get("display_name", entry["image"]),
            "default": index == 0,
            "kubespawner_override": {"image": entry["image"]},
        }
        for index, (slug, entry) in enumerate(images.items())
    }
    option: dict[str, Any] = {"display_name": "Image", "choices": choices}
    if allow_custom:
        option["unlisted_choice"] = {
            "enabled": True,
            "display_name": "Other image (from an allowed registry)",
            "display_name_in_choices": "Other...",
            "kubespawner_override": {"image": "{value}"},
        }
    return option


def build_profile_list(
    sizes: Iterable[Mapping[str, Any]],
    images: Mapping[str, Mapping[str, str]],
    allow_custom_image: bool,
) -> list[dict[str, Any]]:
    """KubeSpawner ``profile_list``: one profile per size, each offering the image choice."""
    profiles = []
    for index, size in enumerate(sizes):
        if "slug" not in size:
            raise ValueError("every session size needs a 'slug'")
        profile: dict[str, Any] = {
            "slug": size["slug"],
            "display_name": size.get("display_name", size["slug"]),
            "description": size.get("description", describe_size(size)),
            "default": bool(size.get("default", index == 0)),
            "kubespawner_override": size_overrides(size),
        }
        if images or allow_custom_image:
            profile["profile_options"] = {IMAGE_OPTION: image_option(images, allow_custom_image)}
        profiles.append(profile)
    return profiles


def describe_size(size: Mapping[str, Any]) -> str:
    parts = []
    if "cpu" in size:
        parts.append(f"{size['cpu']} CPU")
    if "memory" in size:
        parts.append(f"{size['memory']} memory")
    if size.get("gpu"):
        parts.append(f"{size['gpu']} GPU")
    return ", ".join(parts)


def check_option_choices(profile_list: list[Mapping[str, Any]], user_options: Mapping[str, Any]) -> None:
    """Refuse a listed-choice value that the chosen profile does not offer (e.g. ``image: "nope"``)."""
    slug = user_options.get("profile")
    profile = next((p for p in profile_list if p.get("slug") == slug), None)
    if profile is None:
        return  # no or unknown profile: KubeSpawner's own validation names the options
    for name, option in (profile.get("profile_options") or {}).items():
        choice = user_options.get(name)
        choices = option.get("choices") or {}
        if choice is None or user_options.get(name + UNLISTED_SUFFIX) or not choices:
            continue
        if not isinstance(choice, str) or choice not in choices:
            raise ValueError(
                f"Unknown {name} {choice!r} for {slug!r}: choose one of {', '.join(choices)}."
            )


def custom_image_choice(user_options: Mapping[str, Any]) -> str | None:
    """The free-form image a user asked for (form or REST ``user_options``), if any."""
    value = user_options.get(IMAGE_OPTION + UNLISTED_SUFFIX)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ImageNotAllowed("The custom image must be a string.")
    return value
