"""``python -m cmsaf_hub``: run the cluster service (what the hub's service command runs)."""

from .service.app import main

main()
