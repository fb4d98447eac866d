"""A real `redis-server` for tests: `RedisServer` (start / kill -9 / restart / pause) and pytest fixtures.

    redis_factory (session): make(password="s3cret", aof=False) -> a new started RedisServer on a free loopback
                             port with its own temp dir (`--save ""`; AOF with appendfsync always when asked);
                             every server is killed at the end, and its log is printed if a test failed.
    redis_server  (session): one password-protected, non-persistent server for the whole session.

Test modules use them with `from <this module> import redis_factory, redis_server` (loaded by path: the
tests/integration folder is not a package); conftest.py may import them the same way to share them.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from latentserve.tools.local_cluster import stop_process

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PASSWORD = "s3cret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process on 127.0.0.1:<port> with data and log in `workdir`."""

    def __init__(self, workdir: Path, password: str | None = PASSWORD, aof: bool = False, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.password, self.aof = password, aof
        self.port = port or _free_port()
        self.logfile = self.workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    # -- addresses ------------------------------------------------------------------------------------------
    def url(self, password: str | None = "<own>", db: int = 0) -> str:
        pw = self.password if password == "<own>" else password
        auth = f":{pw}@" if pw else ""
        return f"redis://{auth}127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password, socket_timeout=2,
                           socket_connect_timeout=2)

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self, timeout_s: float = 10.0) -> "RedisServer":
        if not os.path.exists(REDIS_SERVER):
            pytest.skip(f"redis-server not installed ({REDIS_SERVER})")
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--logfile", str(self.logfile), "--daemonize", "no", "--protected-mode", "no", "--save", "",
                "--appendonly", "yes" if self.aof else "no"]
        if self.aof:
            args += ["--appendfsync", "always"]  # a kill -9 right after a write must not lose it
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, last = time.time() + timeout_s, None
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with self.client() as c:
                    if c.ping():
                        return self
            except Exception as exc:  # noqa: BLE001 - loading / not listening yet
                last = exc
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s}s ({last}):\n{self.log()}")

    def kill(self) -> None:
        """kill -9 (no shutdown save: only what AOF already has survives)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> "RedisServer":
        """Start again on the same port and directory (an AOF server reloads its data)."""
        self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP: the server accepts nothing and answers nothing (a 'slow' Redis) until resume()."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self, max_chars: int = 4000) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-max_chars:]
        except OSError:
            return "(no log)"


@pytest.fixture(scope="session")
def redis_factory(tmp_path_factory, request):
    servers: list[RedisServer] = []
    failed_before = request.session.testsfailed

    def make(password: str | None = PASSWORD, aof: bool = False) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"), password=password, aof=aof)
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        if server.proc is not None and server.proc.poll() is None:
            server.resume()  # a paused server cannot be terminated
        if request.session.testsfailed > failed_before:
            print(f"\n===== redis-server :{server.port} log =====\n{server.log()}")
        server.kill()


@pytest.fixture(scope="session")
def redis_server(redis_factory) -> RedisServer:
    return redis_factory()
