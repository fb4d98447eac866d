"""ServeConfig: defaults, env parsing (one function), overrides, range checks, deploy/serve.yaml, serve CLI flags."""
from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml

from latentserve.errors import ValidationError
from latentserve.services.config import ServeConfig, env_overrides, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_defaults_are_valid_and_documented_values():
    c = load_config(use_env=False)
    assert c.backend == "onnxruntime" and c.grpc_port == 9000 and c.host == "127.0.0.1"
    assert c.max_images_per_request == 256 and c.max_interpolation_steps == 64
    assert c.intra_op_threads >= 1 and c.models == [] and c.api_token == ""
    assert c.repository_path().is_absolute()


def test_env_is_read_only_through_env_overrides():
    env = {"LATENTSERVE_API_TOKEN": "s3cret", "LATENTSERVE_REPOSITORY": "/srv/repo", "LATENTSERVE_MODELS": "a, b",
           "LATENTSERVE_GRPC_PORT": "9100", "LATENTSERVE_COLOCATE": "true", "LATENTSERVE_BATCH_WAIT_TIMEOUT_S": "0.01",
           "LATENTSERVE_TARGET": "ignored:1", "OTHER": "x"}
    o = env_overrides(env)
    assert o == {"api_token": "s3cret", "repository": "/srv/repo", "models": ["a", "b"], "grpc_port": 9100,
                 "colocate": True, "batch_wait_timeout_s": 0.01}
    c = load_config(environ=env)
    assert c.grpc_port == 9100 and c.models == ["a", "b"] and c.colocate is True
    assert c.redacted()["api_token"] == "***" and c.to_dict()["api_token"] == "s3cret"


def test_explicit_overrides_win_over_env_and_none_is_skipped():
    c = load_config({"grpc_port": 9200, "backend": None}, environ={"LATENTSERVE_GRPC_PORT": "9100",
                                                                   "LATENTSERVE_BACKEND": "torchscript"})
    assert c.grpc_port == 9200 and c.backend == "torchscript"


@pytest.mark.parametrize("field,value,needle", [
    ("backend", "tensorrt", "backend"),
    ("max_batch_size", 0, "max_batch_size"),
    ("preferred_batch_size", 5000, "preferred_batch_size"),
    ("preferred_batch_size", -1, "preferred_batch_size"),
    ("batch_wait_timeout_s", -0.1, "batch_wait_timeout_s"),
    ("grpc_port", 70000, "grpc_port"),
    ("max_queued_requests", 0, "max_queued_requests"),
    ("max_interpolation_steps", 1, "max_interpolation_steps"),
    ("providers", ["TensorrtExecutionProvider"], "providers"),
    ("api_token", "has space", "api_token"),
    ("redis_url", "http://x", "redis_url"),
    ("intra_op_threads", True, "intra_op_threads"),
    ("metrics_port", 70000, "metrics_port"),
    ("metrics_port", 9000, "metrics_port"),  # = grpc_port
    ("grpc_transport", "quic", "grpc_transport"),
])
def test_range_checks_name_the_field(field, value, needle):
    with pytest.raises(ValidationError, match=needle):
        load_config({field: value}, use_env=False)


def test_bad_env_value_and_unknown_field():
    with pytest.raises(ValidationError, match="grpc_port"):
        load_config(environ={"LATENTSERVE_GRPC_PORT": "nine"})
    with pytest.raises(ValidationError, match="unknown field"):
        load_config({"max_batch": 3}, use_env=False)
    with pytest.raises(ValidationError, match="min_replicas"):
        load_config({"autoscaling": True, "min_replicas": 5, "max_replicas": 2}, use_env=False)


def test_with_overrides_and_roundtrip():
    c = load_config(use_env=False)
    d = c.with_overrides(max_batch_size=8)
    assert d.max_batch_size == 8 and c.max_batch_size == 64
    assert ServeConfig(**d.to_dict()).validate() == d


def test_deploy_yaml_is_a_valid_serve_config_and_its_args_load():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert app.import_path == "latentserve.services.app:app_builder"
    cfg = load_config(app.args, use_env=False)
    assert cfg.grpc_port == doc["grpc_options"]["port"]
    from latentserve.services.app import SERVICER_FUNCTIONS

    assert doc["grpc_options"]["grpc_servicer_functions"] == SERVICER_FUNCTIONS


def test_serve_command_flags_map_to_config():
    from latentserve.commands import serve as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--port", "9300", "--models", "a,b", "--batch-wait-ms", "5",
                              "--autoscale", "1:3", "--colocate"])
    c = load_config(cmd.overrides_from_args(args), use_env=False)
    assert (c.grpc_port, c.models, c.batch_wait_timeout_s, c.autoscaling, c.min_replicas, c.max_replicas, c.colocate) == \
        (9300, ["a", "b"], 0.005, True, 1, 3, True)
    assert c.backend == "onnxruntime"  # not given -> default
    assert c.grpc_transport == "auto"
    args = parser.parse_args(["serve", "--grpc-transport", "grpcio"])
    assert load_config(cmd.overrides_from_args(args), use_env=False).grpc_transport == "grpcio"
    with pytest.raises(ValidationError, match="autoscale"):
        cmd.overrides_from_args(parser.parse_args(["serve", "--autoscale", "x"]))
    c = load_config(cmd.overrides_from_args(parser.parse_args(["serve", "--metrics-port", "9191"])), use_env=False)
    assert c.metrics_port == 9191 and load_config({}, use_env=False).metrics_port == 8080
