"""A data site for tests and benchmarks: a dev IAM, an origin and an XCache trusting it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from devstack.iam import DevIAM
from devstack.xrootd import DataStack, hashed_ca_dir
from devstack.oauth_client import HarnessClient, user_token


@dataclass
class DataSite:
    iam: DevIAM
    client: HarnessClient
    stack: DataStack
    state: Path
    x509_dir: Path
    #: What the origin publishes: {storage path: content}.
    files: dict[str, bytes]

    async def user_token_file(self, name: str, username: str, scope: str) -> Path:
        """A 0600 file holding an exchanged storage token of ``username`` (as a session has)."""
        return self.token_file(name, await user_token(self.iam, self.client, username, scope=scope))

    def token_file(self, name: str, token: str) -> Path:
        path = self.state / f"{name}.token"
        path.write_text(token)
        os.chmod(path, 0o600)
        return path

    def env(self, token_path: Path | None, *, cache: bool) -> dict[str, str]:
        """What a session (or a worker) gets from the spawner / cluster service; without
        ``token_path`` no BEARER_TOKEN_FILE (a backend that delivers the tokens sets it)."""
        env = {"X509_CERT_DIR": str(self.x509_dir), "CMSAF_XROOTD_ORIGIN": self.stack.origin.url,
               "XRD_CONNECTIONRETRY": "1"}
        if token_path is not None:
            env["BEARER_TOKEN_FILE"] = str(token_path)
        if cache:
            env["CMSAF_XCACHE_URL"] = self.stack.cache.url
        return env

    async def stop(self) -> None:
        await self.stack.stop()
        await self.iam.stop()


async def start_data_site(state: Path, files: dict[str, bytes]) -> DataSite:
    """Start the IAM, publish ``files`` ({storage path: content}) on the origin, start origin + cache."""
    client = HarnessClient()
    iam = DevIAM(state / "iam", clients=[client.registration()])
    await iam.start()
    try:
        cache_token = state / "cache.token"
        cache_token.write_text(await iam.client_token(client.client_id, scope="storage.read:/"))
        pki = iam.pki
        stack = DataStack(iam.issuer, pki.ca_cert, pki.server_cert, pki.server_key, cache_token)
        for path, content in files.items():
            target = stack.store_path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        await stack.start()
    except BaseException:
        await iam.stop()
        raise
    return DataSite(iam, client, stack, state, hashed_ca_dir(pki.ca_cert, state / "certificates"), files)
