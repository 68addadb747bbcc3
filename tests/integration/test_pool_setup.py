"""The pure parts of the personal pool's setup, checked everywhere (the pool itself needs condor_master)."""

from __future__ import annotations

import re
from pathlib import Path

from devstack.condor_pool import SCHEDD_NAME, condor_config, mapfile_lines, release_dir, skip_reason


def test_mapfile_maps_issuer_and_sub_to_the_local_user():
    line = mapfile_lines("https://127.0.0.1:8443/", {"alice": "6a1f0c1e-8d0b"})
    assert line == "SCITOKENS /^https:\\/\\/127\\.0\\.0\\.1:8443\\/,6a1f0c1e\\-8d0b$/ alice\n"
    method, pattern, user = line.split()
    regex = pattern.strip("/").replace("\\/", "/")  # what HTCondor matches once it reads the /.../ form
    assert (method, user) == ("SCITOKENS", "alice")
    assert re.fullmatch(regex, "https://127.0.0.1:8443/,6a1f0c1e-8d0b")
    assert not re.fullmatch(regex, "https://127.0.0.1:8443/,6a1f0c1e-8d0bX")
    assert not re.fullmatch(regex, "https://127.0.0.1x0.0.1:8443/,6a1f0c1e-8d0b")


def test_pool_config_has_the_settings_the_notes_require():
    text = condor_config(Path("/p"), port=9999, cert=Path("/p/c.pem"), key=Path("/p/k.pem"), mapfile=Path("/p/map"),
                         release=Path("/opt/htc"))
    settings = {k.strip(): v.strip() for k, v in (line.split("=", 1) for line in text.strip().splitlines())}
    assert settings["SEC_DEFAULT_AUTHENTICATION_METHODS"] == "FS, SCITOKENS"
    assert settings["CERTIFICATE_MAPFILE_ASSUME_HASH_KEYS"] == "True"
    assert settings["USE_SHARED_PORT"] == "False"
    assert settings["STARTD_DETECT_GPUS"] == "false"  # an empty GPU inventory does not stop discovery
    assert (settings["RELEASE_DIR"], settings["SBIN"], settings["LIBEXEC"]) == (
        "/opt/htc", "$(RELEASE_DIR)/sbin", "$(RELEASE_DIR)/libexec")
    assert settings["COLLECTOR_HOST"] == "127.0.0.1:9999"
    assert settings["SCHEDD_NAME"] == SCHEDD_NAME and "@" in SCHEDD_NAME
    assert (settings["AUTH_SSL_SERVER_CERTFILE"], settings["CERTIFICATE_MAPFILE"]) == ("/p/c.pem", "/p/map")


def test_release_dir_is_the_parent_of_condor_masters_sbin(tmp_path, monkeypatch):
    sbin = tmp_path / "htc" / "sbin"
    sbin.mkdir(parents=True)
    (sbin / "condor_master").write_text("#!/bin/sh\n")
    (sbin / "condor_master").chmod(0o755)
    monkeypatch.setenv("PATH", f"{sbin}:/usr/bin:/bin")
    assert release_dir() == tmp_path / "htc"
    monkeypatch.setenv("PATH", str(tmp_path))
    assert release_dir() is None
    assert skip_reason() == "condor_master is not on PATH: no HTCondor pool can be started here"
