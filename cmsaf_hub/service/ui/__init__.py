"""Web pages for clusters, served by the cluster service in the hub's look (docs/web-ui.md)."""

from .pages import ui_handlers

__all__ = ["ui_handlers"]
