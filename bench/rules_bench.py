"""Rule engine throughput and state size, measured side by side in one run, one core.

    python bench/rules_bench.py [--sensors 100000] [--rounds 20] [--batch 5000]

Feeds the same synthetic stream (every sensor reporting once per round, in ingest-sized
batches, a few per cent of sensors wandering over their limits so transitions happen)
through:
  * the engine with threshold rules only (H/HH/L/LL with deadband and delays);
  * the engine with every rule kind on (thresholds, rate of change, trend projection,
    EWMA/CUSUM deviation, stuck, range and quality faults, no-data timers);
  * a naive baseline: the same threshold logic as a plain Python loop per reading;
and prints readings/s of CPU time (process time, so it is one core's work), the targets,
the ratios between the rows, and condition state bytes per sensor.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from rules.engine import Engine, SensorRow
from rules.packs import SensorSpec, load_packs

TARGET_THRESHOLD = 1_000_000
TARGET_ALL = 250_000
TARGET_STATE = 1024


def stream(sensors: int, rounds: int, seed: int = 7):
    """(sensor ids, ts, values, quality) per round: a daily-ish cycle plus noise; 3 % of
    sensors drift up through H and HH and back."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(40, 60, sensors)
    drifting = rng.random(sensors) < 0.03
    t0 = time.time() - rounds * 10.0
    for r in range(rounds):
        ts = t0 + r * 10.0 + rng.uniform(0, 1, sensors)
        v = base + 5 * math.sin(r / 5) + rng.normal(0, 0.5, sensors)
        phase = (r % 20) / 20
        v[drifting] += 45 * math.sin(math.pi * phase)
        q = np.zeros(sensors, dtype=np.int16)
        q[rng.random(sensors) < 0.001] = 2
        yield np.arange(1, sensors + 1, dtype=np.int64), ts, v, q


def engine_for(sensors: int, all_kinds: bool) -> Engine:
    packs = load_packs()
    pack = packs["major_hazard"]
    rules = dict(h=80.0, hh=90.0, l=20.0, ll=10.0, deadband=1.0, on_delay_s=5.0, off_delay_s=10.0)
    if all_kinds:
        rules |= dict(rate_rise_per_min=30.0, rate_fall_per_min=30.0, trend_tau_s=300.0,
                      trend_lead_s=600.0, deviation=True, stuck_window_s=3600.0, stuck_eps=0.01)
    else:
        rules |= dict(rate_rise_per_min=None, rate_fall_per_min=None, trend_tau_s=None,
                      deviation=False, stuck_window_s=None)
    engine = Engine({"major_hazard": pack})
    rows = [SensorRow(i, 1 + (i - 1) // 50, 1 + (i - 1) // 250, "major_hazard", 2,
                      SensorSpec(tag=f"E{i // 5}.T{i % 5}", kind="temperature", unit="°C",
                                 range_lo=0.0, range_hi=100.0, ll=None, l=None, h=None, hh=None,
                                 interval_s=10.0, rules={k: v for k, v in rules.items()}))
            for i in range(1, sensors + 1)]
    engine.load(rows)
    return engine


def run_engine(engine: Engine, data, batch: int, tick: bool) -> tuple[int, float, int]:
    n = transitions = 0
    cpu = 0.0
    for sid, ts, v, q in data:
        order = np.random.default_rng(len(ts)).permutation(len(sid))  # gateways interleave
        sid, ts, v, q = sid[order], ts[order], v[order], q[order]
        t = time.process_time()
        for i in range(0, len(sid), batch):
            ch = engine.readings(sid[i:i + batch], ts[i:i + batch], v[i:i + batch], q[i:i + batch],
                                 float(ts[-1]))
            transitions += len(ch.raised) + len(ch.cleared)
        if tick:
            ch = engine.tick(float(ts.max()))
            transitions += len(ch.raised) + len(ch.cleared)
        cpu += time.process_time() - t
        n += len(sid)
    return n, cpu, transitions


def naive(data, limit: int) -> tuple[int, float, int]:
    """The same H/HH/L/LL with deadband and on/off delay, one reading at a time in Python."""
    lim = {"hh": 90.0, "h": 80.0, "l": 20.0, "ll": 10.0}
    state: dict[tuple[int, str], list] = {}
    n = fired = 0
    cpu = 0.0
    for sid, ts, v, _q in data:
        rows = list(zip(sid.tolist(), ts.tolist(), v.tolist(), strict=True))[:limit]
        t = time.process_time()
        for s, when, value in rows:
            for name, limit_v in lim.items():
                st = state.setdefault((s, name), [False, None])
                high = name in ("h", "hh")
                if st[0]:
                    meet = value < limit_v - 1.0 if high else value > limit_v + 1.0
                    delay = 10.0
                else:
                    meet = value >= limit_v if high else value <= limit_v
                    delay = 5.0
                if not meet:
                    st[1] = None
                    continue
                if st[1] is None:
                    st[1] = when
                if when - st[1] >= delay:
                    st[0], st[1] = not st[0], None
                    fired += 1
        cpu += time.process_time() - t
        n += len(rows)
    return n, cpu, fired


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sensors", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--batch", type=int, default=5000, help="readings per engine call (ingest batch)")
    args = ap.parse_args()

    rows = []
    for label, all_kinds in (("threshold rules only", False), ("every rule kind", True)):
        t = time.perf_counter()
        engine = engine_for(args.sensors, all_kinds)
        load_s = time.perf_counter() - t
        print(f"[{label}] registry load: {args.sensors:,} sensors in {load_s:.2f} s", flush=True)
        run_engine(engine, stream(args.sensors, 2, seed=1), args.batch, all_kinds)  # warm up
        engine = engine_for(args.sensors, all_kinds)
        n, cpu, tr = run_engine(engine, stream(args.sensors, args.rounds), args.batch, all_kinds)
        rows.append((label, n, cpu, tr, engine.state.nbytes_per_sensor))
        print(f"[{label}] {n:,} readings, {tr:,} transitions, {cpu:.2f} s CPU", flush=True)
    nn, ncpu, nfired = naive(stream(args.sensors, args.rounds), limit=20_000)
    print(f"[naive python loop] {nn:,} readings, {nfired:,} transitions, {ncpu:.2f} s CPU", flush=True)

    naive_rate = nn / ncpu
    print()
    print(f"{'':28} {'readings/s':>12} {'target':>11} {'vs target':>9} {'vs naive':>9} {'state B/sensor':>15}")
    for (label, n, cpu, _tr, nbytes), target in zip(rows, (TARGET_THRESHOLD, TARGET_ALL), strict=True):
        rate = n / cpu
        # the naive loop does thresholds only: compare like with like
        vs_naive = f"{rate / naive_rate:8.1f}x" if target == TARGET_THRESHOLD else f"{'-':>9}"
        print(f"{label:28} {rate:12,.0f} {target:11,} {rate / target:9.2f}x {vs_naive} {nbytes:15}")
    print(f"{'naive python, thresholds':28} {naive_rate:12,.0f} {'':11} {'':9} {1.0:8.1f}x")
    thr, allk = rows[0][1] / rows[0][2], rows[1][1] / rows[1][2]
    print(f"\nevery rule kind costs {thr / allk:.2f}x the threshold-only engine; "
          f"state {rows[1][4]} B/sensor (target <= {TARGET_STATE} B; no raw window is kept: "
          "slopes are O(1) running sums)")


if __name__ == "__main__":
    main()
