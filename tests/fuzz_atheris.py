"""Coverage-guided fuzzing (atheris = libFuzzer for Python) of every payload decoder and
the collector's batch step after it.

    python tests/fuzz_atheris.py -runs=200000 CORPUS_DIR     # or -max_total_time=600
    python tests/fuzz_atheris.py CRASH_FILE                   # replay one input

(libFuzzer's options apply; run it with the venv's python, which has hazardwatch and
atheris installed.) The first input byte picks the topic (see TOPICS), the rest is the
payload. atheris instruments the ingest package, so libFuzzer steers towards inputs that
reach new branches of the decoders, which random generation rarely finds. A crash is any
exception or any broken invariant: the same checks as tests/test_fuzz_decoders.py, which
runs this file for a bounded number of runs with the valid examples as seed corpus.
"""

from __future__ import annotations

import sys

import atheris

# Only the ingest package is instrumented (include=); the checks and the dialect instances
# come from the hypothesis suite, imported inside the block so that ingest.dialects.* are
# imported (and instrumented) here for the first time.
with atheris.instrument_imports(include=["ingest"]):
    from test_fuzz_decoders import (
        NOW,
        TOPICS,
        check,
        check_problem,
        dead_letter_row,
        pg_text_ok,
        registry,
    )

    from ingest.batch import Batch, Message

ROUTES = list(TOPICS.values())


def one_input(data: bytes) -> None:
    if not data:
        return
    dialect, topic = ROUTES[data[0] % len(ROUTES)]
    payload = data[1:]
    decoded = check(dialect.decode(topic, payload, NOW))
    batch = Batch(registry(), 300_000.0, 10_000)
    batch.add((0, 1, 1), Message(topic, payload, NOW, decoded))
    batch.finalize(now_ms=NOW)
    for m in batch.dead_letters():
        for p in m.decoded.problems:
            check_problem(p)
        for text in dead_letter_row(m):
            assert text is None or pg_text_ok(text), text


def main() -> None:
    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
