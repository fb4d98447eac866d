"""TLS, mutual TLS and client identity against real servers, with real certificates made at test time
(tests/tls_certs.py) and real handshakes:

- native apps on the session's Serve instance (`extra_app`), on both gRPC transports: the handshake succeeds
  with the right CA and fails (UNAVAILABLE, never INTERNAL) with a wrong one or without one; with mutual TLS
  a client without a certificate is refused; named tokens from a file are reloaded and revoked while the
  server runs; the client's name is in the request log lines and the metrics' `client` label;
- `latentserve serve` as a user runs it: refusals at start (a token on a plaintext non-loopback listener, a
  bad certificate file: one line, exit 2), and a TLS server whose HTTP door speaks HTTPS, reached by the CLI
  client with --tls-ca and by an HTTPS client.
"""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from latentserve.client import ClientTls, LatentClient
from latentserve.errors import UnauthenticatedError, UnavailableError
from latentserve.services.frontends.grpc import transport as grpc_transport
from latentserve.services.observability.exporter import snapshot, total

TRANSPORTS = ["grpcio", pytest.param("cxx", marks=pytest.mark.skipif(
    grpc_transport.compiled_transport() is None, reason="built without the compiled transport (no libgrpc++-dev)"))]
ALICE, BOB = "alice-t0ken-0123456789abcdef", "bob-t0ken-0123456789abcdef"


@pytest.fixture(scope="module")
def pki(tmp_path_factory, tls_certs):
    """A server CA (server certificate for 127.0.0.1), a client CA (clients alice, bob) and an unrelated CA."""
    certs = tls_certs
    root = tmp_path_factory.mktemp("pki")
    server_ca, client_ca = certs.CA(root / "server-ca", "server CA"), certs.CA(root / "client-ca", "client CA")
    other_ca = certs.CA(root / "other", "unrelated CA")
    return {"server_ca": server_ca, "server": server_ca.server(), "client_ca": client_ca,
            "alice": client_ca.client("alice"), "bob": client_ca.client("bob"), "other_ca": other_ca,
            "stranger": other_ca.client("alice")}  # a certificate with a trusted-looking CN from the wrong CA


def _models(target: str, **kw) -> list:
    with LatentClient(target, timeout=20, retries=0, **kw) as c:
        return c.list_models()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_tls_handshake_right_and_wrong_ca(extra_app, pki, transport):
    server = pki["server"]
    right = ClientTls(ca=str(pki["server_ca"].pem))
    target, _, _ = extra_app(f"tls-{transport}", frontend="native", credentials=right.credentials(),
                             grpc_transport=transport, http_port=0, tls_cert=str(server.cert), tls_key=str(server.key),
                             api_token="tls-only-token-0123")
    assert _models(target, tls=right, token="tls-only-token-0123")
    with pytest.raises(UnauthenticatedError):  # TLS does not replace the token
        _models(target, tls=right)
    for wrong in (ClientTls(ca=str(pki["other_ca"].pem)), None):  # an unrelated CA; plaintext to a TLS port
        with pytest.raises(UnavailableError) as e:
            _models(target, tls=wrong, token="tls-only-token-0123")
        assert "INTERNAL" not in str(e.value) and "Traceback" not in str(e.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_mutual_tls_tokens_file_reload_revocation_and_client_names(extra_app, pki, tmp_path, transport, wait_serving):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# name token\nalice {ALICE}\nbob {BOB}\n")
    server = pki["server"]
    ca = str(pki["server_ca"].pem)
    alice = ClientTls(ca=ca, cert=str(pki["alice"].cert), key=str(pki["alice"].key))
    target, _, cfg = extra_app(f"mtls-{transport}", frontend="native", credentials=alice.credentials(),
                               grpc_transport=transport, http_port=0, access_log=True, tls_cert=str(server.cert),
                               tls_key=str(server.key), tls_ca=str(pki["client_ca"].pem), tokens_file=str(tokens),
                               tokens_reload_s=0.5)
    bob = ClientTls(ca=ca, cert=str(pki["bob"].cert), key=str(pki["bob"].key))

    # a client certificate signed by the client CA + a token from the file
    before = total(snapshot(cfg.observability.metrics_dir), "latentserve_requests_total", rpc="ListModels",
                   client="alice")
    assert _models(target, tls=alice, token=ALICE)
    assert _models(target, tls=bob, token=BOB)
    # no client certificate, or one from another CA: the handshake fails, UNAVAILABLE with grpc's reason
    for tls in (ClientTls(ca=ca), ClientTls(ca=ca, cert=str(pki["stranger"].cert), key=str(pki["stranger"].key))):
        with pytest.raises(UnavailableError) as e:
            _models(target, tls=tls, token=ALICE)
        assert "INTERNAL" not in str(e.value)
    # a certificate without a token: the tokens file still decides
    with pytest.raises(UnauthenticatedError, match="missing API token"):
        _models(target, tls=alice)

    # the private health port (plaintext, loopback, for Serve's probe) serves health but no LatentService call
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    found = [re.search(r"private health port (\d+)", Path(p).read_text(errors="replace"))
             for p in glob.glob(str(logs / "serve" / f"replica_mtls-{transport}_*.log"))]
    private = [m.group(1) for m in found if m]
    assert private, "the replica log names no private health port"
    wait_serving(f"127.0.0.1:{private[-1]}", timeout_s=10)
    with pytest.raises(UnauthenticatedError, match="requires a client certificate"):
        _models(f"127.0.0.1:{private[-1]}", token=ALICE)

    # revocation: bob's line removed, refused within the reload interval; a new token works without restart.
    # Each serving process of the node reloads the file on its own, so wait until several calls in a row (new
    # connections, spread over the processes) see the new file
    tokens.write_text(f"alice {ALICE}\ncarol carol-t0ken-0123456789ab\n")

    def refused(token: str) -> bool:
        try:
            _models(target, tls=bob, token=token)
        except UnauthenticatedError as exc:
            assert "revoked" in str(exc)
            return True
        return False

    deadline = time.time() + 10
    while not all([refused(BOB) for _ in range(4)] + [not refused("carol-t0ken-0123456789ab") for _ in range(4)]):
        assert time.time() < deadline, "the old tokens file still decided calls 10 s after it changed"
        time.sleep(0.2)
    assert _models(target, tls=alice, token=ALICE)

    # the name in the metrics' client label (bounded: token names) and in the request log lines
    after = total(snapshot(cfg.observability.metrics_dir), "latentserve_requests_total", rpc="ListModels",
                  client="alice")
    assert after - before >= 2
    snap = snapshot(cfg.observability.metrics_dir)
    assert {dict(labels).get("client") for (n, labels) in snap if n == "latentserve_requests_total"} <= {
        "alice", "bob", "carol", "default", "anonymous"}
    deadline = time.time() + 10
    while not any("client=carol" in Path(p).read_text(errors="replace") for p in glob.glob(str(logs / "worker-*.err"))):
        assert time.time() < deadline, "no request log line names the client"
        time.sleep(0.5)


# ------------------------------------------------------------------------------------ latentserve serve
def _serve(*argv: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentserve", "serve", *argv], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})


def test_serve_refuses_a_token_on_plaintext_beyond_loopback_and_bad_certificates(tiny_repo, pki, tmp_path):
    env = {"LATENTSERVE_API_TOKEN": "s3cret-token-0123"}
    r = _serve("--repo", str(tiny_repo), "--host", "0.0.0.0", env=env)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "clear text" in lines[0] and "--insecure" in lines[0] and "s3cret" not in lines[0]
    assert lines[0].startswith("latentserve serve: error: --host (host)='0.0.0.0'")

    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\n")
    r = _serve("--repo", str(tiny_repo), "--host", "0.0.0.0", "--tokens-file", str(tokens))
    assert r.returncode == 2 and "clear text" in r.stderr

    server = pki["server"]
    for argv, flag in ((("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(server.key)), "--tls-cert"),
                       (("--tls-cert", str(server.cert), "--tls-key", str(pki["alice"].key)), "--tls-key"),
                       (("--tls-cert", str(server.cert), "--tls-key", str(server.key), "--tls-ca", str(tokens),
                         "--http-port", "0"), "--tls-ca"),
                       (("--tokens-file", str(tmp_path / "missing")), "--tokens-file")):
        r = _serve("--repo", str(tiny_repo), *argv)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"latentserve serve: error: {flag} "), r.stderr
        assert "Traceback" not in r.stderr


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_latentserve_serve_with_tls_grpc_and_https(tiny_repo, pki, tmp_path, wait_serving):
    """A real `latentserve serve --tls-cert --tls-key --tokens-file` (its own Ray): gRPC through the CLI client
    with --tls-ca, the HTTP door over HTTPS; plaintext and a wrong CA are refused."""
    server, ca = pki["server"], str(pki["server_ca"].pem)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\n")
    grpc_port, http_port = _free_port(), _free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "latentserve", "serve", "--repo", str(tiny_repo), "--port", str(grpc_port),
             "--http-port", str(http_port), "--metrics-port", "0", "--ray-cpus", "2", "--tls-cert", str(server.cert),
             "--tls-key", str(server.key), "--tokens-file", str(tokens)],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore", "LATENTSERVE_NUM_CPUS": "0.25",
                 "LATENTSERVE_INGRESS_NUM_CPUS": "0.25", "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "30"})
    context = ssl.create_default_context(cafile=ca)
    url = f"https://127.0.0.1:{http_port}/"
    try:
        deadline, last = time.time() + 240, None
        while time.time() < deadline:
            assert proc.poll() is None, log.read_text(errors="replace")[-4000:]
            try:
                with urllib.request.urlopen(url + "healthz", timeout=5, context=context) as r:
                    health = json.loads(r.read())
                    assert {k: health[k] for k in ("status", "auth")} == {"status": "SERVING", "auth": True}
                    assert health["handles"]["durable"] is False  # no redis_url: the in-process store
                    break
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                last = exc
                time.sleep(0.5)
        else:
            raise TimeoutError(f"{url} not serving over HTTPS (last: {last})\n" + log.read_text(errors="replace")[-4000:])
        target = f"127.0.0.1:{grpc_port}"
        wait_serving(target, timeout_s=120, credentials=ClientTls(ca=ca).credentials())
        deadline = time.time() + 30
        while ", TLS, API token required)" not in log.read_text():
            assert time.time() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.5)

        # HTTPS: the token names the client; no token is 401; plaintext HTTP on the TLS port does not answer
        req = urllib.request.Request(url + "api/v1/models", headers={"Authorization": f"Bearer {ALICE}"})
        with urllib.request.urlopen(req, timeout=30, context=context) as r:
            assert r.status == 200 and json.loads(r.read())["models"]
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "api/v1/models", timeout=30, context=context)
        assert e.value.code == 401
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10)
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):  # a client that trusts another CA
            urllib.request.urlopen(url + "healthz", timeout=10,
                                   context=ssl.create_default_context(cafile=str(pki["other_ca"].pem)))

        # gRPC through the CLI client: --tls-ca verifies the server; a wrong CA is one line, exit 2
        cli = [sys.executable, "-m", "latentserve", "models", "-t", target, "--token", ALICE, "--timeout", "30"]
        r = subprocess.run([*cli, "--tls-ca", ca], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "tiny-gan" in r.stdout, r.stderr
        r = subprocess.run([*cli, "--tls-ca", str(pki["other_ca"].pem)], capture_output=True, text=True, timeout=120)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and "UNAVAILABLE" in lines[0], r.stderr
        r = subprocess.run([*cli, "--tls-ca", ca, "--tls-cert", str(pki["alice"].cert)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 2 and "--tls-cert and --tls-key go together" in r.stderr
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _load_healthcheck():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"
    spec = importlib.util.spec_from_file_location("latentserve_deploy_healthcheck_tls", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tls_serving(tiny_repo):
    """start(**security) -> (target, config): a native serving process (what a replica runs; no Ray) with TLS."""
    from latentserve.services.config import load_config
    from latentserve.services.frontends.grpc.native import ServingProcess

    started = []

    def start(**overrides):
        config = load_config({"repository": str(tiny_repo), "grpc_port": _free_port(), "http_port": 0,
                              **overrides}, use_env=False)
        proc = ServingProcess(config, {"tiny-gan": 2})
        proc.start()
        started.append(proc)
        return f"127.0.0.1:{config.frontend.grpc_port}", config

    yield start
    for proc in started:
        proc.stop(1.0)


def test_bench_and_the_compose_healthcheck_speak_mutual_tls(tls_serving, pki, tiny_repo, tmp_path, capsys, monkeypatch):
    """`latentserve bench --tls-*` measures a mutual-TLS server; deploy/healthcheck.py grpc reads the server's own
    TLS settings (LATENTSERVE_TLS_*) and its client certificate from HEALTHCHECK_TLS_CERT/KEY."""
    from latentserve.cli import main

    server, ca = pki["server"], str(pki["server_ca"].pem)
    target, cfg = tls_serving(tls_cert=str(server.cert), tls_key=str(server.key), tls_ca=str(pki["client_ca"].pem))
    bench = ["bench", "-t", target, "--repo", str(tiny_repo), "--model", "tiny-gan", "--no-triton", "--duration", "1",
             "--warmup", "0", "--concurrency", "1", "--bulk-size", "2", "--bulk-concurrency", "1", "--json", "",
             "--tls-ca", ca]
    capsys.readouterr()
    assert main(bench + ["--tls-cert", str(pki["alice"].cert), "--tls-key", str(pki["alice"].key)]) == 0
    captured = capsys.readouterr()
    assert "latentserve" in captured.out and "errors" not in captured.err
    assert main(bench) == 2  # no client certificate: the handshake fails, one line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "UNAVAILABLE" in err[0] and "Traceback" not in err[0]  # before any measuring

    hc = _load_healthcheck()
    port = cfg.frontend.grpc_port
    for key in ("HEALTHCHECK_TLS_CA", "HEALTHCHECK_TLS_CERT", "HEALTHCHECK_TLS_KEY", "HEALTHCHECK_TLS_SERVER_NAME"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LATENTSERVE_GRPC_PORT", str(port))
    monkeypatch.setenv("LATENTSERVE_TLS_CERT", str(server.cert))  # the server's compose environment
    monkeypatch.setenv("LATENTSERVE_TLS_KEY", str(server.key))
    monkeypatch.setenv("LATENTSERVE_TLS_CA", str(pki["client_ca"].pem))
    assert hc.main(["grpc"]) == 1  # the server's own pair is no client certificate of the client CA
    assert "gRPC health" in capsys.readouterr().err
    monkeypatch.setenv("HEALTHCHECK_TLS_CERT", str(pki["alice"].cert))
    monkeypatch.setenv("HEALTHCHECK_TLS_KEY", str(pki["alice"].key))
    assert hc.main(["grpc"]) == 0, capsys.readouterr().err
    assert "gRPC health" in hc.check_grpc(port, 5.0)  # plaintext to a TLS port: unhealthy, said in one line
    monkeypatch.setenv("HEALTHCHECK_TLS_CA", str(tmp_path / "missing.pem"))
    assert hc.main(["grpc"]) == 1 and "TLS file unreadable" in capsys.readouterr().err


def test_the_healthcheck_trusts_the_servers_own_certificate(tls_serving, pki, monkeypatch, capsys):
    """TLS without client certificates: the server's compose environment is all the check needs."""
    server = pki["server"]
    _, cfg = tls_serving(tls_cert=str(server.cert), tls_key=str(server.key))
    hc = _load_healthcheck()
    for key in ("HEALTHCHECK_TLS_CA", "HEALTHCHECK_TLS_CERT", "HEALTHCHECK_TLS_KEY", "HEALTHCHECK_TLS_SERVER_NAME",
                "LATENTSERVE_TLS_CA"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LATENTSERVE_GRPC_PORT", str(cfg.frontend.grpc_port))
    monkeypatch.setenv("LATENTSERVE_TLS_CERT", str(server.cert))
    monkeypatch.setenv("LATENTSERVE_TLS_KEY", str(server.key))
    assert hc.main(["grpc"]) == 0, capsys.readouterr().err
    monkeypatch.setenv("HEALTHCHECK_TLS_SERVER_NAME", "not-the-server.example")
    assert hc.main(["grpc"]) == 1  # the name is checked
