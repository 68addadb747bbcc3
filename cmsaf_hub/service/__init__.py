"""The hub-managed cluster service: REST API, web pages, store, reconciler, backends, forwarder.

It runs as one process beside the hub (``python -m cmsaf_hub``, or the ``cmsaf-service`` script);
``hubconfig.cluster_service`` is what ``jupyterhub_config.py`` calls to register it. Nothing here
imports :mod:`cmsaf_hub.client` (the user side), and the client imports nothing from here.
"""
