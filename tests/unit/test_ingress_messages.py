"""What the ingress tells a caller without a server (services/core/operations.py): NOT_FOUND for a model it does not
serve says why when the repository has it, and Encode reports a class confidence only for a trusted head."""
from __future__ import annotations

import json

from latentserve.errors import NotFoundError
from latentserve.models.repository import Repository
from latentserve.services.core.pool import class_head_trusted, not_served_error


def _repo(tmp_path, families: dict[str, str]) -> Repository:
    for name, family in families.items():
        d = tmp_path / name / "1"
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps({"name": name, "version": 1, "family": family}))
    return Repository(tmp_path)


def test_a_probe_is_named_as_the_evaluator_that_is_not_served(tmp_path):
    repo = _repo(tmp_path, {"shapes-gan": "gan", "shapes-probe": "probe", "spare-vae": "vae"})
    served = {"shapes-gan": 1}
    err = not_served_error(repo, "shapes-probe", served)
    assert isinstance(err, NotFoundError)
    assert str(err).startswith("model 'shapes-probe' is not served: it is a probe, the evaluator / guide model")
    assert str(err).endswith("served models: shapes-gan")
    assert "not served here" in str(not_served_error(repo, "spare-vae", served))
    for name in ("nope", "../shapes-probe", ""):
        assert str(not_served_error(repo, name, served)) == f"unknown model {name!r}; served models: shapes-gan"


def test_encode_confidence_only_from_a_trusted_class_head():
    assert class_head_trusted("gan", {"encoder_accuracy": 1.0})
    assert not class_head_trusted("flow", {"encoder_accuracy": 0.334})  # near chance on 3 classes
    assert not class_head_trusted("vae", {"encoder_accuracy": 0.5})
    assert class_head_trusted("flow", {"encoder_accuracy": 0.99})
    assert class_head_trusted("vae", {}) and class_head_trusted("gan", {"tiny": {"seed": 1.0}})  # not evaluated
    assert not class_head_trusted("flow", {})
