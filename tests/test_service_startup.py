"""The service refuses to start without a usable encryption key, with one clear line."""

import os
import subprocess
import sys


def run_service(tmp_path, key: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CMSAF_SERVICE_CRYPT_KEY"}
    if key is not None:
        env["CMSAF_SERVICE_CRYPT_KEY"] = key
    return subprocess.run([sys.executable, "-m", "cmsaf_hub", f"--db-url=sqlite:///{tmp_path / 's.sqlite'}"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_missing_key(tmp_path):
    result = run_service(tmp_path, None)
    assert result.returncode == 1
    assert "no encryption key: set CMSAF_SERVICE_CRYPT_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_key_is_not_echoed(tmp_path):
    result = run_service(tmp_path, "s3cr3t-but-not-a-fernet-key")
    assert result.returncode == 1 and "unusable encryption key" in result.stderr
    assert "s3cr3t" not in result.stderr + result.stdout
