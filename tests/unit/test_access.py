"""Client identity (services/access.py) and the security settings (ServeConfig.security): the tokens-file parser,
its reload and revocation (a fake clock, a real file), names and metric labels, and the start-time refusals
(bounds, certificate files made here with `cryptography`, a token on a plaintext non-loopback listener)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from latentserve.errors import UnauthenticatedError, ValidationError
from latentserve.services.access import ANONYMOUS, Access, TokenBook, parse_tokens
from latentserve.services.config import load_config


A, B = "alice-token-0123456789", "bob-token-abcdefghijkl"


def test_parse_tokens_reads_names_and_ignores_comments():
    text = f"# clients\n\nalice {A}\n  bob\t{B}  \n# bob2 x\n"
    assert parse_tokens(text) == {A: "alice", B: "bob"}
    assert parse_tokens("") == {}


@pytest.mark.parametrize("text,needle", [
    (f"alice {A} extra", "line 1: expected 'NAME TOKEN'"),
    ("alice", "line 1: expected 'NAME TOKEN'"),
    (f"\nal/ice {A}", "line 2: name 'al/ice'"),
    (f"default {A}", "'default' is reserved"),
    (f"anonymous {A}", "reserved"),
    (f"alice {A}\nalice {B}", "line 2: name 'alice' appears twice"),
    (f"alice {A}\nbob {A}", "line 2: the token of 'bob' is already the token of 'alice'"),
    ("alice short", "line 1: the token of 'alice' must be 16-512"),
])
def test_parse_tokens_refuses_bad_lines_naming_the_line_never_the_token(text, needle):
    with pytest.raises(ValidationError) as e:
        parse_tokens(text, "tokens file t.txt")
    assert needle in str(e.value) and str(e.value).startswith("tokens file t.txt")
    assert A not in str(e.value) and B not in str(e.value) and "short" not in str(e.value)


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _touch(path: Path, text: str, stamp: int) -> None:
    path.write_text(text)
    os.utime(path, ns=(stamp, stamp))  # a distinct mtime even within one clock tick of the file system


def test_token_book_reloads_on_change_and_revokes(tmp_path):
    path, clock = tmp_path / "tokens", Clock()
    _touch(path, f"alice {A}\nbob {B}\n", 1_000_000_000)
    book = TokenBook(str(path), reload_s=2.0, clock=clock)
    access = Access(book=book)
    assert access.authenticate(f"Bearer {B}") == "bob"
    _touch(path, f"alice {A}\n", 2_000_000_000)  # bob revoked
    clock.t = 1.0
    assert access.authenticate(f"Bearer {B}") == "bob"  # not yet looked at: within the reload interval
    clock.t = 2.5
    with pytest.raises(UnauthenticatedError, match="revoked"):
        access.authenticate(f"Bearer {B}")
    assert access.authenticate(f"Bearer {A}") == "alice" and book.names == {"alice"}
    _touch(path, "alice oops\n", 3_000_000_000)  # no longer parses: the last good tokens stay
    clock.t = 5.0
    assert access.authenticate(f"Bearer {A}") == "alice"
    path.unlink()  # gone: none of its tokens
    clock.t = 7.5
    with pytest.raises(UnauthenticatedError):
        access.authenticate(f"Bearer {A}")


def test_names_and_bounded_metric_labels(tmp_path):
    path = tmp_path / "tokens"
    path.write_text(f"alice {A}\n")
    access = Access(api_token="single-token", book=TokenBook(str(path), 1.0))
    assert access.authenticate("Bearer single-token") == "default" and access.metric_name("default") == "default"
    assert access.authenticate(f"bearer {A}") == "alice" and access.metric_name("alice") == "alice"
    assert access.metric_name("some-cert-cn") == ANONYMOUS
    for bad in ("", "Bearer", "Bearer wrong-token-wrong-token", f"Basic {A}"):
        with pytest.raises(UnauthenticatedError):
            access.authenticate(bad)
    open_access = Access()  # no token: the certificate's CN names the caller, else anonymous
    assert open_access.authenticate("", "ci-runner") == "ci-runner" and open_access.authenticate("") == ANONYMOUS
    assert open_access.metric_name("ci-runner") == ANONYMOUS


def test_mutual_tls_refuses_a_call_without_a_certificate():
    access = Access(require_cert=True)
    with pytest.raises(UnauthenticatedError, match="client certificate"):
        access.authenticate("", None)
    assert access.authenticate("", "alice") == "alice" and access.authenticate("", "") == ANONYMOUS


# ------------------------------------------------------------------------------------------------ config
@pytest.fixture(scope="module")
def ca(tmp_path_factory, tls_certs):
    return tls_certs.CA(tmp_path_factory.mktemp("ca"))


def _cfg(**kw):
    return load_config(kw, use_env=False)


def test_security_defaults_and_bounds():
    c = _cfg()
    assert (c.security.tls_cert, c.security.tls_ca, c.security.insecure, c.security.tokens_file) == ("", "", False, "")
    assert c.security.tokens_reload_s == 2.0
    for bad in (0.05, 3601.0):
        with pytest.raises(ValidationError, match="tokens_reload_s"):
            _cfg(tokens_reload_s=bad)


def test_tls_files_are_checked_at_start(ca, tmp_path):
    server = ca.server()
    c = _cfg(tls_cert=str(server.cert), tls_key=str(server.key), tls_ca=str(ca.pem), http_port=0)
    assert c.security.tls_ca == str(ca.pem)
    with pytest.raises(ValidationError, match=r"tls_cert='/nope.pem': cannot read the file"):
        _cfg(tls_cert="/nope.pem", tls_key=str(server.key))
    (tmp_path / "junk.pem").write_text("not a certificate")
    with pytest.raises(ValidationError, match="tls_ca=.*is not a PEM file"):
        _cfg(tls_cert=str(server.cert), tls_key=str(server.key), tls_ca=str(tmp_path / "junk.pem"), http_port=0)
    with pytest.raises(ValidationError, match="tls_key=.*TLS needs both"):
        _cfg(tls_cert=str(server.cert))
    other = ca.client("someone")  # a key that is not the certificate's
    with pytest.raises(ValidationError, match="tls_key=.*does not load with tls_cert"):
        _cfg(tls_cert=str(server.cert), tls_key=str(other.key))
    with pytest.raises(ValidationError, match="tls_ca=.*needs tls_cert"):
        _cfg(tls_ca=str(ca.pem))
    with pytest.raises(ValidationError, match="tls_ca=.*HTTP door cannot require client certificates"):
        _cfg(tls_cert=str(server.cert), tls_key=str(server.key), tls_ca=str(ca.pem))
    with pytest.raises(ValidationError, match="tls_cert=.*gRPC proxy .* has no TLS option: use grpc_frontend "
                                              "'native' \\(`--frontend native`"):
        _cfg(tls_cert=str(server.cert), tls_key=str(server.key), grpc_frontend="serve")


def test_a_token_on_plaintext_beyond_loopback_needs_insecure(ca, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {A}\n")
    for token_kw in ({"api_token": "s3cret-s3cret"}, {"tokens_file": str(tokens)}):
        with pytest.raises(ValidationError, match="host='0.0.0.0'.*clear text.*--insecure"):
            _cfg(host="0.0.0.0", **token_kw)
        assert _cfg(host="0.0.0.0", insecure=True, **token_kw).security.insecure
        assert _cfg(host="127.0.0.1", **token_kw).frontend.host == "127.0.0.1"  # loopback: fine
        server = ca.server()
        assert _cfg(host="0.0.0.0", tls_cert=str(server.cert), tls_key=str(server.key), **token_kw)
    assert _cfg(host="0.0.0.0").frontend.host == "0.0.0.0"  # no token, nothing to leak


def test_a_bad_tokens_file_fails_at_start(tmp_path):
    with pytest.raises(ValidationError, match="tokens_file=.*cannot read it"):
        _cfg(tokens_file=str(tmp_path / "missing"))
    (tmp_path / "bad").write_text("alice\n")
    with pytest.raises(ValidationError, match="tokens_file=.*line 1"):
        _cfg(tokens_file=str(tmp_path / "bad"))


def test_serve_cli_names_the_flag(ca):
    from latentserve.commands.serve import flag_named

    try:
        _cfg(tls_cert="/nope.pem", tls_key="/nope.key")
    except ValidationError as exc:
        assert str(flag_named(exc)).startswith("--tls-cert (tls_cert)='/nope.pem': cannot read the file")


def test_client_tls_options_are_checked_before_connecting(ca, tmp_path):
    from latentserve.client import ClientTls, LatentClient

    with pytest.raises(ValidationError, match="tls ca: cannot read '/nope/ca.pem'"):
        LatentClient("127.0.0.1:1", tls=ClientTls(ca="/nope/ca.pem"))
    (tmp_path / "junk").write_text("junk")
    with pytest.raises(ValidationError, match="is not a PEM file"):
        LatentClient("127.0.0.1:1", tls=ClientTls(ca=str(tmp_path / "junk")))
    alice = ca.client("alice")
    with pytest.raises(ValidationError, match="cert and key go together"):
        LatentClient("127.0.0.1:1", tls=ClientTls(ca=str(ca.pem), cert=str(alice.cert)))
    for tls in (True, ClientTls(ca=str(ca.pem), cert=str(alice.cert), key=str(alice.key), server_name="localhost")):
        LatentClient("127.0.0.1:1", tls=tls).close()  # a channel is made; nothing connects yet
