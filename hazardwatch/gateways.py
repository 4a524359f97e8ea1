"""Gateway credentials on the broker: `hazardwatch gateway add | list | remove`.

mosquitto authenticates each gateway as `<enterprise code>/<gateway id>` against its
password file and lets it publish only under its own topics through its ACL file
(deploy/mosquitto/acl explains the rules). Both files are state the broker re-reads on
SIGHUP, so this module maintains them in place:

- password file: one `username:$7$...` line per user (PBKDF2-SHA512, the format mosquitto
  2.0's own mosquitto_passwd writes); other users' lines are kept as they are;
- gateways file (`gateways.acl`): only the per-gateway ACL blocks, the source of truth
  the docker entrypoint also appends at start;
- ACL file: the committed template followed by those blocks, what the broker reads.

Every file is replaced atomically (temporary file + rename, keeping an existing file's
owner and mode), under a lock, so the broker never reads half a file and two operators
cannot lose each other's gateways.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import os
import re
import secrets
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

# The last line of deploy/mosquitto/acl: generated blocks follow it.
BLOCKS_MARKER = "# --- generated per-gateway blocks follow ---"
# mosquitto_passwd (2.0) writes PBKDF2-SHA512 with 101 iterations, a 12-byte salt and a
# 64-byte hash. The broker runs the hash on every CONNECT, so the count stays low; what
# protects a gateway is a long random password (MIN_PASSWORD_LENGTH, 192-bit generated).
PBKDF2_ITERATIONS = 101
SALT_BYTES = 12
MIN_PASSWORD_LENGTH = 12
GENERATED_PASSWORD_BYTES = 24  # secrets.token_urlsafe: 32 characters, 192 bits
_FORBIDDEN_IN_IDENTITY = "/+#: \t\r\n\x00"


class GatewayError(Exception):
    """A refused request; the message says what and why, for the operator."""


# ---------------------------------------------------------------------------- identity & ACL


def gateway_username(enterprise: str, gateway: str) -> str:
    """The MQTT username of a gateway, also its topic prefix below hw/v1/.

    Only what the broker needs is checked here ('/' separates the two parts; '+' and '#'
    are wildcards; ':' ends a password-file username); `validate_ids` adds the registry's
    rules for the command line.
    """
    for part, value in (("enterprise", enterprise), ("gateway", gateway)):
        if not value or any(c in value for c in _FORBIDDEN_IN_IDENTITY):
            raise ValueError(f"invalid {part} {value!r}: no '/', '+', '#', ':' or whitespace")
    return f"{enterprise}/{gateway}"


def gateway_acl_lines(enterprise: str, gateway: str) -> list[str]:
    """The `topic` lines of one gateway's ACL block: write under its own identity only."""
    identity = gateway_username(enterprise, gateway)
    return [
        f"topic write hw/v1/{identity}/#",
        f"topic write tb/{identity}/v1/gateway/#",
        f"topic write tb/{identity}/v1/devices/me/#",
    ]


def render_blocks(blocks: Mapping[str, Sequence[str]]) -> str:
    """Per-user ACL blocks as mosquitto reads them (`user` line, then its `topic` lines)."""
    out: list[str] = []
    for username, lines in blocks.items():
        out += [f"user {username}", *lines, ""]
    return "\n".join(out)


def render_acl(template: str, blocks: Mapping[str, Sequence[str]]) -> str:
    """The effective ACL file: the committed template, then one block per user."""
    if BLOCKS_MARKER not in template:
        raise GatewayError(f"the ACL template does not contain the line {BLOCKS_MARKER!r}; "
                           "it is not deploy/mosquitto/acl")
    return template.rstrip("\n") + "\n\n" + render_blocks(blocks)


def parse_blocks(text: str, source: str = "gateways.acl") -> dict[str, list[str]]:
    """Read a blocks file back; anything that is not a `user` or `topic` line is refused
    (with its line number) rather than dropped on the next rewrite."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, rest = line.partition(" ")
        if key == "user" and rest.strip():
            current = blocks.setdefault(rest.strip(), [])
        elif key == "topic" and current is not None:
            current.append(line)
        else:
            raise GatewayError(f"{source} line {number}: expected `user NAME` or, after it, "
                               f"`topic ...`; got {raw!r}")
    return blocks


# ---------------------------------------------------------------------------- password file


def hash_password(password: str, *, salt: bytes | None = None,
                  iterations: int = PBKDF2_ITERATIONS) -> str:
    """mosquitto 2.0's `$7$` password hash: `$7$<iterations>$<salt b64>$<sha512 b64>`."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def passwd_users(text: str) -> dict[str, str]:
    """username -> hash of every entry in a mosquitto password file."""
    users = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#") and ":" in line:
            name, _, encoded = line.partition(":")
            users[name] = encoded
    return users


def _passwd_with(text: str, username: str, encoded: str | None) -> str:
    """The password file with `username`'s line replaced (or removed when encoded is None);
    every other line, comments included, stays as it was."""
    out, done = [], False
    for line in text.splitlines():
        if line.partition(":")[0] == username and not line.startswith("#"):
            if encoded is not None and not done:
                out.append(f"{username}:{encoded}")
                done = True
            continue
        out.append(line)
    if encoded is not None and not done:
        out.append(f"{username}:{encoded}")
    return "\n".join(out) + "\n" if out else ""


# ---------------------------------------------------------------------------- files


@dataclass(frozen=True)
class BrokerFiles:
    password_file: Path
    acl_file: Path
    gateways_file: Path
    template: Path

    @classmethod
    def resolve(cls, password_file: Path, acl_file: Path, gateways_file: Path | None = None,
                template: Path | None = None) -> BrokerFiles:
        """Defaults: gateways.acl beside the ACL file; the template installed with hazardwatch."""
        from hazardwatch.resources import acl_template

        return cls(password_file, acl_file, gateways_file or acl_file.parent / "gateways.acl",
                   template or acl_template())


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace `path` in one rename. An existing file keeps its owner and group (in docker
    the broker's files belong to the mosquitto user) and its mode, but never more than
    `mode` allows: a world-readable password file is tightened."""
    try:
        st = path.stat()
    except FileNotFoundError:
        st = None
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, (st.st_mode & mode) if st else mode)
        if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
            with contextlib.suppress(PermissionError):  # not root: the file stays ours
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def _locked(files: BrokerFiles) -> Iterator[None]:
    """One writer at a time (a lock file beside the gateways file)."""
    for path in (files.password_file, files.acl_file, files.gateways_file):
        if not path.parent.is_dir():
            raise GatewayError(f"{path.parent} does not exist (for {path.name})")
    lock = files.gateways_file.with_name(f".{files.gateways_file.name}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_acls(files: BrokerFiles, blocks: Mapping[str, Sequence[str]]) -> None:
    try:
        template = files.template.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GatewayError(f"ACL template {files.template} not found") from None
    acl = render_acl(template, blocks)  # before writing anything: a bad template changes nothing
    write_atomic(files.gateways_file, render_blocks(blocks), 0o640)
    write_atomic(files.acl_file, acl, 0o640)


def add(files: BrokerFiles, enterprise: str, gateway: str, password_hash: str) -> str:
    """Create or rotate a gateway's credentials (a `hash_password` result) and ACL block;
    returns its username."""
    username = gateway_username(enterprise, gateway)
    with _locked(files):
        blocks = parse_blocks(_read(files.gateways_file), str(files.gateways_file))
        blocks[username] = gateway_acl_lines(enterprise, gateway)
        passwd = _passwd_with(_read(files.password_file), username, password_hash)
        # ACL first: a gateway with a password but no ACL block could connect and be
        # refused every publish; the other way round it simply cannot connect yet.
        _write_acls(files, blocks)
        write_atomic(files.password_file, passwd, 0o600)
    return username


def remove(files: BrokerFiles, enterprise: str, gateway: str) -> bool:
    """Revoke: drop the password entry first (no more logins), then the ACL block.
    False when the gateway had neither."""
    username = gateway_username(enterprise, gateway)
    with _locked(files):
        text = _read(files.password_file)
        blocks = parse_blocks(_read(files.gateways_file), str(files.gateways_file))
        had_password = username in passwd_users(text)
        had_block = blocks.pop(username, None) is not None
        if had_password:
            write_atomic(files.password_file, _passwd_with(text, username, None), 0o600)
        if had_block:
            _write_acls(files, blocks)
    return had_password or had_block


@dataclass(frozen=True)
class Listed:
    username: str
    password: bool
    acl: bool


def listing(files: BrokerFiles) -> list[Listed]:
    """Every gateway-shaped user (`<enterprise>/<gateway>`) in the password or gateways file."""
    users = passwd_users(_read(files.password_file))
    blocks = parse_blocks(_read(files.gateways_file), str(files.gateways_file))
    names = sorted(n for n in users.keys() | blocks.keys() if "/" in n)
    return [Listed(n, n in users, n in blocks) for n in names]


# ---------------------------------------------------------------------------- checks


def validate_ids(enterprise: str, gateway: str) -> None:
    """The registry's rules: a valid 统一社会信用代码 and a gateway id fit for a topic."""
    from hazardwatch.registry import GATEWAY_ID, credit_code_problem

    problem = credit_code_problem(enterprise)
    if problem:
        raise GatewayError(f"enterprise: {problem}")
    if not GATEWAY_ID.match(gateway):
        raise GatewayError(f"gateway: {gateway!r} must be 1-64 characters of letters, digits, "
                           "'_', '.', '-' starting with a letter or digit")


def new_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise GatewayError(f"password: at least {MIN_PASSWORD_LENGTH} characters "
                           f"(got {len(password)}); omit --password-stdin to have one generated")
    if re.search(r"[\x00-\x1f\x7f]", password):
        raise GatewayError("password: control characters (newline, tab, ...) are not allowed")


@dataclass(frozen=True)
class RegistryState:
    created: bool      # the gateway was not declared in the registry; this call added it


def in_registry(dsn: str, enterprise: str, gateway: str, write_files: Callable[[], object], *,
                register: bool) -> RegistryState:
    """Check the registry, record the issue time, and write the broker files.

    Order: the registry change runs in a transaction, the broker files are written inside
    it, then it commits. A refused enterprise or a failed file write changes nothing; a
    commit that fails after the files were written (the database went away) leaves working
    credentials that `gateway list` does not show as issued, and the command fails, so
    running it again rotates them. No hash is stored here: the broker's password file is
    its only home (a copy in the database would end up in its backups).

    The enterprise must be in the registry. A gateway not declared there is added (ingest
    would refuse its data as unknown_gateway otherwise) unless register is False."""
    from hazardwatch.db import connect_sync

    username = gateway_username(enterprise, gateway)
    with connect_sync(dsn) as conn, conn.transaction():
        row = conn.execute("SELECT id FROM enterprises WHERE code = %s", (enterprise,)).fetchone()
        if row is None:
            raise GatewayError(f"enterprise {enterprise} is not in the registry; import it first "
                               "(hazardwatch registry import FILE) or pass --skip-registry")
        found = conn.execute(
            "UPDATE gateways SET credentials_issued_at = now() WHERE enterprise_id = %s "
            "AND code = %s RETURNING id", (row[0], gateway)).fetchone()
        if found is None and not register:
            raise GatewayError(f"gateway {gateway} is not declared for enterprise {enterprise} "
                               "in the registry (add it to the registry YAML, or drop --no-register)")
        if found is None:
            conn.execute("INSERT INTO gateways (enterprise_id, code, username, "
                         "credentials_issued_at) VALUES (%s, %s, %s, now())",
                         (row[0], gateway, username))
        write_files()
    return RegistryState(created=found is None)


def clear_registered_hash(dsn: str, enterprise: str, gateway: str) -> None:
    """Record that the gateway's credentials were revoked."""
    from hazardwatch.db import connect_sync

    with connect_sync(dsn) as conn:
        conn.execute("UPDATE gateways g SET credentials_issued_at = NULL FROM enterprises e "
                     "WHERE g.enterprise_id = e.id AND e.code = %s AND g.code = %s",
                     (enterprise, gateway))


def registered_usernames(dsn: str) -> dict[str, bool]:
    """username -> whether credentials were issued, for every gateway in the registry."""
    from hazardwatch.db import connect_sync

    with connect_sync(dsn) as conn:
        return {u: issued is not None for u, issued in conn.execute(
            "SELECT username, credentials_issued_at FROM gateways ORDER BY username")}


# ---------------------------------------------------------------------------- reload


def reload_broker(pid: int) -> None:
    """SIGHUP makes mosquitto re-read its password and ACL files. Refuses a process that
    is not mosquitto (when /proc says what it is)."""
    comm = Path(f"/proc/{pid}/comm")
    try:
        name = comm.read_text().strip()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            raise GatewayError(f"no process {pid}") from None
        name = None
    if name is not None and not name.startswith("mosquitto"):
        raise GatewayError(f"process {pid} is {name!r}, not mosquitto; not signalled")
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise GatewayError(f"no process {pid}") from None
    except PermissionError:
        raise GatewayError(f"not allowed to signal process {pid}") from None


def pid_from_file(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    if not text.isdigit():
        raise GatewayError(f"{path}: expected a process id, got {text[:40]!r}")
    return int(text)


# ---------------------------------------------------------------------------- command line

_FILE_OPTIONS = (
    click.option("--password-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="mosquitto password_file (default: broker.password_file)"),
    click.option("--acl-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="mosquitto acl_file, rewritten whole (default: broker.acl_file)"),
    click.option("--gateways-file", type=click.Path(dir_okay=False, path_type=Path),
                 help="the per-gateway ACL blocks (default: gateways.acl beside the ACL file)"),
    click.option("--acl-template", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="ACL template (default: deploy/mosquitto/acl installed with hazardwatch)"),
)
_RELOAD_OPTIONS = (
    click.option("--reload-pid", type=int, help="send SIGHUP to this mosquitto process"),
    click.option("--no-reload", is_flag=True, help="do not signal the broker (not even broker.pid_file)"),
)
_REGISTRY_OPTION = click.option(
    "--skip-registry", is_flag=True,
    help="do not consult the registry database (e.g. on a broker host without it)")


def _with(options):
    def decorate(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return decorate


def _files(settings, password_file, acl_file, gateways_file, acl_template) -> BrokerFiles:
    b = settings.broker
    try:
        return BrokerFiles.resolve(password_file or b.password_file, acl_file or b.acl_file,
                                   gateways_file or b.gateways_file, acl_template or b.acl_template)
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc


def _reload(settings, reload_pid: int | None, no_reload: bool) -> None:
    """Apply the change: SIGHUP when told which process, otherwise say how."""
    pid = None
    if not no_reload:
        pid = reload_pid
        if pid is None and settings.broker.pid_file is not None:
            pid = pid_from_file(settings.broker.pid_file)
    if pid is None:
        click.echo("reload the broker to apply: docker compose kill -s HUP mosquitto "
                   "(or kill -HUP <mosquitto pid>)", err=True)
        return
    reload_broker(pid)
    click.echo(f"sent SIGHUP to mosquitto (pid {pid}): it re-reads the password and ACL files",
               err=True)


@click.group("gateway")
def gateway_group() -> None:
    """Gateway credentials and ACLs on the MQTT broker (mosquitto)."""


@gateway_group.command("add")
@click.argument("enterprise")
@click.argument("gateway")
@click.option("--password-stdin", is_flag=True,
              help="read the password from standard input (first line) instead of generating one")
@click.option("--no-register", is_flag=True,
              help="refuse a gateway the registry does not declare instead of adding it")
@click.option("--json", "as_json", is_flag=True, help="print the credentials as JSON")
@_REGISTRY_OPTION
@_with(_FILE_OPTIONS)
@_with(_RELOAD_OPTIONS)
@click.pass_obj
def gateway_add(settings, enterprise: str, gateway: str, password_stdin: bool, no_register: bool,
                as_json: bool, skip_registry: bool, password_file, acl_file, gateways_file,
                acl_template, reload_pid, no_reload) -> None:
    """Issue (or rotate) a gateway's broker credentials: it may then publish under
    hw/v1/ENTERPRISE/GATEWAY/... and the ThingsBoard API topics, and nowhere else.

    A generated password is printed once; only its hash is kept. Adding a gateway again
    rotates its password."""
    import orjson

    files = _files(settings, password_file, acl_file, gateways_file, acl_template)
    try:
        validate_ids(enterprise, gateway)
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
            check_password(password)
        else:
            password = new_password()
        rotated = gateway_username(enterprise, gateway) in passwd_users(_read(files.password_file))
        encoded = hash_password(password)
        if skip_registry:
            username, state = add(files, enterprise, gateway, encoded), None
        else:
            state = in_registry(settings.dsn(), enterprise, gateway,
                                lambda: add(files, enterprise, gateway, encoded),
                                register=not no_register)
            username = gateway_username(enterprise, gateway)
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    shown = None if password_stdin else password
    if as_json:
        click.echo(orjson.dumps({"username": username, "password": shown, "rotated": rotated}))
    else:
        click.echo(f"{'rotated' if rotated else 'issued'} credentials of gateway {gateway} "
                   f"of enterprise {enterprise}")
        click.echo(f"  username  {username}")
        click.echo(f"  password  {shown}  (shown once; only its hash is kept)" if shown else
                   "  password  as given on standard input")
        click.echo(f"  topics    hw/v1/{username}/readings and .../state, or the ThingsBoard "
                   "gateway API (v1/gateway/..., v1/devices/me/...)")
    if state is None:
        click.echo("registry not consulted (--skip-registry)", err=True)
    elif state.created:
        click.echo(f"registry: gateway {gateway} added to enterprise {enterprise}; declare it in "
                   "the registry YAML too", err=True)
    click.echo(f"wrote {files.password_file}, {files.acl_file}, {files.gateways_file}", err=True)
    try:
        _reload(settings, reload_pid, no_reload)
    except GatewayError as exc:
        raise click.ClickException(f"files written, but the broker was not reloaded: {exc}") from exc


@gateway_group.command("remove")
@click.argument("enterprise")
@click.argument("gateway")
@_REGISTRY_OPTION
@_with(_FILE_OPTIONS)
@_with(_RELOAD_OPTIONS)
@click.pass_obj
def gateway_remove(settings, enterprise: str, gateway: str, skip_registry: bool, password_file,
                   acl_file, gateways_file, acl_template, reload_pid, no_reload) -> None:
    """Revoke a gateway's credentials and ACL block (its registry entry and data stay).
    After the reload it cannot connect; a session already open is not cut (restart the
    broker for that)."""
    import psycopg

    files = _files(settings, password_file, acl_file, gateways_file, acl_template)
    try:
        found = remove(files, enterprise, gateway)
    except (GatewayError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    if not found:
        raise click.ClickException(f"gateway {enterprise}/{gateway} has no credentials in "
                                   f"{files.password_file} or {files.gateways_file}")
    click.echo(f"revoked {enterprise}/{gateway}: removed from {files.password_file} and "
               f"{files.acl_file}")
    if not skip_registry:
        try:
            clear_registered_hash(settings.dsn(), enterprise, gateway)
        except psycopg.OperationalError as exc:
            click.echo(f"registry not updated (database unavailable: {exc}); the broker files "
                       "are what counts", err=True)
    try:
        _reload(settings, reload_pid, no_reload)
    except GatewayError as exc:
        raise click.ClickException(f"files written, but the broker was not reloaded: {exc}") from exc


gateway_group.add_command(gateway_remove, "revoke")


@gateway_group.command("list")
@_REGISTRY_OPTION
@_with(_FILE_OPTIONS)
@click.pass_obj
def gateway_list(settings, skip_registry: bool, password_file, acl_file, gateways_file,
                 acl_template) -> None:
    """Gateways with broker credentials, and registered gateways without them."""
    files = _files(settings, password_file, acl_file, gateways_file, acl_template)
    try:
        rows = {r.username: r for r in listing(files)}
    except GatewayError as exc:
        raise click.ClickException(str(exc)) from exc
    registry = {} if skip_registry else registered_usernames(settings.dsn())
    names = sorted(rows.keys() | registry.keys())
    if not names:
        click.echo("no gateways (issue credentials with: hazardwatch gateway add ENTERPRISE GATEWAY)")
        return
    yes = {True: "yes", False: "no"}
    click.echo(f"{'username':<48} {'password':<8} {'acl':<4} registry")
    for name in names:
        r = rows.get(name, Listed(name, False, False))
        reg = "-" if skip_registry else ("no" if name not in registry else "yes")
        click.echo(f"{name:<48} {yes[r.password]:<8} {yes[r.acl]:<4} {reg}")
