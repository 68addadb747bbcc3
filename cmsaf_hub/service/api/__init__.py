"""The cluster service's REST API (``/services/cmsaf/api/v1``): tornado handlers and OpenAPI."""
