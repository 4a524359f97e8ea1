"""CPU cost of the load generator alone: µs of its processes' CPU per broker-acked reading.

    python bench/loadgen_cpu.py                          # 40k readings/s for 20 s, 200 gateways
    python bench/loadgen_cpu.py --rate 0 --seconds 10    # flood: as fast as PUBACKs come back

Publishes the synthetic fleet (simulators/loadgen.py) to a broker (default: the machine's
anonymous mosquitto on 127.0.0.1:1883, no subscriber), and samples the worker processes'
CPU times (psutil) over the paced window only (after connecting, 1 s warm-up excluded), so
the figure is the steady-state cost per reading that a benchmark pays for its load."""

from __future__ import annotations

import argparse
import secrets
import time

import psutil

from simulators.loadgen import Fleet, LoadGen

FLOOD = 5_000_000.0


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--password", default="loadgen-cpu", help="the gateways' password (anonymous broker: any)")
    ap.add_argument("--rate", type=float, default=40_000.0, help="readings/s offered; 0 = flood")
    ap.add_argument("--seconds", type=float, default=20.0, help="measured window")
    ap.add_argument("--gateways", type=int, default=200)
    ap.add_argument("--processes", type=int, default=2)
    args = ap.parse_args()

    warm = 1.0
    seed = secrets.randbelow(10_000) + 1    # own topics on a shared broker
    fleet = Fleet.synthetic(args.gateways, seed=seed)
    rate = args.rate or FLOOD
    start_delay = 0.5
    gen = LoadGen(fleet, args.host, args.port, args.password, rate=rate,
                  duration=warm + args.seconds + 0.5, processes=args.processes, start_delay=start_delay)
    try:
        procs = [psutil.Process(p.pid) for p in gen._procs]
        # the workers start publishing together at a wall-clock instant after connecting
        start_at = gen.start_at
        time.sleep(max(0.0, start_at - time.time()) + warm)
        c0, a0, t0 = cpu_s(procs), gen.acked.value, time.monotonic()
        time.sleep(args.seconds)
        c1, a1, t1 = cpu_s(procs), gen.acked.value, time.monotonic()
        result = gen.wait(timeout=args.seconds + 120)
    finally:
        gen.stop()
    acked = a1 - a0
    print(f"gateways {args.gateways}, processes {args.processes}, offered "
          f"{'flood' if not args.rate else f'{args.rate:,.0f}/s'}, window {t1 - t0:.1f} s")
    print(f"acked {acked:,} readings ({acked / (t1 - t0):,.0f}/s), load generator CPU {c1 - c0:.2f} s "
          f"({(c1 - c0) / (t1 - t0):.2f} cores)")
    print(f"CPU per acked reading: {(c1 - c0) / max(acked, 1) * 1e6:.2f} µs")
    if result.errors:
        print("errors:", *result.errors, sep="\n  ")


if __name__ == "__main__":
    main()
