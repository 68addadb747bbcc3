"""What a session gets: pure tests of spawners.tokens and the atomic writer of spawners.tokenfiles."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from spawners.tokenfiles import write_file_atomically, write_token_files
from spawners.tokens import (
    InvalidTokenBundle,
    MissingAuthState,
    SessionSettings,
    choose_bearer_token,
    earliest_expiry,
    session_env,
    session_tokens_from_auth_state,
    session_tokens_from_service,
    token_files,
)

CONDOR_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJjb25kb3IifQ.c2lnbmF0dXJlLWNvbmRvcg"
XROOTD_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJ4cm9vdGQifQ.c2lnbmF0dXJlLXhyb290ZA"
LOGIN_ACCESS = "login-access-token-must-not-leak"
REFRESH = "refresh-token-must-not-leak"
ID_TOKEN = "id-token-must-not-leak"


def full_auth_state() -> dict:
    return {
        "access_token": LOGIN_ACCESS,
        "refresh_token": REFRESH,
        "id_token": ID_TOKEN,
        "scope": ["openid", "offline_access"],
        "token_response": {"access_token": LOGIN_ACCESS, "refresh_token": REFRESH},
        "oauth_user": {"sub": "alice-sub"},
        "access_token_expires_at": 1764000000.0,
        "exchanged_tokens": {
            "condor": {
                "access_token": CONDOR_JWT,
                "expires_at": 1764000300.0,
                "audience": "https://wlcg.cern.ch/jwt/v1/any",
                "scope": "compute.read compute.create",
            },
            "xrootd": {"access_token": XROOTD_JWT, "expires_at": 1764000100, "scope": "storage.read:/"},
        },
    }


def test_only_exchanged_tokens_reach_the_session():
    tokens = session_tokens_from_auth_state(full_auth_state(), "alice")
    assert sorted(tokens) == ["condor", "xrootd"]
    files = token_files(tokens)
    assert files == {"condor.token": CONDOR_JWT + "\n", "xrootd.token": XROOTD_JWT + "\n"}
    blob = repr(tokens) + repr(files)
    for secret in (LOGIN_ACCESS, REFRESH, ID_TOKEN):
        assert secret not in blob
    assert tokens["condor"].audience == "https://wlcg.cern.ch/jwt/v1/any"
    assert tokens["xrootd"].expires_at == 1764000100.0


def test_token_repr_hides_the_token():
    token = session_tokens_from_auth_state(full_auth_state(), "alice")["condor"]
    assert CONDOR_JWT not in repr(token)
    assert "condor" in repr(token)


@pytest.mark.parametrize("auth_state", [None, {}])
def test_missing_auth_state_says_what_to_do(auth_state):
    with pytest.raises(MissingAuthState, match="alice.*log out, log in again"):
        session_tokens_from_auth_state(auth_state, "alice")


def test_auth_state_without_exchanges_gives_no_tokens():
    assert session_tokens_from_auth_state({"access_token": LOGIN_ACCESS}, "alice") == {}


@pytest.mark.parametrize(
    "exchanged, message",
    [
        ({"../etc/passwd": {"access_token": "x"}}, "not a safe file name"),
        ({".hidden": {"access_token": "x"}}, "not a safe file name"),
        ({"condor": "just-a-string"}, "is not a mapping"),
        ({"condor": {"expires_at": 1}}, "no access_token"),
        ({"condor": {"access_token": "  "}}, "no access_token"),
        ({"condor": {"access_token": "x", "expires_at": "soon"}}, "non-numeric expires_at"),
        ({"condor": {"access_token": "x", "expires_at": True}}, "non-numeric expires_at"),
        (["condor"], "mapping of name to token"),
    ],
)
def test_malformed_bundles_are_rejected_without_values(exchanged, message):
    with pytest.raises(InvalidTokenBundle, match=message) as excinfo:
        session_tokens_from_auth_state({"exchanged_tokens": exchanged}, "alice")
    assert "just-a-string" not in str(excinfo.value)


def test_service_reply_parses_like_auth_state():
    issuer, tokens = session_tokens_from_service(
        {"issuer": "https://iam.example/", "tokens": full_auth_state()["exchanged_tokens"]}
    )
    assert issuer == "https://iam.example/"
    assert token_files(tokens)["condor.token"] == CONDOR_JWT + "\n"
    assert earliest_expiry(tokens.values()) == 1764000100.0
    with pytest.raises(InvalidTokenBundle, match="no 'tokens'"):
        session_tokens_from_service({"issuer": "x"})
    with pytest.raises(InvalidTokenBundle, match="not a JSON object"):
        session_tokens_from_service(["tokens"])


def test_earliest_expiry_ignores_unknown():
    tokens = session_tokens_from_auth_state(
        {"exchanged_tokens": {"a": {"access_token": "x"}, "b": {"access_token": "y", "expires_at": 5}}},
        "alice",
    )
    assert earliest_expiry(tokens.values()) == 5.0
    assert earliest_expiry([tokens["a"]]) is None


@pytest.mark.parametrize(
    "names, configured, expected",
    [
        ({"condor", "xrootd"}, "", "xrootd"),
        ({"condor"}, "", "condor"),
        ({"condor", "xrootd"}, "condor", "condor"),
        ({"condor", "storage"}, "storage", "storage"),
        ({"condor"}, "storage", "condor"),
        ({"other"}, "", None),
    ],
)
def test_bearer_token_choice(names, configured, expected):
    assert choose_bearer_token(names, configured) == expected


def test_session_env_full():
    settings = SessionSettings(
        token_dir="/run/cmsaf/alice/tokens",
        issuer="https://iam.example/",
        service_url="http://127.0.0.1:8000/services/cmsaf/",
        condor_collector_host="cm.example:9618",
        condor_schedd_host="schedd.example",
        condor_schedd_name="schedd.example",
        condor_ca_file="/etc/ca.pem",
        xrootd_env={"XRD_PLUGINCONFDIR": "/etc/xrootd/client.plugins.d"},
    )
    env = session_env(settings, ["condor", "xrootd"])
    assert env == {
        "XRD_PLUGINCONFDIR": "/etc/xrootd/client.plugins.d",
        "CMSAF_TOKEN_DIR": "/run/cmsaf/alice/tokens",
        "BEARER_TOKEN_FILE": "/run/cmsaf/alice/tokens/xrootd.token",
        "_condor_SCITOKENS_FILE": "/run/cmsaf/alice/tokens/condor.token",
        "_condor_SEC_CLIENT_AUTHENTICATION_METHODS": "SCITOKENS",
        "_condor_COLLECTOR_HOST": "cm.example:9618",
        "_condor_SCHEDD_HOST": "schedd.example",
        "_condor_SCHEDD_NAME": "schedd.example",
        "_condor_AUTH_SSL_CLIENT_CAFILE": "/etc/ca.pem",
        "CMSAF_ISSUER": "https://iam.example/",
        "CMSAF_SERVICE_URL": "http://127.0.0.1:8000/services/cmsaf/",
        "DASK_LABEXTENSION__FACTORY__MODULE": "cmsaf_hub.client",
        "DASK_LABEXTENSION__FACTORY__CLASS": "HubCluster",
        "DASK_DISTRIBUTED__CLIENT__SECURITY_LOADER": "cmsaf_hub.client.security.security_loader",
        "DASK_GATEWAY__ADDRESS": "http://127.0.0.1:8000/services/cmsaf/gateway",
        "DASK_GATEWAY__PUBLIC_ADDRESS": "http://127.0.0.1:8000/services/cmsaf",
        "DASK_GATEWAY__PROXY_ADDRESS": "gateway://127.0.0.1:8786",
        "DASK_GATEWAY__AUTH__TYPE": "jupyterhub",
    }


@pytest.mark.parametrize("configured", ["gw.example:443", "gateway://gw.example:443"])
def test_session_env_gateway_proxy_address_as_configured(configured):
    settings = SessionSettings(token_dir="/t", service_url="https://hub.example/services/cmsaf/",
                               dask_gateway_proxy_address=configured)
    assert session_env(settings, [])["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://gw.example:443"
    default = SessionSettings(token_dir="/t", service_url="https://hub.example/services/cmsaf/")
    assert session_env(default, [])["DASK_GATEWAY__PROXY_ADDRESS"] == "gateway://hub.example:8786"


def test_session_env_omits_unset_and_absent():
    env = session_env(SessionSettings(token_dir="/t", condor_auth_methods=""), ["xrootd"])
    assert env["BEARER_TOKEN_FILE"] == "/t/xrootd.token"
    for key in (
        "_condor_SCITOKENS_FILE",
        "_condor_SEC_CLIENT_AUTHENTICATION_METHODS",
        "_condor_COLLECTOR_HOST",
        "_condor_SCHEDD_HOST",
        "_condor_SCHEDD_NAME",
        "_condor_AUTH_SSL_CLIENT_CAFILE",
        "CMSAF_ISSUER",
        "CMSAF_SERVICE_URL",
    ):
        assert key not in env
    assert "BEARER_TOKEN_FILE" not in session_env(SessionSettings(token_dir="/t"), [])


def test_session_env_rejects_bad_xrootd_env_name():
    with pytest.raises(ValueError, match="not a valid environment variable name"):
        session_env(SessionSettings(token_dir="/t", xrootd_env={"BAD-NAME": "x"}), [])


def test_write_token_files_mode_content_and_skip_unchanged(tmp_path):
    files = {"condor.token": CONDOR_JWT + "\n", "xrootd.token": XROOTD_JWT + "\n"}
    assert write_token_files(str(tmp_path), files) == ["condor.token", "xrootd.token"]
    for name, content in files.items():
        path = tmp_path / name
        assert path.read_text() == content
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_uid == os.getuid()
    inode = (tmp_path / "condor.token").stat().st_ino
    assert write_token_files(str(tmp_path), {**files, "condor.token": "new\n"}) == ["condor.token"]
    assert (tmp_path / "condor.token").stat().st_ino != inode  # replaced by rename, not rewritten
    assert sorted(os.listdir(tmp_path)) == ["condor.token", "xrootd.token"]  # no temp files left


def test_write_token_files_refuses_paths(tmp_path):
    with pytest.raises(ValueError, match="outside the token dir"):
        write_token_files(str(tmp_path), {"../x.token": "x"})


def test_atomic_write_never_shows_partial_content(tmp_path):
    """A reader racing many rewrites sees only complete old or new contents."""
    path = str(tmp_path / "condor.token")
    contents = ["A" * 5000 + "\n", "B" * 7000 + "\n"]
    write_file_atomically(path, contents[0])
    seen: set[str] = set()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            with open(path) as f:
                seen.add(f.read())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(300):
            write_file_atomically(path, contents[i % 2])
    finally:
        stop.set()
        thread.join()
    assert seen <= set(contents)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_atomic_write_cleans_up_on_failure(tmp_path):
    with pytest.raises(UnicodeEncodeError):
        write_file_atomically(str(tmp_path / "x.token"), "not ascii: é")
    assert os.listdir(tmp_path) == []
