"""Hostile input at the edge of the core: image headers checked before decoding, partial files refused, latents
bounded, and caller-visible messages scrubbed of object reprs, addresses and URLs (services/core/images.py,
services/core/failures.py, services/frontends/grpc/status.py)."""
from __future__ import annotations

import io
import logging
import re
import struct
import zlib

import grpc
import numpy as np
import pytest
from PIL import Image as PILImage

from latentserve.errors import UnavailableError, ValidationError
from latentserve.services.core import images as imgs
from latentserve.services.core.failures import classify, scrub
from latentserve.services.frontends.grpc.status import set_status


def _png(h: int = 4, w: int = 5) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _bomb(w: int, h: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 100_000)) + chunk(b"IEND", b""))


def _decode(data: bytes) -> np.ndarray:
    return imgs.decode_images([imgs.Image(encoded=data)], (3, 4, 5), field="images")


@pytest.mark.parametrize("data,needle", [
    (_bomb(30000, 30000), r"images\[0\]: the image header declares too many pixels"),
    (_bomb(9000, 9000), r"images\[0\]: image is 9000x9000 \(WxH\) by its header"),
    (_png()[:-1], "corrupt or truncated"),
    (_png()[:-12], "corrupt or truncated"),
    (_png()[:-30], "corrupt or truncated"),
    (_png()[:45] + bytes([_png()[45] ^ 0xFF]) + _png()[46:], "corrupt or truncated"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 30, r"^images\[0\]: not a decodable PNG or JPEG image$"),
])
def test_hostile_images_are_refused_naming_the_item(data, needle):
    with pytest.raises(ValidationError, match=needle) as ei:
        _decode(data)
    assert not re.search(r"0x[0-9a-f]{6}|BytesIO", str(ei.value)), str(ei.value)


def test_whole_images_still_decode():
    x = _decode(_png())
    assert x.shape == (1, 3, 4, 5) and np.isfinite(x).all()


@pytest.mark.parametrize("value,needle", [
    (float("nan"), "NaN or infinity"), (float("inf"), "NaN or infinity"),
    (3e38, r"latent value 3e\+38 is out of range"), (-1000.5, r"latent value 1000.5 is out of range"),
])
def test_latents_must_be_finite_and_bounded(value, needle):
    good = imgs.Latent([0.0, imgs.LATENT_ABS_LIMIT], 0)
    with pytest.raises(ValidationError, match=r"latents\[1\]: .*" + needle):
        imgs.latents_array([good, imgs.Latent([0.0, value], 0)], 2, 3)
    with pytest.raises(ValidationError, match=r"^a: .*" + needle):
        imgs.latent_values(imgs.Latent([value, 0.0], 0), 2, "a")
    z, _ = imgs.latents_array([good], 2, 3)
    assert z[0, 1] == imgs.LATENT_ABS_LIMIT


def test_scrub_removes_reprs_addresses_and_urls():
    text = ("cannot identify image file <_io.BytesIO object at 0x7f9270fe7fb0>; redis://:s3cret@cache:6379/0 "
            "refused; Error 111 connecting to 10.0.0.7:6379; id 0xdeadbeef00")
    out = scrub(text)
    assert "0x" not in out and "s3cret" not in out and "://" not in out and "10.0.0.7" not in out, out
    assert "cannot identify image file <object>" in out


class _Context:
    def __init__(self) -> None:
        self.code, self.details = None, ""

    def set_code(self, code) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.text += record.getMessage() + (str(record.exc_info[1]) if record.exc_info else "") + "\n"


def test_internal_errors_name_the_request_id_not_the_exception_text():
    ctx = _Context()
    classify(RuntimeError())  # imports Ray Serve, which sets the handlers of its logger: listen after that
    log, records = logging.getLogger("ray.serve"), _Records()
    log.addHandler(records)
    try:
        set_status(ctx, RuntimeError("boom <Thing object at 0x7f00deadbeef> at redis://user:pw@h:1"), "Decode", "ab12")
    finally:
        log.removeHandler(records)
    assert ctx.code == grpc.StatusCode.INTERNAL
    assert ctx.details == "internal error (RuntimeError); the server log has the details under request id ab12"
    assert "[request ab12]" in records.text and "boom" in records.text  # the operator sees everything
    kind, message = classify(UnavailableError("Redis at redis://:pw@10.1.2.3:6379 is down"))
    assert kind == "unavailable" and "pw" not in message and "10.1.2.3" not in message
