"""Throughput of the COPY row splitter (pgshard.protocol.copyrows), pure Python, one core:
200,000 rows of four columns in 64 KiB CopyData payloads, key column bigint.

    .venv/bin/python -m bench.copy_split
"""

from __future__ import annotations

import struct
import time

from pgshard.protocol.copyrows import BINARY_SIGNATURE, CopyFormat, CopySplitter
from pgshard.protocol.values import INT8

ROWS = 200_000
CHUNK = 65536


def payloads() -> dict[str, tuple[CopyFormat, bytes]]:
    text = b"".join(f"{i}\tsome value {i}\t2024-01-01\t{i * 3.5}\n".encode()
                    for i in range(ROWS))
    csv = b"".join(f'{i},"some, value {i}",2024-01-01,{i * 3.5}\n'.encode() for i in range(ROWS))
    binary = (BINARY_SIGNATURE + struct.pack("!ii", 0, 0)
              + b"".join(struct.pack("!hiqi", 2, 8, i, 10) + b"0123456789" for i in range(ROWS))
              + b"\xff\xff")
    return {"text": (CopyFormat.text(), text), "csv": (CopyFormat.csv(), csv),
            "binary": (CopyFormat.binary(), binary)}


def main() -> None:
    for name, (fmt, data) in payloads().items():
        best = None
        for _ in range(3):
            sp = CopySplitter(fmt, 0, INT8)
            t0 = time.process_time()
            n = sum(len(sp.feed(data[i:i + CHUNK])) for i in range(0, len(data), CHUNK))
            n += len(sp.finish())
            took = time.process_time() - t0
            best = took if best is None else min(best, took)
        assert n == ROWS
        print(f"{name:6}: {ROWS / best:9.0f} rows/s  {len(data) / best / 1e6:5.1f} MB/s "
              f"(best of 3, CPU time)")


if __name__ == "__main__":
    main()
