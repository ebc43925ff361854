import pytest
from yarl import URL

from shared.errors import InvalidRequest
from shared.vision import ImageLimits

from services.preprocess.fetch import decode_base64, parse_data_url
from services.preprocess.guard import check_url

LIMITS = ImageLimits(max_images=8, max_bytes=1000, max_source_pixels=10**6)


def test_data_url_roundtrip():
    data = parse_data_url("data:image/JPG;base64,aGVsbG8=", LIMITS, "p")
    assert data.media_type == "image/jpeg" and decode_base64(data, "p") == b"hello"


@pytest.mark.parametrize("url, words", [
    ("data:image/png;base64", "no ','"),
    ("data:image/png,raw", "base64"),
    ("data:text/plain;base64,aGk=", "unsupported image type"),
    ("data:;base64,aGk=", "unsupported image type"),
    ("data:image/png;base64," + "A" * 2000, "larger than 1000 bytes"),
])
def test_bad_data_urls(url, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_data_url(url, LIMITS, "p")


@pytest.mark.parametrize("payload", ["aGk$", "a", "===="])
def test_bad_base64(payload):
    with pytest.raises(InvalidRequest, match="base64|empty"):
        decode_base64(parse_data_url(f"data:image/png;base64,{payload}", LIMITS, "p"), "p")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/x", "http://10.0.0.1/x", "http://192.168.1.1/x", "http://169.254.169.254/x",
    "http://[::1]/x", "http://[::ffff:127.0.0.1]/x", "http://0.0.0.0/x", "http://[fd00::1]/x",
    "http://100.64.0.1/x", "http://224.0.0.1/x",
])
def test_private_literals_are_refused(url):
    with pytest.raises(InvalidRequest, match="private or local"):
        check_url(URL(url), allow_private=False, param="p")
    check_url(URL(url), allow_private=True, param="p")  # explicitly allowed


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://x/"])
def test_other_schemes_are_refused(url):
    with pytest.raises(InvalidRequest, match="data:, http: or https:"):
        check_url(URL(url), allow_private=True, param="p")


def test_public_addresses_and_names_pass():
    check_url(URL("https://8.8.8.8/x.png"), allow_private=False, param="p")
    check_url(URL("https://example.com/x.png"), allow_private=False, param="p")  # the resolver checks


async def test_resolver_refuses_names_of_local_addresses():
    from services.preprocess.guard import BlockedAddress, GuardedResolver

    resolver = GuardedResolver(allow_private=False)
    try:
        with pytest.raises(BlockedAddress, match="localhost"):
            await resolver.resolve("localhost", 80)
    finally:
        await resolver.close()
    allowed = GuardedResolver(allow_private=True)
    try:
        assert await allowed.resolve("localhost", 80)
    finally:
        await allowed.close()
