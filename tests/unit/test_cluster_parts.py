"""Unit tests of the cluster pieces that need no Ray: the client's retry options, the identity metadata, the
loopback cluster's Serve config (deploy/serve.yaml with only ports/paths/replicas changed) and the
cluster-demo command's early checks. Against a real grpc server and processes:
tests/integration/test_cluster_parts.py."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

from latentserve.errors import ValidationError
from latentserve import client as lc
from latentserve import metadata
from latentserve.services.observability import identity
from latentserve.tools import local_cluster as cl
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def test_retry_options_checks_and_policy():
    assert lc.retry_options(0) == []
    opts = dict(lc.retry_options(3))
    policy = json.loads(opts["grpc.service_config"])["methodConfig"][0]["retryPolicy"]
    assert policy["maxAttempts"] == 4 and policy["retryableStatusCodes"] == ["UNAVAILABLE"]
    for bad in (-1, 5, 1.5, True, "2"):
        with pytest.raises(ValidationError, match="retries"):
            lc.retry_options(bad)


def test_identity_metadata_parsing():
    assert metadata.server_info(None) is None
    assert metadata.server_info([("other", "x")]) is None
    info = metadata.server_info([(metadata.NODE_KEY, b"abc"), (metadata.REPLICA_KEY, "r1"), ("x", "y")])
    assert info == metadata.ServerInfo(node="abc", replica="r1")
    assert identity.replica_identity() == ()  # not inside a Serve replica


def _serve_deploy():
    spec = importlib.util.spec_from_file_location("latentserve_deploy_serve_deploy_cl", DEPLOY / "serve_deploy.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_loopback_serve_config_changes_only_ports_paths_and_replicas(tmp_path):
    base = yaml.safe_load((DEPLOY / "serve.yaml").read_text())
    out = cl.serve_config_for(base, "/some/repo", 41000, 41001, replicas=3)
    app, base_app = out["applications"][0], base["applications"][0]
    changed = {k for k in set(app["args"]) | set(base_app["args"]) if app["args"].get(k) != base_app["args"].get(k)}
    assert changed == {"repository", "host", "grpc_port", "http_port", "ingress_replicas"}
    assert app["args"]["ingress_replicas"] == 3 and app["args"]["host"] == "127.0.0.1"
    assert app["deployments"] == [{"name": cl.INGRESS_DEPLOYMENT, "max_replicas_per_node": 1}]
    assert out["grpc_options"]["port"] == 41000 and out["http_options"]["port"] == 41001
    assert {k: v for k, v in out.items() if k not in ("applications", "grpc_options", "http_options", "proxy_location")} == \
        {k: v for k, v in base.items() if k not in ("applications", "grpc_options", "http_options", "proxy_location")}
    assert out["proxy_location"] == "Disabled"
    assert base["applications"][0]["args"]["grpc_port"] == 9000  # the input is not modified
    # serve_deploy.py accepts it (ports consistent) up to the repository check
    sd = _serve_deploy()
    doc = sd.effective_config(out, {})
    with pytest.raises(Exception, match="repo"):
        sd.validate(doc, {})


def test_cluster_demo_fails_early_with_one_line(tmp_path, capsys):
    from latentserve.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["cluster-demo", "--repo", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no generative model" in err[0], err
    assert main(["cluster-demo", "--repo", str(tmp_path / "empty"), "--cpus-per-node", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reserves ingress_num_cpus + num_cpus = 1.5 CPUs" in err[0], err
    with pytest.raises(SystemExit):
        main(["cluster-demo", "--workers", "0"])
