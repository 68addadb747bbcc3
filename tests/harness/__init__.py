"""Real-process test harness: the dev IAM, a real JupyterHub with configurable-http-proxy, and logins."""
