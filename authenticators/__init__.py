"""JupyterHub authenticators of cmsaf-hub: :class:`IAMAuthenticator` (entry point ``cmsaf-iam``)."""

from .iam import IAMAuthenticator

__all__ = ["IAMAuthenticator"]
