"""cmsaf-hub's Python side, one package per program.

- :mod:`cmsaf_hub.service`: the hub-managed cluster service (runs beside the hub).
- :mod:`cmsaf_hub.client`: what runs in a user's session or laptop (``Hub``, ``HubCluster``, the
  ``cmsaf-dask`` CLI, the Dask JupyterLab sidebar integration).
- :mod:`cmsaf_hub.comm` and :mod:`cmsaf_hub.data`: what both sides and the cluster's own processes
  use (the hub-relayed Dask comm; facility data URLs and token checks).
"""
