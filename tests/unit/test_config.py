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
    assert c.served.backend == "onnxruntime" and c.frontend.grpc_port == 9000 and c.frontend.host == "127.0.0.1"
    assert c.limits.max_images_per_request == 256 and c.limits.max_interpolation_steps == 64
    assert c.runtime.intra_op_threads >= 1 and c.served.models == [] and c.frontend.api_token == ""
    assert c.repository_path().is_absolute()


def test_env_is_read_only_through_env_overrides():
    env = {"LATENTSERVE_API_TOKEN": "s3cret", "LATENTSERVE_REPOSITORY": "/srv/repo", "LATENTSERVE_MODELS": "a, b",
           "LATENTSERVE_GRPC_PORT": "9100", "LATENTSERVE_COLOCATE": "true", "LATENTSERVE_BATCH_WAIT_TIMEOUT_S": "0.01",
           "LATENTSERVE_TARGET": "ignored:1", "OTHER": "x"}
    o = env_overrides(env)
    assert o == {"api_token": "s3cret", "repository": "/srv/repo", "models": ["a", "b"], "grpc_port": 9100,
                 "colocate": True, "batch_wait_timeout_s": 0.01}
    c = load_config(environ=env)
    assert c.frontend.grpc_port == 9100 and c.served.models == ["a", "b"] and c.scaling.colocate is True
    assert c.redacted()["api_token"] == "***" and c.to_dict()["api_token"] == "s3cret"


def test_explicit_overrides_win_over_env_and_none_is_skipped():
    c = load_config({"grpc_port": 9200, "backend": None}, environ={"LATENTSERVE_GRPC_PORT": "9100",
                                                                   "LATENTSERVE_BACKEND": "torchscript"})
    assert c.frontend.grpc_port == 9200 and c.served.backend == "torchscript"


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
    ("http_port", -1, "http_port"),
    ("http_port", 9000, "http_port"),  # = grpc_port
    ("http_max_body_bytes", 1023, "http_max_body_bytes"),
    ("http_max_body_bytes", (1 << 30) + 1, "http_max_body_bytes"),
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
    assert d.batching.max_batch_size == 8 and c.batching.max_batch_size == 64
    assert ServeConfig.from_dict(d.to_dict()) == d


def test_deploy_yaml_is_a_valid_serve_config_and_its_args_load():
    from ray.serve.schema import ServeDeploySchema

    doc = yaml.safe_load((ROOT / "deploy" / "serve.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc) if hasattr(ServeDeploySchema, "model_validate") else ServeDeploySchema.parse_obj(doc)
    app = schema.applications[0]
    assert app.import_path == "latentserve.services.app:app_builder"
    cfg = load_config(app.args, use_env=False)
    assert cfg.frontend.grpc_port == doc["grpc_options"]["port"]
    from latentserve.services.app import SERVICER_FUNCTIONS

    assert doc["grpc_options"]["grpc_servicer_functions"] == SERVICER_FUNCTIONS


def test_serve_command_flags_map_to_config():
    from latentserve.commands import serve as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--port", "9300", "--models", "a,b", "--batch-wait-ms", "5",
                              "--autoscale", "1:3", "--colocate"])
    c = load_config(cmd.overrides_from_args(args), use_env=False)
    assert (c.frontend.grpc_port, c.served.models, c.batching.batch_wait_timeout_s, c.scaling.autoscaling, c.scaling.min_replicas, c.scaling.max_replicas, c.scaling.colocate) == \
        (9300, ["a", "b"], 0.005, True, 1, 3, True)
    assert c.served.backend == "onnxruntime"  # not given -> default
    assert c.frontend.grpc_transport == "auto"
    args = parser.parse_args(["serve", "--grpc-transport", "grpcio"])
    assert load_config(cmd.overrides_from_args(args), use_env=False).frontend.grpc_transport == "grpcio"
    with pytest.raises(ValidationError, match="autoscale"):
        cmd.overrides_from_args(parser.parse_args(["serve", "--autoscale", "x"]))
    c = load_config(cmd.overrides_from_args(parser.parse_args(["serve", "--metrics-port", "9191"])), use_env=False)
    assert c.observability.metrics_port == 9191 and load_config({}, use_env=False).observability.metrics_port == 8080


def test_settings_come_in_documented_groups_with_flat_names_for_yaml_env_and_cli():
    from dataclasses import fields

    from latentserve.services.config import FLAT, GROUPS

    assert len(FLAT) == sum(len(fields(g)) for g in GROUPS.values()) == 88  # every old flat name kept, + http_max_body_bytes, serving_processes, + security (6), + max_output_pixels
    assert FLAT["latent_ops_max_request_rows"] == ("latent_ops", "max_request_rows")
    assert FLAT["latent_ops_max_request_work"] == ("latent_ops", "max_request_work")
    assert FLAT["latent_ops_max_process_rows"] == ("latent_ops", "max_process_rows")
    assert FLAT["reflection"] == ("frontend", "reflection")
    for group, cls in GROUPS.items():
        assert cls.__doc__ and all(f.metadata["doc"] for f in fields(cls)), group
    c = load_config({"batching": {"max_batch_size": 8}, "latent_ops_threads": 2, "storage": {"encode_cache": "off"}},
                    use_env=False)
    assert (c.batching.max_batch_size, c.latent_ops.threads, c.storage.encode_cache) == (8, 2, False)
    assert c.to_dict()["latent_ops_threads"] == 2 and c.to_dict()["max_batch_size"] == 8
    assert load_config(environ={"LATENTSERVE_LATENT_OPS": "false"}).latent_ops.enabled is False


def test_an_unknown_setting_names_the_nearest_valid_one():
    with pytest.raises(ValidationError, match="did you mean 'max_batch_size'"):
        load_config({"max_batchsize": 8}, use_env=False)
    with pytest.raises(ValidationError, match="did you mean 'batching.max_batch_size'"):
        load_config({"batching": {"max_bach_size": 8}}, use_env=False)
    with pytest.raises(ValidationError, match="'grpc_port' is not in group 'batching'; it is in 'frontend'"):
        load_config({"batching": {"grpc_port": 9000}}, use_env=False)
    with pytest.raises(ValidationError, match="geodesic_iterations"):  # a bound naming another setting
        load_config({"max_geodesic_iterations": 10, "geodesic_iterations": 11}, use_env=False)


def test_the_http_settings_live_in_their_groups_and_keep_their_flat_names():
    from latentserve.commands import serve as cmd

    c = load_config(use_env=False)
    assert c.frontend.http_port == 8000 and c.limits.http_max_body_bytes == 64 << 20
    off = load_config({"http_port": 0}, use_env=False)  # 0 = no HTTP door (below the port range on purpose)
    assert off.frontend.http_port == 0 and off.to_dict()["http_port"] == 0
    assert load_config({"limits": {"http_max_body_bytes": 1024}}, use_env=False).limits.http_max_body_bytes == 1024
    c = load_config(environ={"LATENTSERVE_HTTP_PORT": "0", "LATENTSERVE_HTTP_MAX_BODY_BYTES": str(1 << 30)})
    assert (c.frontend.http_port, c.limits.http_max_body_bytes) == (0, 1 << 30)
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--http-port", "0"])
    assert load_config(cmd.overrides_from_args(args), use_env=False).frontend.http_port == 0
