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
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from hazardwatch.registry import credit_code_check_character
from simulators.mqttout import PER_MESSAGE, GatewayPublisher

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


def _messages(spec: GatewaySpec, per_message: int):
    """Endless (ts_ms, payload, readings) of one gateway: its tags in ≤ 50-reading
    messages, a new millisecond for each message, never behind the wall clock."""
    last = 0
    k = 0
    chunks = [spec.tags[i:i + per_message] for i in range(0, len(spec.tags), per_message)]
    while True:
        for chunk in chunks:
            ts = max(int(time.time() * 1000), last + 1)
            last = ts
            values = {t: round(20.0 + ((k * 7 + j) % 200) / 10.0, 1) for j, t in enumerate(chunk)}
            k += 1
            yield orjson.dumps({"ts": ts, "values": values}), len(chunk)


def worker(index: int, specs: list[GatewaySpec], host: str, port: int, password: str, rate: float,
           duration: float, per_message: int, start_at: float, results, acked_counter=None,
           max_outstanding: int = 100) -> None:
    """One process: connect its gateways, publish at `rate` readings/s for `duration` s."""
    pubs: list[GatewayPublisher] = []
    sent = 0
    t0 = time.monotonic()
    try:
        for s in specs:
            pubs.append(GatewayPublisher(host, port, s.enterprise, s.gateway, password,
                                         client_id=f"{s.username}-lg{index}",
                                         per_message=per_message).connect())
        streams = [_messages(s, per_message) for s in specs]
        # everyone starts together (wall clock, shared between processes)
        time.sleep(max(0.0, start_at - time.time()))
        t0 = time.monotonic()
        deadline = t0 + duration
        burst = max(float(per_message), rate * 0.05)  # at most 50 ms of readings at once
        tokens = float(per_message)
        last = t0
        reported = 0
        i = 0
        while True:
            now = time.monotonic()
            if now >= deadline:
                break
            tokens = min(burst, tokens + (now - last) * rate)
            last = now
            if tokens < per_message:
                time.sleep(min((per_message - tokens) / rate, deadline - now))
                continue
            pub = pubs[i % len(pubs)]
            payload, n = next(streams[i % len(pubs)])
            pub.wait_outstanding(max_outstanding)
            pub.publish_payload(payload, n)
            tokens -= n
            sent += n
            i += 1
            if acked_counter is not None and i % 20 == 0:
                done = sum(p.acked_readings for p in pubs)
                with acked_counter.get_lock():
                    acked_counter.value += done - reported
                reported = done
        for p in pubs:
            p.flush(60)
        elapsed = time.monotonic() - t0
        acked = sum(p.acked_readings for p in pubs)
        if acked_counter is not None:
            with acked_counter.get_lock():
                acked_counter.value += acked - reported
        results.put(ProcessResult(index, len(specs), sent, acked, elapsed))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which shows it
        acked = sum(p.acked_readings for p in pubs)
        results.put(ProcessResult(index, len(specs), sent, acked, time.monotonic() - t0,
                                  f"{type(exc).__name__}: {exc}"))
    finally:
        for p in pubs:
            with contextlib.suppress(Exception):
                p.close(timeout=10)


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
        self._results = ctx.Queue()
        start_at = time.time() + start_delay + 0.2 * len(fleet.gateways) / processes / 50
        self._procs = []
        for i in range(processes):
            part = list(fleet.gateways[i::processes])
            p = ctx.Process(target=worker, name=f"loadgen-{i}",
                            args=(i, part, host, port, password, rate / processes, duration,
                                  per_message, start_at, self._results, self.acked))
            p.start()
            self._procs.append(p)

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
