"""Store write throughput: verify + pwrite + periodic fsync of a ~14 MB model in 64 KiB chunks,
then finish (whole-file hash + rename). Not collected by pytest.

Run: /work/venv/bin/python -m tests.bench_store [SIZE_MB]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

from agent.delivery.store import ModelStore
from tests.delivery_helpers import new_key, signed


def main() -> None:
    size = int(float(sys.argv[1]) * 1e6) if len(sys.argv) > 1 else 14_000_000
    data = os.urandom(size)
    key, _ = new_key()
    t0 = time.perf_counter()
    m = signed(key, data, chunk_size=65536).manifest
    t_sign = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as d:
        store = ModelStore(d)
        t0 = time.perf_counter()
        store.begin(m)
        for i in range(m.chunk_count):
            store.write_chunk(m.sha256, i, data[i * 65536 : (i + 1) * 65536])
        t_write = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.finish(m.sha256)
        t_finish = time.perf_counter() - t0
    mb = size / 1e6
    print(f"model {mb:.1f} MB, {m.chunk_count} chunks")
    print(f"manifest build+sign: {t_sign * 1000:.1f} ms")
    print(f"chunks verify+write: {t_write * 1000:.1f} ms ({mb / t_write:.0f} MB/s)")
    print(f"finish (hash+rename): {t_finish * 1000:.1f} ms")


if __name__ == "__main__":
    main()
