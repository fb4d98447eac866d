"""Who may call, and under which name: API tokens (one `api_token`, named "default", and/or a tokens file of
named tokens) and mutual-TLS client certificates. Transport-free: the doors pass the `authorization` value
they received and the verified client certificate's CN (or None), and get the client's name back, or an
UnauthenticatedError.

Tokens file (`ServeConfig.security.tokens_file`), UTF-8, one token per line:

    # name   token
    alice    8f0c2b1e7d0a4c55a3d3
    ci-bot   Zq9-x_41.fe2

Names are 1-64 characters of letters, digits and `-_.` ("default" and "anonymous" are reserved); a token is
16-512 printable non-space characters; names and tokens are unique; `#` starts a comment line. A malformed
file is refused at start (one line naming the file and line, never a token). Reloading: the file's stat
(mtime, size, inode) is looked at on the first call after `tokens_reload_s` has passed; a changed file is
re-read, so an added token works and a removed one is refused within that time. A file that no longer
parses keeps the tokens read last (and logs why); a file that is gone accepts none of its tokens.

Names: a call authenticated by a token is that token's name; without a token configured, a client with a
verified certificate is its CN, else "anonymous". Metrics label only names from the configuration
(`metric_name`: a token name, "default", or "anonymous"), so a certificate cannot grow their cardinality.
"""
from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time
from pathlib import Path

from latentserve.errors import UnauthenticatedError, ValidationError

logger = logging.getLogger("ray.serve")
DEFAULT_NAME = "default"  # the name of `api_token`
ANONYMOUS = "anonymous"
RESERVED = (DEFAULT_NAME, ANONYMOUS)
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
MIN_TOKEN_CHARS, MAX_TOKEN_CHARS = 16, 512


def parse_tokens(text: str, source: str = "tokens file") -> dict[str, str]:
    """{token: name} from the file's text; ValidationError naming `source` and the line (never the token)."""
    out: dict[str, str] = {}
    names: set[str] = set()
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        where = f"{source} line {no}"
        if len(parts) != 2:
            raise ValidationError(f"{where}: expected 'NAME TOKEN' (two fields separated by spaces), got "
                                  f"{len(parts)} field(s)")
        name, token = parts
        if not NAME_RE.fullmatch(name):
            raise ValidationError(f"{where}: name {name[:64]!r} must be 1-64 letters, digits, '-', '_' or '.'")
        if name in RESERVED:
            raise ValidationError(f"{where}: name {name!r} is reserved ({' and '.join(RESERVED)})")
        if name in names:
            raise ValidationError(f"{where}: name {name!r} appears twice")
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or not token.isprintable():
            raise ValidationError(f"{where}: the token of {name!r} must be {MIN_TOKEN_CHARS}-{MAX_TOKEN_CHARS} "
                                  "printable characters")
        if token in out:
            raise ValidationError(f"{where}: the token of {name!r} is already the token of {out[token]!r}")
        names.add(name)
        out[token] = name
    return out


def read_tokens(path: str) -> dict[str, str]:
    """parse_tokens of the file at `path`; ValidationError when it cannot be read or parsed."""
    try:
        text = Path(path).expanduser().read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"tokens file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    return parse_tokens(text, f"tokens file {path}")


class TokenBook:
    """The tokens file, re-read when its stat changes (checked at most every `reload_s`). Thread-safe."""

    def __init__(self, path: str, reload_s: float, clock=time.monotonic) -> None:
        self.path, self.reload_s, self._clock = path, float(reload_s), clock
        self._lock = threading.Lock()
        self._stamp = self._stat()
        self.tokens = read_tokens(path)  # at start a bad file is an error, not an empty book
        self.names = frozenset(self.tokens.values())
        self._next = clock() + self.reload_s

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(os.path.expanduser(self.path))
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def current(self) -> dict[str, str]:
        """{token: name} as of the last reload (reloading first when due)."""
        now = self._clock()
        if now < self._next:
            return self.tokens
        with self._lock:
            if now < self._next:
                return self.tokens
            self._next = now + self.reload_s
            stamp = self._stat()
            if stamp == self._stamp:
                return self.tokens
            self._stamp = stamp
            if stamp is None:
                logger.warning("tokens file %s is gone: none of its tokens is accepted until it is back", self.path)
                tokens: dict[str, str] = {}
            else:
                try:
                    tokens = read_tokens(self.path)
                except ValidationError as exc:
                    logger.error("%s; keeping the %d tokens read before", exc, len(self.tokens))
                    return self.tokens
            added, removed = set(tokens.values()) - self.names, self.names - set(tokens.values())
            logger.info("tokens file %s reloaded: %d tokens (added: %s; removed: %s)", self.path, len(tokens),
                        ", ".join(sorted(added)) or "none", ", ".join(sorted(removed)) or "none")
            self.tokens, self.names = tokens, frozenset(tokens.values())
            return tokens


class Access:
    """The check every door runs per call (see the module docstring). `require_cert`: the listener asks for
    client certificates (mutual TLS), so a call without one came through a port that did not (the native
    server's private loopback port) and is refused."""

    def __init__(self, api_token: str = "", book: TokenBook | None = None, require_cert: bool = False) -> None:
        self.api_token, self.book, self.require_cert = api_token, book, require_cert

    @classmethod
    def from_config(cls, config) -> "Access":
        sec = config.security
        book = TokenBook(sec.tokens_file, sec.tokens_reload_s) if sec.tokens_file else None
        return cls(config.frontend.api_token, book, bool(sec.tls_ca))

    @property
    def tokens_required(self) -> bool:
        return bool(self.api_token or self.book)

    def authenticate(self, authorization: str, cert_name: str | None = None) -> str:
        """The caller's name, from `authorization` ('Bearer <token>', '' when none was sent) and the CN of its
        verified certificate (None: no certificate); UnauthenticatedError when the call must be refused."""
        if self.require_cert and cert_name is None:
            raise UnauthenticatedError("this server requires a client certificate (mutual TLS): connect with "
                                       "--tls-cert/--tls-key signed by the server's --tls-ca")
        if not self.tokens_required:
            return cert_name or ANONYMOUS
        scheme, _, sent = authorization.partition(" ")
        sent_b = sent.strip().encode()
        if scheme.lower() == "bearer" and sent_b:
            if self.api_token and hmac.compare_digest(sent_b, self.api_token.encode()):
                return DEFAULT_NAME
            if self.book is not None:
                name = None
                for token, n in self.book.current().items():  # constant time per token, whatever matches
                    if hmac.compare_digest(sent_b, token.encode()):
                        name = n
                if name is not None:
                    return name
        raise UnauthenticatedError(
            "missing or wrong API token (or a revoked one): send 'authorization: Bearer <token>' (gRPC metadata "
            "or HTTP header)" if authorization else
            "missing API token: send 'authorization: Bearer <token>' (gRPC metadata or HTTP header)")

    def metric_name(self, name: str) -> str:
        """`name` when the configuration names it (a token name or "default"), else "anonymous"."""
        if name == DEFAULT_NAME and self.api_token:
            return name
        if self.book is not None and name in self.book.names:
            return name
        return ANONYMOUS
