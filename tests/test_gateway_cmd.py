"""`hazardwatch gateway add|list|remove` against a real mosquitto, PostgreSQL and `serve`.

The broker's password and ACL files here are written only by the command (run as a user
would, in a subprocess), so these tests prove the product's files: anonymous clients are
refused, issued credentials work, a gateway cannot publish as another one, a tag of
another enterprise is refused with its reason, a revoked gateway cannot log in, and the
TLS listener works with verification. "Never reaches the database" is checked after a
later message of the same client has been stored: one connection's messages are handled
in order, so once the later one is in, the dropped one never will be.
"""

from __future__ import annotations

import os
import shutil
import ssl
import stat
import subprocess
import threading
import time
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from brokers import ACL_TEMPLATE, DEPLOY_DIR, Credentials, Mosquitto, TlsFiles, connack_code
from dbutil import fresh_database
from harness import HAZARDWATCH, Serve, wait_for

from hazardwatch.gateways import gateway_acl_lines, passwd_users, render_acl

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

ENT_A, ENT_B = "91370105MA3C0GW0A8", "91370105MA3C0GW0BB"
UNREGISTERED_ENT = "91370105MA3C0GW0CE"  # a valid code the registry does not hold
DEV_CERTS = DEPLOY_DIR / "dev-certs.sh"
ENTRYPOINT = DEPLOY_DIR / "entrypoint.sh"
NOT_AUTHORIZED = 135
REGISTRY = f"""
regions:
  - {{code: "370105", name: 天桥区}}
enterprises:
  - code: {ENT_A}
    name: 网关测试一厂
    region: "370105"
    gateways: [{{id: gw-a}}, {{id: gw-a2}}, {{id: gw-r}}]
    sites:
      - id: S1
        name: 罐区
        kind: major_hazard
        grade: 2
        sensors:
          - {{tag: A1.LT, kind: level, unit: m, range: [0, 20], interval_s: 10, gateway: gw-a}}
          - {{tag: A2.LT, kind: level, unit: m, range: [0, 20], interval_s: 10, gateway: gw-a2}}
  - code: {ENT_B}
    name: 网关测试二厂
    region: "370105"
    gateways: [{{id: gw-b}}]
    sites:
      - id: S9
        name: 罐区九
        kind: major_hazard
        grade: 3
        sensors:
          - {{tag: B1.LT, kind: level, unit: m, range: [0, 20], interval_s: 10, gateway: gw-b}}
"""


def cli(args: list[str], *, dsn: str | None = None, stdin: str | None = None, cwd: Path,
        check: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HW_")}
    if dsn:
        env["HW_DATABASE_URL"] = dsn
    res = subprocess.run([HAZARDWATCH, *args], env=env, cwd=cwd, input=stdin, text=True,
                         capture_output=True, timeout=60, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"hazardwatch {' '.join(args)} failed ({res.returncode}):\n"
                             f"{res.stdout}{res.stderr}")
    return res


def file_args(broker: Mosquitto) -> list[str]:
    return ["--password-file", str(broker.passwd_path), "--acl-file", str(broker.acl_path)]


def issue(broker: Mosquitto, ent: str, gw: str, *, dsn: str | None, cwd: Path,
          extra: tuple[str, ...] = ()) -> Credentials:
    """`gateway add --json --reload-pid`, then wait until the broker has reloaded."""
    before = broker.reloads()
    args = ["gateway", "add", ent, gw, "--json", *file_args(broker),
            "--reload-pid", str(broker.pid), *extra]
    if dsn is None:
        args.append("--skip-registry")
    out = orjson.loads(cli(args, dsn=dsn, cwd=cwd).stdout)
    wait_for(lambda: broker.reloads() > before, what="broker reload after gateway add")
    return Credentials(out["username"], out["password"])


class Client:
    """A gateway's paho MQTT v5 client that keeps each PUBACK's reason code."""

    def __init__(self, broker: Mosquitto, creds: Credentials | None, *, port: int | None = None,
                 tls_ca: Path | None = None) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                             client_id=f"gwcmd-{time.monotonic_ns()}")
        if creds is not None:
            self.c.username_pw_set(creds.username, creds.password)
        if tls_ca is not None:
            self.c.tls_set(ca_certs=str(tls_ca))  # verifies the chain and the host name
        self.acks: dict[int, int] = {}
        self.connacked = threading.Event()
        self.reason = None
        self.c.on_connect = self._on_connect
        self.c.on_publish = lambda c, u, mid, rc, p: self.acks.__setitem__(mid, rc.value)
        self.c.connect(broker.host, port or broker.port)
        self.c.loop_start()
        assert self.connacked.wait(10), "no CONNACK"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.reason = reason_code
        self.connacked.set()

    def publish(self, topic: str, payload: bytes) -> int:
        info = self.c.publish(topic, payload, qos=1)
        info.wait_for_publish(10)
        assert info.is_published(), f"no PUBACK for {topic}"
        return self.acks[info.mid]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def readings(dsn: str, tag: str, ts_ms: int) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT r.value, r.quality FROM readings r JOIN sensors s ON s.id = r.sensor_id "
            "WHERE s.tag = %s AND r.ts = to_timestamp(%s / 1000.0)", (tag, ts_ms)).fetchall()


def dead_letters(dsn: str, topic: str) -> list[tuple]:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT reason, errors, accepted, rejected FROM dead_letters "
                            "WHERE topic = %s ORDER BY id", (topic,)).fetchall()


def now_ms() -> int:
    return int(time.time() * 1000)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A registry, a broker whose gateway entries come only from the command, and `serve`."""
    tmp = tmp_path_factory.mktemp("gwcmd")
    (tmp / "registry.yaml").write_text(REGISTRY, encoding="utf-8")
    with fresh_database("hw_test_gwcmd") as dsn, Mosquitto() as broker:
        cli(["registry", "import", str(tmp / "registry.yaml")], dsn=dsn, cwd=tmp)
        gw_a = issue(broker, ENT_A, "gw-a", dsn=dsn, cwd=tmp)
        serve = Serve(dsn, broker, tmp, HW_MQTT__CLIENT_ID="hw-ingest-gwcmd").start()
        try:
            yield dsn, broker, tmp, gw_a, serve
        finally:
            serve.stop()


def test_files_hold_only_the_issued_entries_with_private_modes(site):
    dsn, broker, tmp, gw_a, _ = site
    users = passwd_users(broker.passwd_path.read_text())
    assert set(users) == {"hw-collector", gw_a.username}   # the collector's entry was kept
    assert users[gw_a.username].startswith("$7$101$")
    assert gw_a.password not in broker.passwd_path.read_text()
    # mosquitto_passwd made the file 0644 for tests/brokers.py; the command tightened it
    assert stat.S_IMODE(broker.passwd_path.stat().st_mode) == 0o600
    gateways_file = broker.acl_path.parent / "gateways.acl"
    assert stat.S_IMODE(gateways_file.stat().st_mode) == 0o640       # new file
    assert stat.S_IMODE(broker.acl_path.stat().st_mode) & 0o007 == 0
    expected = render_acl(ACL_TEMPLATE.read_text(),
                          {gw_a.username: gateway_acl_lines(ENT_A, "gw-a")})
    assert broker.acl_path.read_text() == expected
    with psycopg.connect(dsn) as conn:
        row, issued, recent = conn.execute(
            "SELECT to_jsonb(g)::text, credentials_issued_at IS NOT NULL, "
            "credentials_issued_at > now() - interval '1 hour' FROM gateways g "
            "WHERE username = %s", (gw_a.username,)).fetchone()
    assert issued and recent  # the registry records that (and when) credentials were issued
    # but no copy of the hash: a database backup must not allow offline guessing
    salt_and_digest = users[gw_a.username].split("$")[3:]
    assert len(salt_and_digest) == 2 and not any(part in row for part in salt_and_digest), row
    assert "$7$" not in row


def test_anonymous_and_wrong_password_are_refused(site):
    _, broker, _, gw_a, _ = site
    anonymous = Client(broker, None)
    try:
        assert anonymous.reason.is_failure, anonymous.reason
    finally:
        anonymous.close()
    assert connack_code(broker.host, broker.port, Credentials(gw_a.username, "not-the-password")) == 5
    assert connack_code(broker.host, broker.port, gw_a) == 0


def test_issued_credentials_publish_readings_that_reach_the_database(site):
    dsn, broker, _, gw_a, _ = site
    ts = now_ms()
    client = Client(broker, gw_a)
    try:
        assert client.publish(f"hw/v1/{ENT_A}/gw-a/readings",
                              orjson.dumps({"ts": ts, "values": {"A1.LT": 4.25}})) == 0
    finally:
        client.close()
    assert wait_for(lambda: readings(dsn, "A1.LT", ts), what="A1.LT stored") == [(4.25, 0)]


def test_gateway_cannot_publish_under_another_gateways_topic(site):
    dsn, broker, _, gw_a, _ = site
    ts = now_ms()
    foreign = {f"hw/v1/{ENT_B}/gw-b/readings": {"B1.LT": 1.5},     # another enterprise
               f"hw/v1/{ENT_A}/gw-a2/readings": {"A2.LT": 2.5}}    # a sibling gateway
    client = Client(broker, gw_a)
    try:
        for topic, values in foreign.items():
            code = client.publish(topic, orjson.dumps({"ts": ts, "values": values}))
            assert code == NOT_AUTHORIZED, (topic, code)
        client.publish(f"hw/v1/{ENT_A}/gw-a/readings", orjson.dumps({"ts": ts, "values": {"A1.LT": 3.0}}))
    finally:
        client.close()
    wait_for(lambda: readings(dsn, "A1.LT", ts), what="gw-a's own later reading stored")
    # Both tags are registered: had the broker let either message through, ingest would
    # have stored it (B1.LT under gw-b's identity, A2.LT from its own enterprise).
    assert readings(dsn, "B1.LT", ts) == []
    assert readings(dsn, "A2.LT", ts) == []
    for topic in foreign:
        assert dead_letters(dsn, topic) == []


def test_tag_of_another_enterprise_is_refused_with_its_reason(site):
    dsn, broker, _, gw_a, _ = site
    ts = now_ms()
    topic = f"hw/v1/{ENT_A}/gw-a/readings"
    client = Client(broker, gw_a)
    try:
        assert client.publish(topic, orjson.dumps({"ts": ts, "values": {"B1.LT": 7.0, "A1.LT": 8.0}})) == 0
    finally:
        client.close()
    assert wait_for(lambda: readings(dsn, "A1.LT", ts), what="the good neighbour") == [(8.0, 0)]
    assert readings(dsn, "B1.LT", ts) == []
    letters = wait_for(lambda: [d for d in dead_letters(dsn, topic) if d[0] == "foreign_tag"],
                       what="foreign_tag dead letter")
    reason, errors, accepted, rejected = letters[-1]
    assert (accepted, rejected) == (1, 1)
    assert errors == [{"reason": "foreign_tag", "tag": "B1.LT",
                       "detail": f"tag is registered to enterprise {ENT_B}, not {ENT_A}"}]


def test_rotate_list_and_revoke(site):
    dsn, broker, tmp, _, _ = site
    first = issue(broker, ENT_A, "gw-r", dsn=dsn, cwd=tmp)
    assert connack_code(broker.host, broker.port, first) == 0
    second = issue(broker, ENT_A, "gw-r", dsn=dsn, cwd=tmp)           # add again = rotate
    assert second.password != first.password
    assert connack_code(broker.host, broker.port, first) == 5
    assert connack_code(broker.host, broker.port, second) == 0

    listed = cli(["gateway", "list", *file_args(broker)], dsn=dsn, cwd=tmp).stdout
    rows = {line.split()[0]: line.split()[1:] for line in listed.splitlines()[1:]}
    assert rows[second.username] == ["yes", "yes", "yes"]
    assert rows[f"{ENT_A}/gw-a2"] == ["no", "no", "yes"]    # registered, never issued

    before = broker.reloads()
    out = cli(["gateway", "revoke", ENT_A, "gw-r", *file_args(broker),
               "--reload-pid", str(broker.pid)], dsn=dsn, cwd=tmp)
    assert "revoked" in out.stdout
    wait_for(lambda: broker.reloads() > before, what="reload after revoke")
    assert connack_code(broker.host, broker.port, second) == 5
    assert second.username not in passwd_users(broker.passwd_path.read_text())
    assert f"user {second.username}" not in broker.acl_path.read_text()
    assert f"user {ENT_A}/gw-a\n" in broker.acl_path.read_text()      # the others stay
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT credentials_issued_at FROM gateways WHERE username = %s",
                            (second.username,)).fetchone() == (None,)


def test_refusals_change_nothing_and_name_the_problem(site):
    dsn, broker, tmp, _, _ = site
    before = (broker.passwd_path.read_bytes(), broker.acl_path.read_bytes())
    cases = [
        ([UNREGISTERED_ENT, "gw-x"], "is not in the registry"),
        (["91370105MA3C0GW0A9", "gw-x"], "enterprise: 91370105MA3C0GW0A9 has check character 9"),
        ([ENT_A, "gw/x"], "gateway: 'gw/x' must be"),
        ([ENT_A, "gw-undeclared", "--no-register"], "is not declared for enterprise"),
    ]
    for args, message in cases:
        res = cli(["gateway", "add", *args, *file_args(broker), "--no-reload"], dsn=dsn, cwd=tmp,
                  check=False)
        assert res.returncode == 1, res
        assert message in res.stderr, res.stderr
    res = cli(["gateway", "add", ENT_A, "gw-y", "--password-stdin", *file_args(broker),
               "--no-reload"], dsn=dsn, cwd=tmp, stdin="short\n", check=False)
    assert res.returncode == 1 and "password: at least 12 characters" in res.stderr
    assert (broker.passwd_path.read_bytes(), broker.acl_path.read_bytes()) == before


def test_undeclared_gateway_is_registered_and_its_data_stored(site):
    dsn, broker, tmp, _, _ = site
    res = cli(["gateway", "add", ENT_B, "gw-new", "--password-stdin", "--json", *file_args(broker),
               "--reload-pid", str(broker.pid)], dsn=dsn, cwd=tmp,
              stdin="a-long-given-password\n")
    assert orjson.loads(res.stdout)["password"] is None          # a given password is not echoed
    assert "added to enterprise" in res.stderr
    creds = Credentials(f"{ENT_B}/gw-new", "a-long-given-password")
    wait_for(lambda: connack_code(broker.host, broker.port, creds) == 0, what="gw-new can connect")
    # ingest accepts a tag from any gateway of its own enterprise once it knows the gateway:
    # the collector re-reads the registry on a timer (0.5 s here), so until then a message
    # is refused as unknown_gateway; send one a second until one is stored.
    client = Client(broker, creds)
    try:
        deadline = time.monotonic() + 20
        while True:
            ts = now_ms()
            client.publish(f"hw/v1/{ENT_B}/gw-new/readings",
                           orjson.dumps({"ts": ts, "values": {"B1.LT": 6.5}}))
            try:
                rows = wait_for(lambda t=ts: readings(dsn, "B1.LT", t), timeout=1.0, what="B1.LT")
                break
            except TimeoutError:
                assert time.monotonic() < deadline, "no reading of gw-new stored in 20 s"
    finally:
        client.close()
    assert rows == [(6.5, 0)]


# ---------------------------------------------------------------------------- TLS


def make_certs(directory: Path, *names: str) -> None:
    subprocess.run(["sh", str(DEV_CERTS), str(directory), *names], check=True,
                   capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed (deploy/mosquitto/dev-certs.sh needs it)")
    certs = tmp_path_factory.mktemp("certs")
    make_certs(certs, "localhost", "127.0.0.1")
    with Mosquitto(tls=TlsFiles(certs / "server.crt", certs / "server.key")) as broker:
        yield broker, certs


def test_gateway_publishes_over_tls_with_verification(tls_broker, tmp_path):
    broker, certs = tls_broker
    creds = issue(broker, ENT_A, "gw-tls", dsn=None, cwd=tmp_path)
    collector = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5,
                            client_id="gwcmd-collector")
    collector.username_pw_set(broker.collector.username, broker.collector.password)
    got: list[bytes] = []
    subscribed = threading.Event()
    collector.on_message = lambda c, u, m: got.append(bytes(m.payload))
    collector.on_subscribe = lambda c, u, mid, rc, p: subscribed.set()
    collector.on_connect = lambda c, u, f, rc, p: c.subscribe("hw/v1/#", qos=1)
    collector.connect(broker.host, broker.port)     # plain, as inside the docker network
    collector.loop_start()
    try:
        assert subscribed.wait(10)
        client = Client(broker, creds, port=broker.tls_port, tls_ca=certs / "ca.crt")
        try:
            assert not client.reason.is_failure, client.reason
            assert client.c.socket().version() in ("TLSv1.2", "TLSv1.3")
            assert client.publish(f"hw/v1/{ENT_A}/gw-tls/readings", b'{"ts": 1, "values": {}}') == 0
        finally:
            client.close()
        wait_for(lambda: got, what="the TLS message at the collector")
        assert got == [b'{"ts": 1, "values": {}}']
    finally:
        collector.disconnect()
        collector.loop_stop()


def test_tls_port_refuses_plain_mqtt_and_unverified_brokers(tls_broker, tmp_path):
    broker, certs = tls_broker
    creds = issue(broker, ENT_A, "gw-tls2", dsn=None, cwd=tmp_path)
    assert connack_code(broker.host, broker.tls_port, creds) is None   # no MQTT without TLS
    assert connack_code(broker.host, broker.port, creds) == 0         # same credentials, plain port
    other_ca = tmp_path / "other"
    make_certs(other_ca, "localhost", "127.0.0.1")
    with pytest.raises(ssl.SSLCertVerificationError):
        Client(broker, creds, port=broker.tls_port, tls_ca=other_ca / "ca.crt")
    wrong_name = tmp_path / "wrong-name"
    make_certs(wrong_name, "broker.example")    # signed by its own CA, for another host name
    with (Mosquitto(tls=TlsFiles(wrong_name / "server.crt", wrong_name / "server.key")) as b2,
          pytest.raises(ssl.SSLCertVerificationError, match="match|mismatch")):
        Client(b2, None, port=b2.tls_port, tls_ca=wrong_name / "ca.crt")


# ---------------------------------------------------------------------------- docker entrypoint


def test_docker_entrypoint_rebuilds_the_same_acl_and_makes_dev_certs(tmp_path):
    """deploy/mosquitto/entrypoint.sh (the image's) yields byte for byte the ACL the command
    wrote, keeps the gateways' passwords and makes verifiable development certificates."""
    if shutil.which("openssl") is None or shutil.which("mosquitto_passwd") is None:
        pytest.skip("openssl and mosquitto_passwd are needed to run the entrypoint")
    config, data, certs = tmp_path / "config", tmp_path / "data", tmp_path / "certs"
    config.mkdir()
    data.mkdir()
    shutil.copy(ACL_TEMPLATE, config / "acl")
    for gw in ("gw-1", "gw-2"):
        cli(["gateway", "add", ENT_A, gw, "--skip-registry", "--no-reload",
             "--password-file", str(data / "passwd"), "--acl-file", str(data / "acl"),
             "--acl-template", str(config / "acl")], cwd=tmp_path)
    written = (data / "acl").read_text()
    gateway_hashes = passwd_users((data / "passwd").read_text())
    (data / "acl").unlink()
    env = {**os.environ, "HW_MOSQUITTO_CONFIG": str(config), "HW_MOSQUITTO_DATA": str(data),
           "HW_MOSQUITTO_CERTS": str(certs), "HW_MQTT_COLLECTOR_PASSWORD": "collector-pw",
           "HW_NEXT_ENTRYPOINT": "echo", "HW_MQTT_TLS_NAMES": "broker.example 10.0.0.7"}
    res = subprocess.run(["sh", str(ENTRYPOINT), "next", "args"], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    assert res.stdout == "next args\n"                     # handed over with CMD's arguments
    assert (data / "acl").read_text() == written
    users = passwd_users((data / "passwd").read_text())
    assert set(users) == {*gateway_hashes, "hw-collector"}
    assert all(users[u] == h for u, h in gateway_hashes.items())
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(certs / "ca.crt"),
                             str(certs / "server.crt")], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(certs / "server.crt"), "-noout", "-text"],
                          capture_output=True, text=True, check=True).stdout
    for name in ("DNS:localhost", "IP Address:127.0.0.1", "DNS:mosquitto", "DNS:broker.example",
                 "IP Address:10.0.0.7"):
        assert name in text
