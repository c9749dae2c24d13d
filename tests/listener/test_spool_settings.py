"""The spool backend settings: ``spool_url`` and the ``s3`` section refuse what would leak a
credential or could never work, naming the setting and never showing a key."""

from __future__ import annotations

import pytest

from listener.errors import ConfigError
from listener.settings import load_settings

SECRET = "do-not-show-this-secret"


def test_no_spool_url_keeps_the_local_folder() -> None:
    """By default the spool is the local folder alone: no bucket, ack mode ``local``."""
    settings = load_settings(None)
    assert settings.spool_url is None and settings.s3.ack == "local"


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("http://example.com/x", "spool_url: only s3://"),
        ("s3://Bad_Bucket/x", "spool_url: 'Bad_Bucket' is not a valid S3 bucket name"),
    ],
)
def test_a_bad_spool_url_is_refused_naming_it(url: str, named: str) -> None:
    """Only ``s3://bucket/prefix`` with a valid bucket name is taken."""
    with pytest.raises(ConfigError, match=named):
        load_settings(None, spool_url=url)


def test_a_key_over_cleartext_http_is_refused_unless_loopback() -> None:
    """A secret key to a remote ``http://`` endpoint stops start-up naming s3.endpoint_url,
    without the key; the same endpoint on loopback (a local test server) is accepted."""
    s3 = {"endpoint_url": "http://s3.example.com", "secret_access_key": SECRET}
    with pytest.raises(ConfigError) as refused:
        load_settings(None, spool_url="s3://spool/p", s3=s3)
    assert "s3.endpoint_url" in str(refused.value) and "cleartext" in str(refused.value)
    assert SECRET not in str(refused.value)
    local = load_settings(
        None,
        spool_url="s3://spool/p",
        s3={"endpoint_url": "http://127.0.0.1:8333", "secret_access_key": SECRET},
    )
    assert SECRET not in repr(local) and SECRET not in str(local.model_dump())


def test_an_invalid_ack_mode_is_named() -> None:
    """``s3.ack`` is ``local`` or ``uploaded``."""
    with pytest.raises(ConfigError, match=r"s3\.ack"):
        load_settings(None, spool_url="s3://spool/p", s3={"ack": "never"})
