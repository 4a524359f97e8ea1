"""A real mosquitto for tests, running the project's own broker configuration.

No mocks: `Mosquitto` starts the mosquitto binary on a free 127.0.0.1 port with
deploy/mosquitto/mosquitto.conf rendered into a temporary directory (only the listeners,
data dir, password/acl/plugin/certificate paths and log destination change; see
`render_config`), the hw_identity plugin built from deploy/mosquitto/hw_identity.c, and the
committed ACL template followed by one block per user added with `add_user` /
`add_gateway`, rendered by the product's own hazardwatch.gateways.render_acl. The TLS
listener runs only when certificates are given (`Mosquitto(tls=TlsFiles(...))`).

    broker = Mosquitto().start()
    gw = broker.add_gateway("91370105MA3C00001X", "gw-01")   # Credentials
    broker.collector                                          # Credentials of hw-collector
    broker.host, broker.port
    broker.restart()                                          # keeps queued sessions

Fixtures: `project_broker` (session scope, shared; give each test its own gateway ids)
and `fresh_broker` (function scope, for tests that stop, kill or restart the broker).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from hazardwatch import gateways as product

REPO = Path(__file__).resolve().parents[1]
DEPLOY_DIR = REPO / "deploy" / "mosquitto"
CONF_TEMPLATE = DEPLOY_DIR / "mosquitto.conf"
ACL_TEMPLATE = DEPLOY_DIR / "acl"
BUILD_SCRIPT = DEPLOY_DIR / "build.sh"
PLUGIN_SOURCES = (DEPLOY_DIR / "hw_identity.c", DEPLOY_DIR / "Makefile")
PLUGIN_PATH = DEPLOY_DIR / "hw_identity.so"

COLLECTOR_USERNAME = "hw-collector"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0  # a clean stop writes the persistence database; a big backlog takes a while
RELOAD_TIMEOUT_S = 10.0
_RELOAD_LOG_LINE = "Reloading config."


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str


@dataclass(frozen=True)
class TlsFiles:
    """The TLS listener's server certificate and key (e.g. from deploy/mosquitto/dev-certs.sh)."""

    certfile: Path
    keyfile: Path


class BrokerError(RuntimeError):
    """mosquitto failed to start, stop or reload; the message carries the log tail."""


# --------------------------------------------------------------------------- plugin build

_plugin_lock = threading.Lock()


def _plugin_is_stale() -> bool:
    if not PLUGIN_PATH.exists():
        return True
    built = PLUGIN_PATH.stat().st_mtime
    return any(src.stat().st_mtime > built for src in PLUGIN_SOURCES)


def _missing_toolchain() -> str | None:
    """Why the plugin cannot be built here, or None if it can."""
    compiler = os.environ.get("CC", "gcc")
    missing = [tool for tool in (compiler, "make") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    probe = "#include <mosquitto_broker.h>\n#include <mosquitto_plugin.h>\n"
    result = subprocess.run(
        [compiler, "-E", "-x", "c", "-", "-o", os.devnull],
        input=probe,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return (
            "mosquitto plugin headers (mosquitto_broker.h, mosquitto_plugin.h) not found; "
            "install them with `apt-get install -y mosquitto-dev libmosquitto-dev`"
        )
    return None


def build_plugin() -> Path:
    """Build deploy/mosquitto/hw_identity.so if needed (via build.sh) and return its path.

    Skips the calling test when the toolchain or headers are missing and the .so is not
    already up to date; a compile error is a failure, not a skip.
    """
    with _plugin_lock:
        if not _plugin_is_stale():
            return PLUGIN_PATH
        reason = _missing_toolchain()
        if reason is not None:
            pytest.skip(f"cannot build the hw_identity mosquitto plugin: {reason}")
        result = subprocess.run(
            ["sh", str(BUILD_SCRIPT)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BrokerError(
                f"{BUILD_SCRIPT} failed (exit {result.returncode}):\n{result.stderr}{result.stdout}"
            )
        return Path(result.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- config rendering

_RENDERED_KEYS = (
    "persistence_location",
    "password_file",
    "acl_file",
    "plugin",
    "log_dest",
)
# Options that belong to the TLS listener (the second `listener` line).
_TLS_KEYS = frozenset({"certfile", "keyfile", "cafile", "capath", "tls_version", "ciphers",
                       "ciphers_tls1.3", "require_certificate", "crlfile",
                       "use_identity_as_username", "use_subject_as_username"})


def render_config(
    template: str,
    *,
    port: int,
    data_dir: Path,
    password_file: Path,
    acl_file: Path,
    plugin: Path,
    log_file: Path,
    host: str = "127.0.0.1",
    run_as: str | None = None,
    tls_port: int | None = None,
    tls: TlsFiles | None = None,
) -> str:
    """The committed mosquitto.conf with only environment-specific values replaced.

    Each of `_RENDERED_KEYS` must occur on exactly one active (uncommented) line, and
    `listener` on exactly two: the plain one, then the TLS one with its options (certfile
    and keyfile once each). So a change to the committed file that this function cannot
    honour fails loudly instead of silently testing something else. Without `tls` the TLS
    listener and its options are commented out (no certificates). `run_as` appends a
    `user` line (it matters only when the broker is started as root: mosquitto would
    otherwise switch to user "mosquitto", which cannot read a private temporary directory).
    """
    if (tls is None) != (tls_port is None):
        raise ValueError("tls and tls_port go together")
    values = {
        "persistence_location": f"{data_dir}/",
        "password_file": str(password_file),
        "acl_file": str(acl_file),
        "plugin": str(plugin),
        "log_dest": f"file {log_file}",
    }
    tls_values = {"certfile": str(tls.certfile), "keyfile": str(tls.keyfile)} if tls else {}
    seen = dict.fromkeys([*values, "listener", "certfile", "keyfile"], 0)
    lines = []
    for line in template.splitlines():
        stripped = line.strip()
        key = stripped.split(None, 1)[0] if stripped and not stripped.startswith("#") else None
        if key in values:
            seen[key] += 1
            lines.append(f"{key} {values[key]}")
        elif key == "listener":
            seen[key] += 1
            if seen[key] == 1:
                lines.append(f"listener {port} {host}")
            elif tls_port is not None:
                lines.append(f"listener {tls_port} {host}")
            else:
                lines.append(f"#{line}  # rendered by tests/brokers.py: no TLS")
        elif key in _TLS_KEYS:
            if seen["listener"] != 2:
                raise ValueError(f"mosquitto.conf: {key} must follow the TLS (second) listener")
            seen[key] = seen.get(key, 0) + 1
            if tls is None:
                lines.append(f"#{line}  # rendered by tests/brokers.py: no TLS")
            else:
                lines.append(f"{key} {tls_values[key]}" if key in tls_values else line)
        else:
            lines.append(line)
    wrong = {key: count for key, count in seen.items() if count != 1}
    if seen["listener"] == 2:
        wrong.pop("listener")
    if wrong:
        raise ValueError(
            "mosquitto.conf must have exactly one active line for each of "
            f"{', '.join(_RENDERED_KEYS)}, certfile and keyfile, and two listener lines "
            f"(plain, then TLS); found {wrong}"
        )
    if run_as:
        lines += ["", "# rendered by tests/brokers.py", f"user {run_as}"]
    return "\n".join(lines) + "\n"


# What `hazardwatch gateway add` writes, from the product itself.
gateway_username = product.gateway_username
gateway_acl_lines = product.gateway_acl_lines


# --------------------------------------------------------------------------- MQTT probe


def _mqtt_string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("!H", len(data)) + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connack_code(host: str, port: int, creds: Credentials, timeout: float = 2.0) -> int | None:
    """MQTT 3.1.1 CONNECT with `creds`: the CONNACK return code (0 accepted, 4 bad
    username or password, 5 not authorized), or None if no broker answered."""
    client_id = f"hw-probe-{secrets.token_hex(6)}"
    variable = _mqtt_string("MQTT") + bytes([4, 0x80 | 0x40 | 0x02]) + struct.pack("!H", 10)
    payload = _mqtt_string(client_id) + _mqtt_string(creds.username) + _mqtt_string(creds.password)
    body = variable + payload
    packet = b"\x10" + _remaining_length(len(body)) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(packet)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return None
                reply += chunk
            if reply[0] != 0x20:
                return None
            if reply[3] == 0:
                sock.sendall(b"\xe0\x00")  # DISCONNECT, so the broker logs a clean exit
            return reply[3]
    except OSError:
        return None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- the broker


class Mosquitto:
    """One mosquitto process with the project configuration, in its own temp directory."""

    def __init__(self, binary: str | None = None, *, tls: TlsFiles | None = None,
                 partitions: int = 0) -> None:
        self.binary = binary or shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.host = "127.0.0.1"
        self.port = 0
        self.tls = tls
        # hw_identity's plugin_opt_partitions (0: off, the committed default); read at
        # every start, so a test may change it and restart.
        self.partitions = partitions
        self.tls_port = 0  # the TLS listener's port once started with `tls`
        self.dir = Path(tempfile.mkdtemp(prefix="hw-mosquitto-"))
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir()
        self.conf_path = self.dir / "mosquitto.conf"
        self.passwd_path = self.dir / "passwd"
        self.acl_path = self.dir / "acl"
        self.log_path = self.dir / "mosquitto.log"
        self._stderr_path = self.dir / "stderr.log"
        self.collector = Credentials(COLLECTOR_USERNAME, secrets.token_urlsafe(18))
        self._acl_blocks: dict[str, list[str]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()
        self._passwd(self.collector, create=True)
        self._write_acl()

    # -- lifecycle

    def start(self) -> Mosquitto:
        """Start (or restart) on the same port and data dir; returns once the collector
        can connect."""
        with self._lock:
            if self.running:
                return self
            plugin = build_plugin()
            first_start = self.port == 0
            for attempt in range(3):
                if first_start:
                    self.port = free_port(self.host)
                    if self.tls is not None:
                        self.tls_port = free_port(self.host)
                self._spawn(plugin)
                try:
                    self._wait_ready()
                    return self
                except BrokerError:
                    in_use = "Address already in use" in self.log_tail()
                    self._terminate(signal.SIGKILL)
                    if not (first_start and in_use and attempt < 2):
                        raise
            raise AssertionError("unreachable")

    def stop(self) -> None:
        """SIGTERM and wait: mosquitto writes its persistence database on the way out."""
        with self._lock:
            self._terminate(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash. Whatever arrived since the last autosave is lost."""
        with self._lock:
            self._terminate(signal.SIGKILL)

    def restart(self) -> Mosquitto:
        with self._lock:
            self.stop()
            return self.start()

    def close(self) -> None:
        """Stop and delete the temporary directory."""
        with self._lock:
            self._terminate(signal.SIGTERM)
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    # -- users

    def add_user(self, username: str, password: str, acl_lines: Iterable[str]) -> Credentials:
        """Create or update a user and its ACL block, then reload a running broker and
        wait until the user can connect.

        `acl_lines` are the block's `topic ...` lines (the `user` line is written here);
        `pattern` lines are refused because they would apply to every user.
        """
        lines = [line.strip() for line in acl_lines]
        for line in lines:
            if not line.startswith("topic ") or "\n" in line:
                raise ValueError(f"ACL line for {username!r} must be a `topic ...` line: {line!r}")
        if not username or any(c in username for c in ": \t\r\n"):
            raise ValueError(f"invalid MQTT username {username!r}")
        creds = Credentials(username, password)
        with self._lock:
            self._passwd(creds)
            self._acl_blocks[username] = lines
            self._write_acl()
            if self.running:
                self.reload(wait_for=creds)
        return creds

    def add_gateway(
        self, enterprise: str, gateway: str, password: str | None = None
    ) -> Credentials:
        """A gateway user `<enterprise>/<gateway>` with the standard gateway ACL block."""
        return self.add_user(
            gateway_username(enterprise, gateway),
            password or secrets.token_urlsafe(18),
            gateway_acl_lines(enterprise, gateway),
        )

    def remove_user(self, username: str) -> None:
        with self._lock:
            self._run(["mosquitto_passwd", "-D", str(self.passwd_path), username])
            self._acl_blocks.pop(username, None)
            self._write_acl()
            if self.running:
                self.reload()

    def reload(self, wait_for: Credentials | None = None) -> None:
        """SIGHUP (re-reads passwd and acl) and wait until mosquitto has processed it."""
        with self._lock:
            if not self.running or self._proc is None:
                raise BrokerError("mosquitto is not running")
            before = self._log_text().count(_RELOAD_LOG_LINE)
            self._proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + RELOAD_TIMEOUT_S
            while self._log_text().count(_RELOAD_LOG_LINE) <= before:
                if time.monotonic() > deadline or not self.running:
                    raise BrokerError(f"mosquitto did not reload\n{self._diagnostics()}")
                time.sleep(0.02)
            while wait_for is not None and connack_code(self.host, self.port, wait_for) != 0:
                if time.monotonic() > deadline or not self.running:
                    raise BrokerError(
                        f"{wait_for.username!r} cannot connect after reload\n{self._diagnostics()}"
                    )
                time.sleep(0.05)

    def reloads(self) -> int:
        """How many reloads mosquitto has logged: to wait for a SIGHUP sent by someone else
        (e.g. `hazardwatch gateway add --reload-pid`)."""
        return self._log_text().count(_RELOAD_LOG_LINE)

    # -- diagnostics

    def log_tail(self, lines: int = 40) -> str:
        text = self._log_text().splitlines()[-lines:]
        err = (
            self._stderr_path.read_text(errors="replace").splitlines()[-lines:]
            if self._stderr_path.exists()
            else []
        )
        return "\n".join(text + (["--- stderr ---", *err] if err else []))

    # -- internals

    def _spawn(self, plugin: Path) -> None:
        run_as = pwd.getpwuid(os.geteuid()).pw_name if os.geteuid() == 0 else None
        self.conf_path.write_text(
            render_config(
                CONF_TEMPLATE.read_text(),
                port=self.port,
                host=self.host,
                data_dir=self.data_dir,
                password_file=self.passwd_path,
                acl_file=self.acl_path,
                plugin=plugin,
                log_file=self.log_path,
                run_as=run_as,
                tls_port=self.tls_port if self.tls else None,
                tls=self.tls,
            )
            # plugin options follow the (only) plugin line, so appending is enough
            + (f"plugin_opt_partitions {self.partitions}\n" if self.partitions else "")
        )
        with open(self._stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C aimed at pytest must not hit the broker first
            )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if not self.running:
                code = self._proc.returncode if self._proc else None
                raise BrokerError(
                    f"mosquitto exited with code {code} during startup\n{self._diagnostics()}"
                )
            rc = connack_code(self.host, self.port, self.collector, timeout=1.0)
            if rc == 0:
                return
            if rc is not None:
                # Refused: ours, or another process on this port while ours is failing to
                # bind. Let a failing broker exit so the error names the real cause.
                with_grace = time.monotonic() + 1.0
                while self.running and time.monotonic() < with_grace:
                    time.sleep(0.05)
                if self.running:
                    raise BrokerError(
                        f"mosquitto refused the collector (CONNACK {rc})\n{self._diagnostics()}"
                    )
                continue
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"mosquitto did not accept connections within {START_TIMEOUT_S:.0f} s\n{self._diagnostics()}"
                )
            time.sleep(0.02)

    def _terminate(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
            raise BrokerError(
                f"mosquitto ignored {sig.name} and was killed\n{self.log_tail()}"
            ) from None

    def _passwd(self, creds: Credentials, create: bool = False) -> None:
        args = [
            "mosquitto_passwd",
            *(["-c"] if create else []),
            "-b",
            str(self.passwd_path),
            creds.username,
            creds.password,
        ]
        self._run(args)

    def _run(self, args: Sequence[str]) -> None:
        result = subprocess.run(list(args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise BrokerError(
                f"{args[0]} failed (exit {result.returncode}): {result.stderr}{result.stdout}"
            )

    def _write_acl(self) -> None:
        # mosquitto never reads a half-written file
        product.write_atomic(self.acl_path, product.render_acl(ACL_TEMPLATE.read_text(),
                                                               self._acl_blocks), 0o600)

    def _log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _diagnostics(self) -> str:
        return f"config: {self.conf_path}\n--- log tail ({self.log_path}) ---\n{self.log_tail()}"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def project_broker() -> Iterator[Mosquitto]:
    """A broker shared by the whole session. Do not stop or restart it; use unique
    gateway ids (and client ids) per test."""
    broker = Mosquitto()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()


@pytest.fixture
def fresh_broker() -> Iterator[Mosquitto]:
    """A broker of one's own, free to stop, kill and restart."""
    broker = Mosquitto()
    try:
        broker.start()
        yield broker
    finally:
        broker.close()
