"""The broker's own listener (``Broker.listen`` / ``Broker.public_url``): what the configuration accepts."""

from __future__ import annotations

import pytest
from traitlets import TraitError
from traitlets.config import Config

from cmsaf_hub.service.app import CmsafService
from cmsaf_hub.service.broker import Broker
from cmsaf_hub.service.crypto import new_crypt_key


@pytest.mark.parametrize("url", ["https://broker.hub.example:8443", "http://10.0.0.2:9000", ""])
def test_public_url_takes_a_scheme_host_and_port(url):
    assert Broker(public_url=url).public_url == url


@pytest.mark.parametrize("url", ["broker.hub.example:8443", "wss://broker.hub.example", "https://b.example/broker",
                                 "https://:8443"])
def test_public_url_refuses_what_workers_could_not_use(url):
    with pytest.raises(TraitError, match=r"Broker.public_url must be http\(s\)://host\[:port\]"):
        Broker(public_url=url)


def test_a_listener_nobody_is_told_about_stops_the_service_at_start(tmp_path, capfd):
    config = Config()
    config.CmsafService.crypt_keys = new_crypt_key()
    config.CmsafService.db_url = f"sqlite:///{tmp_path}/service.sqlite"
    config.Broker.listen = "127.0.0.1:9999"
    with pytest.raises(SystemExit):
        CmsafService(config=config).initialize([])
    assert "Broker.listen is set but Broker.public_url is not" in capfd.readouterr().err
    config.Broker.public_url = "http://127.0.0.1:9999"
    service = CmsafService(config=config)
    service.initialize([])
    assert service.broker.public_url == "http://127.0.0.1:9999"
