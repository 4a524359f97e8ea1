"""Load generator: a synthetic fleet of gateways publishing from several processes.

    fleet = Fleet.synthetic(gateways=40, sensors=50)
    fleet.write_registry(Path("fleet.yaml"))       # `hazardwatch registry import fleet.yaml`
    result = run(fleet, host, port, password, rate=20_000, duration=60, processes=2)
    result.total_rate                               # broker-acknowledged readings/s

Each process owns a slice of the gateways (one MQTT connection each) and paces itself
with a token bucket at rate/processes readings/s, sending 50 readings a message (one
gateway, one timestamp; timestamps strictly increase per gateway, so every reading is a
distinct (sensor, ts) row). A reading counts once the broker acknowledged its message.
`acked` (a shared counter) lets a caller such as a benchmark follow progress live.

The generator is benchmark overhead (real gateways are elsewhere), so it is kept cheap:
one thread per process drives all its gateways' paho clients from a selector (no network
thread per gateway, no locks), payloads are pre-encoded with only the timestamp formatted
in, and messages go out in ~25 ms bursts. `python bench/loadgen_cpu.py` measures its CPU
per reading.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import selectors
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import paho.mqtt.client as mqtt

from hazardwatch.registry import credit_code_check_character
from simulators.mqttout import PER_MESSAGE, PublishError, readings_topic, state_topic

REGION = "370105"  # 天桥区, 济南市
GATEWAYS_PER_ENTERPRISE = 10


def credit_code(n: int, prefix: str = "91370105MA") -> str:
    """The n-th synthetic 统一社会信用代码: prefix + 7 base-31 characters + check character."""
    chars = "0123456789ABCDEFGHJKLMNPQRTUWXY"
    body = ""
    for _ in range(17 - len(prefix)):
        n, d = divmod(n, 31)
        body = chars[d] + body
    head = prefix + body
    return head + credit_code_check_character(head)


@dataclass(frozen=True)
class GatewaySpec:
    enterprise: str
    gateway: str
    tags: tuple[str, ...]

    @property
    def username(self) -> str:
        return f"{self.enterprise}/{self.gateway}"


@dataclass(frozen=True)
class Fleet:
    gateways: tuple[GatewaySpec, ...]

    @classmethod
    def synthetic(cls, gateways: int, sensors: int = PER_MESSAGE, *, seed: int = 0,
                  per_enterprise: int = GATEWAYS_PER_ENTERPRISE) -> Fleet:
        """`gateways` gateways of `sensors` temperature sensors, 10 gateways an enterprise."""
        specs = []
        for g in range(gateways):
            ent = credit_code(seed * 100_000 + g // per_enterprise)
            gw = f"lg-{g:05d}"
            specs.append(GatewaySpec(ent, gw, tuple(f"LG{g:05d}.T{s:03d}" for s in range(sensors))))
        return cls(tuple(specs))

    def registry_yaml(self) -> str:
        lines = ["# synthetic load-generator fleet (hazardwatch loadgen --registry-out)",
                 "regions:", f'  - {{code: "{REGION}", name: 天桥区}}', "enterprises:"]
        by_ent: dict[str, list[GatewaySpec]] = {}
        for spec in self.gateways:
            by_ent.setdefault(spec.enterprise, []).append(spec)
        for i, (ent, specs) in enumerate(by_ent.items()):
            lines += [f"  - code: {ent}", f"    name: 负载测试企业{i}", f'    region: "{REGION}"',
                      "    gateways: [" + ", ".join(f"{{id: {s.gateway}}}" for s in specs) + "]",
                      "    sites:"]
            for s in specs:
                lines += [f"      - id: S-{s.gateway}", f"        name: 负载装置 {s.gateway}",
                          "        kind: major_hazard", "        grade: 4", "        sensors:"]
                lines += [f"          - {{tag: {t}, kind: temperature, unit: °C, range: [-50, 500], "
                          f"interval_s: 10, gateway: {s.gateway}}}" for t in s.tags]
        return "\n".join(lines) + "\n"

    def write_registry(self, path: Path) -> None:
        path.write_text(self.registry_yaml(), encoding="utf-8")

    def write_credentials(self, path: Path, password: str) -> None:
        """`username:password` lines, for `mosquitto_passwd -U` or `replay --credentials`."""
        path.write_text("".join(f"{s.username}:{password}\n" for s in self.gateways), encoding="utf-8")
        path.chmod(0o600)


# ---------------------------------------------------------------------------- one process

@dataclass
class ProcessResult:
    index: int
    gateways: int
    sent: int       # readings published
    acked: int      # readings the broker acknowledged
    elapsed_s: float
    error: str | None = None

    @property
    def rate(self) -> float:
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0


VALUE_CYCLE = 20  # value patterns a gateway cycles through (payloads encoded once, at start)
TICK_S = 0.025     # publish in bursts of about this much time's readings
REPORT_S = 0.1     # how often the shared `acked` counter is brought up to date
STALL_S = 30.0     # no PUBACK for this long while the window is full: an error


class MessageStream:
    """One gateway's endless readings messages, cheap to produce: its tags in
    ≤ per_message-reading messages, each with a new millisecond never behind the wall
    clock (strictly increasing, so every reading is a distinct (sensor, ts) row).

    The `values` objects are JSON-encoded once at start (VALUE_CYCLE patterns per chunk of
    tags: temperatures 20.0-39.9 °C, changing from one message to the next); a message is
    the timestamp formatted in front of one of them, not a dict encoded per message."""

    def __init__(self, spec: GatewaySpec, per_message: int = PER_MESSAGE) -> None:
        chunks = [spec.tags[i:i + per_message] for i in range(0, len(spec.tags), per_message)]
        self._bodies: list[tuple[bytes, int]] = []
        for k in range(VALUE_CYCLE * len(chunks)):
            chunk = chunks[k % len(chunks)]
            values = {t: round(20.0 + ((k * 7 + j) % 200) / 10.0, 1) for j, t in enumerate(chunk)}
            self._bodies.append((orjson.dumps(values), len(chunk)))
        self._k = 0
        self._last = 0

    def next(self, now_ms: int) -> tuple[bytes, int]:
        """(payload, readings) of the next message, stamped `now_ms` or just after the last."""
        ts = now_ms if now_ms > self._last else self._last + 1
        self._last = ts
        body, n = self._bodies[self._k]
        self._k = (self._k + 1) % len(self._bodies)
        return b'{"ts":%d,"values":%b}' % (ts, body), n


class _Gateway:
    """One gateway's own MQTT v5 connection (client id, username `<enterprise>/<gateway>`,
    last will `offline`), driven by its process's single event loop instead of a paho
    network thread: no thread per gateway, no locks. A reading counts once the broker's
    PUBACK for its message arrives with a success reason code."""

    def __init__(self, spec: GatewaySpec, client_id: str, password: str, per_message: int,
                 max_inflight: int) -> None:
        self.username = spec.username
        self.topic = readings_topic(spec.enterprise, spec.gateway)
        self.state = state_topic(spec.enterprise, spec.gateway)
        self.stream = MessageStream(spec, per_message)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        c.username_pw_set(self.username, password)
        c.max_inflight_messages_set(max_inflight)
        c.max_queued_messages_set(0)
        c.will_set(self.state, b"offline", qos=1, retain=True)
        c.on_connect = self._on_connect
        c.on_publish = self._on_publish
        self.client = c
        self.connect_rc: mqtt.ReasonCode | None = None
        self.pending: dict[int, int] = {}     # mid -> readings, until its PUBACK
        self.acked = 0
        self.refused: dict[str, int] = {}     # PUBACK failure reason -> messages
        self.writing = False                  # registered for EVENT_WRITE

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connect_rc = reason_code

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        n = self.pending.pop(mid, 0)
        if reason_code.is_failure:
            self.refused[str(reason_code)] = self.refused.get(str(reason_code), 0) + 1
        else:
            self.acked += n

    def publish(self, topic: str, payload: bytes, readings: int, retain: bool = False) -> None:
        # no network thread and no socket-register callback: paho writes right here
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise PublishError(f"{self.username}: publish failed: {mqtt.error_string(info.rc)}")
        self.pending[info.mid] = readings


class _Loop:
    """The process's gateways on one selector: reads PUBACKs, finishes partial writes."""

    def __init__(self) -> None:
        self.sel = selectors.DefaultSelector()
        self.gateways: list[_Gateway] = []

    def add(self, gw: _Gateway, host: str, port: int, keepalive: int = 30) -> None:
        try:
            gw.client.connect(host, port, keepalive=keepalive)   # sends CONNECT
        except OSError as exc:
            raise PublishError(f"{gw.username}: cannot reach broker {host}:{port}: {exc}") from exc
        self.gateways.append(gw)
        self.sel.register(gw.client.socket(), selectors.EVENT_READ, gw)
        self.want_write(gw)

    def want_write(self, gw: _Gateway) -> None:
        """Watch for writability only while paho holds unsent bytes (a full socket buffer)."""
        if gw.client.want_write() != gw.writing:
            gw.writing = not gw.writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if gw.writing else 0)
            self.sel.modify(gw.client.socket(), events, gw)

    def pump(self, timeout: float | None) -> int:
        """Handle ready sockets (waiting up to `timeout` s for one); returns how many."""
        events = self.sel.select(timeout)
        for key, mask in events:
            gw: _Gateway = key.data
            if mask & selectors.EVENT_READ:
                rc = gw.client.loop_read()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    raise PublishError(f"{gw.username}: connection lost: {mqtt.error_string(rc)}")
            if mask & selectors.EVENT_WRITE:
                rc = gw.client.loop_write()
                if rc != mqtt.MQTT_ERR_SUCCESS:
                    raise PublishError(f"{gw.username}: connection lost: {mqtt.error_string(rc)}")
            self.want_write(gw)
        return len(events)

    def misc(self) -> None:
        """Keepalive (PINGREQ when due); paho wants this about once a second."""
        for gw in self.gateways:
            gw.client.loop_misc()

    def until(self, done, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        next_misc = time.monotonic() + 1.0
        while not done():
            now = time.monotonic()
            if now >= deadline:
                raise PublishError(f"{what} after {timeout:g} s")
            self.pump(min(0.05, deadline - now))
            if now >= next_misc:
                self.misc()
                next_misc = now + 1.0

    def outstanding(self) -> int:
        return sum(len(gw.pending) for gw in self.gateways)

    def close(self, timeout: float = 10.0) -> None:
        """`offline` (retained) from every gateway, acknowledged, then DISCONNECT."""
        try:
            for gw in self.gateways:
                if gw.client.is_connected():
                    gw.publish(gw.state, b"offline", 0, retain=True)
                    self.want_write(gw)
            self.until(lambda: self.outstanding() == 0, timeout, "no PUBACK for `offline`")
        finally:
            for gw in self.gateways:
                with contextlib.suppress(Exception):
                    self.sel.unregister(gw.client.socket())
                with contextlib.suppress(Exception):
                    gw.client.disconnect()   # written at once; paho then closes the socket
            self.sel.close()


def worker(index: int, specs: list[GatewaySpec], host: str, port: int, password: str, rate: float,
           duration: float, per_message: int, start_at: float, results, acked_counter=None,
           max_outstanding: int = 100, started=None, sent_counter=None) -> None:
    """One process: connect its gateways, publish at `rate` readings/s for `duration` s.

    Everything runs on this one thread: a token bucket refilled each wakeup, bursts of
    about TICK_S worth of readings spread round robin over the gateways (each keeps at most
    `max_outstanding` messages awaiting their PUBACK), then a sleep; PUBACKs are read in
    batches when it wakes."""
    loop = _Loop()
    sent = 0
    t0 = time.monotonic()
    reported = sent_reported = 0

    def acked() -> int:
        return sum(gw.acked for gw in loop.gateways)

    try:
        for s in specs:
            loop.add(_Gateway(s, f"{s.username}-lg{index}", password, per_message, max_outstanding + 2),
                     host, port)
        loop.until(lambda: all(gw.connect_rc is not None for gw in loop.gateways),
                   10.0 + 0.05 * len(specs), "no CONNACK for every gateway")
        refused = [gw for gw in loop.gateways if gw.connect_rc.is_failure]
        if refused:
            raise PublishError(f"{refused[0].username}: broker refused the connection "
                               f"({refused[0].connect_rc}); {len(refused)} gateways refused")
        for gw in loop.gateways:
            gw.publish(gw.state, b"online", 0, retain=True)
            loop.want_write(gw)
        # everyone starts together (wall clock, shared between processes)
        while (wait := start_at - time.time()) > 0:
            loop.pump(min(wait, 0.5))
        t0 = time.monotonic()
        if started is not None:  # a busy machine can connect its gateways after start_at
            with started.get_lock():
                started.value += 1
        deadline = t0 + duration
        burst = max(float(per_message), rate * 0.05)  # at most 50 ms of readings at once
        step = min(burst, max(float(per_message), rate * TICK_S))
        tokens = float(per_message)
        last = t0
        next_misc = t0 + 1.0
        next_report = t0 + REPORT_S
        gws = loop.gateways
        n_gw = len(gws)
        rr = 0
        progress_at = t0      # last time a PUBACK arrived or a message went out
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            if loop.pump(0):
                progress_at = now
            blocked = False
            if tokens >= per_message:
                now_ms = int(time.time() * 1000)
                skipped = 0
                while tokens >= per_message:
                    gw = gws[rr]
                    rr = rr + 1 if rr + 1 < n_gw else 0
                    if len(gw.pending) >= max_outstanding:
                        skipped += 1
                        if skipped >= n_gw:
                            blocked = True
                            break
                        continue
                    skipped = 0
                    payload, n = gw.stream.next(now_ms)
                    gw.publish(gw.topic, payload, n)
                    if gw.client.want_write():    # socket buffer full: finish when writable
                        loop.want_write(gw)
                    tokens -= n
                    sent += n
                    progress_at = now
            if now >= next_report:
                next_report = now + REPORT_S
                if acked_counter is not None:
                    done = acked()
                    with acked_counter.get_lock():
                        acked_counter.value += done - reported
                    reported = done
                if sent_counter is not None:
                    with sent_counter.get_lock():
                        sent_counter.value += sent - sent_reported
                    sent_reported = sent
                if now >= next_misc:
                    next_misc = now + 1.0
                    loop.misc()
            if blocked:      # every gateway's window is full: wait for PUBACKs
                if now - progress_at > STALL_S:
                    raise PublishError(f"{loop.outstanding()} messages unacknowledged after {STALL_S:g} s")
                loop.pump(min(0.05, deadline - now))
                continue
            if tokens < step:  # sleep until the next burst is due; PUBACKs wait in the sockets
                time.sleep(min((step - tokens) / rate, deadline - now))
        loop.until(lambda: loop.outstanding() == 0, 60.0, "messages unacknowledged")
        elapsed = time.monotonic() - t0
        done = acked()
        if acked_counter is not None:
            with acked_counter.get_lock():
                acked_counter.value += done - reported
        refused = {}
        for gw in loop.gateways:
            for reason, k in gw.refused.items():
                refused[reason] = refused.get(reason, 0) + k
        error = ("broker refused messages: " + ", ".join(f"{k} × {r}" for r, k in refused.items())
                 if refused else None)
        results.put(ProcessResult(index, len(specs), sent, done, elapsed, error))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which shows it
        results.put(ProcessResult(index, len(specs), sent, acked(), time.monotonic() - t0,
                                  f"{type(exc).__name__}: {exc}"))
    finally:
        with contextlib.suppress(Exception):
            loop.close()


# ---------------------------------------------------------------------------- the run

@dataclass
class LoadResult:
    target_rate: float
    duration_s: float
    processes: list[ProcessResult] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return sum(p.sent for p in self.processes)

    @property
    def acked(self) -> int:
        return sum(p.acked for p in self.processes)

    @property
    def elapsed_s(self) -> float:
        return max((p.elapsed_s for p in self.processes), default=0.0)

    @property
    def total_rate(self) -> float:
        """Broker-acknowledged readings/s over the run (the slowest process's time)."""
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def errors(self) -> list[str]:
        return [f"process {p.index}: {p.error}" for p in self.processes if p.error]


class LoadGen:
    """Start the worker processes; `acked` is live, `wait()` returns the result."""

    def __init__(self, fleet: Fleet, host: str, port: int, password: str, *, rate: float,
                 duration: float, processes: int = 2, per_message: int = PER_MESSAGE,
                 start_delay: float = 1.0) -> None:
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        processes = max(1, min(processes, len(fleet.gateways)))
        ctx = mp.get_context("spawn")  # no forked paho threads or sockets
        self.result = LoadResult(rate, duration)
        self.acked = ctx.Value("q", 0)
        self.started = ctx.Value("i", 0)  # processes publishing
        self.sent = ctx.Value("q", 0)     # readings handed to the sockets (live, like acked)
        self._results = ctx.Queue()
        start_at = time.time() + start_delay + 0.2 * len(fleet.gateways) / processes / 50
        self.start_at = start_at  # wall clock: the workers begin publishing together then
        self._procs = []
        for i in range(processes):
            part = list(fleet.gateways[i::processes])
            p = ctx.Process(target=worker, name=f"loadgen-{i}",
                            args=(i, part, host, port, password, rate / processes, duration,
                                  per_message, start_at, self._results, self.acked),
                            kwargs={"started": self.started, "sent_counter": self.sent})
            p.start()
            self._procs.append(p)

    def wait_started(self, timeout: float = 60.0) -> None:
        """Until every process publishes: a window measured from an earlier time would count
        its gateways' connecting as a rate the generator fell short of."""
        deadline = time.monotonic() + timeout
        while self.started.value < len(self._procs):
            if not self.running or time.monotonic() > deadline:
                raise PublishError(f"{self.started.value} of {len(self._procs)} load-generator "
                                   f"processes publishing after {timeout:g} s")
            time.sleep(0.02)

    def wait(self, timeout: float | None = None) -> LoadResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        got: list[ProcessResult] = []
        while len(got) < len(self._procs):
            try:
                got.append(self._results.get(timeout=1.0))
            except queue.Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if not any(p.is_alive() for p in self._procs):
                    break
        for p in self._procs:
            p.join(timeout=10)
        seen = {r.index for r in got}
        for i, p in enumerate(self._procs):
            if i not in seen:
                got.append(ProcessResult(i, 0, 0, 0, 0.0, f"exited with code {p.exitcode} "
                                                          "without a result"))
        self.result.processes = sorted(got, key=lambda r: r.index)
        return self.result

    @property
    def running(self) -> bool:
        return any(p.is_alive() for p in self._procs)

    def stop(self) -> None:
        for p in self._procs:
            if p.is_alive():
                p.terminate()
        for p in self._procs:
            p.join(timeout=5)


def run(fleet: Fleet, host: str, port: int, password: str, *, rate: float, duration: float,
        processes: int = 2, per_message: int = PER_MESSAGE) -> LoadResult:
    gen = LoadGen(fleet, host, port, password, rate=rate, duration=duration, processes=processes,
                  per_message=per_message)
    try:
        return gen.wait(timeout=duration + 120)
    finally:
        gen.stop()
