"""Latent handles: content addressing, parsing, the bounded in-process LRU store."""
from __future__ import annotations

import numpy as np
import pytest

from latentserve.errors import NotFoundError, ValidationError
from latentserve.services.store import InProcessLatentStore, make_handle, make_store, parse_handle


def test_handles_are_content_addressed():
    z = np.arange(4, dtype=np.float32)
    h = make_handle("m", 2, z, 1)
    assert h == make_handle("m", 2, z.astype(np.float64), 1)  # same float32 content, same handle
    assert h != make_handle("m", 2, z, 0)  # the label is part of the content
    assert h != make_handle("m", 3, z, 1) and h != make_handle("n", 2, z, 1)
    assert h != make_handle("m", 2, z + 1e-6, 1)
    ref = parse_handle(h)
    assert (ref.model, ref.version, str(ref)) == ("m", 2, h)


def test_model_names_with_colons_parse():
    h = make_handle("team:model", 1, np.zeros(2, np.float32), 0)
    assert parse_handle(h).model == "team:model"


@pytest.mark.parametrize("bad", ["", "nohandle", "m:1:xyz", "m:0:" + "0" * 32, "m:v1:" + "0" * 32, ":1:" + "0" * 32,
                                 "m:1:" + "G" * 32])
def test_malformed_handles_are_validation_errors(bad):
    with pytest.raises(ValidationError, match="malformed handle"):
        parse_handle(bad)


def test_store_roundtrip_lru_and_not_found():
    s = InProcessLatentStore(max_entries=2)
    za, zb, zc = (np.full(3, v, np.float32) for v in (1, 2, 3))
    ha, hb, hc = (make_handle("m", 1, z, i) for i, z in enumerate((za, zb, zc)))
    s.put_many([(ha, za, 0), (hb, zb, 1)])
    (got_b, lab_b), (got_a, lab_a) = s.get_many([hb, ha])  # touching a makes b the least recent
    np.testing.assert_array_equal(got_a, za)
    assert (lab_a, lab_b) == (0, 1) and got_a.dtype == np.float32
    s.put_many([(hc, zc, 2)])
    assert len(s) == 2
    with pytest.raises(NotFoundError, match="unknown handle"):
        s.get_many([hb])
    assert s.get_many([ha, hc])[1][1] == 2


def test_stored_latents_are_immutable_copies():
    s = InProcessLatentStore()
    z = np.ones(3, np.float32)
    h = make_handle("m", 1, z, 0)
    s.put_many([(h, z, 0)])
    z[:] = 5  # the caller mutates its array afterwards
    assert s.get_many([h])[0][0].tolist() == [1.0, 1.0, 1.0]


def test_make_store():
    assert isinstance(make_store("", 10), InProcessLatentStore)
    with pytest.raises(ValidationError, match="Redis"):
        make_store("redis://localhost:6379/0")
    with pytest.raises(ValidationError):
        InProcessLatentStore(0)
