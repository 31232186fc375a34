"""What each zstd level costs against what it saves, on 1 MiB chunks as a backup stores them.

Two data sets, the same for every level, each level run in turn within a round (``--rounds``, default 3,
first level rotating) and the median taken:

- ``mixed-text``: the text-like half of the benches' mixed image (hex digits, 2:1, no repeats);
- ``system``: the machine's own files (``/usr/lib``, ``/usr/share``, ``/usr/bin``) laid end to end as an
  uncompressed tar stream, the closest stand-in here for a real disk's contents;
- or ``--image PATH``: the first ``--mib`` MiB of any image of yours.

Reports CPU milliseconds per MiB to compress and to decompress and the ratio, with each level's CPU and
stored size relative to level 3 (the default before level 2).
Usage: python bench/compression_levels.py [--mib 256] [--levels 1,2,3,4,6] [--image PATH] [--json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tarfile
import time
from pathlib import Path

import zstandard

MiB = 1 << 20


def mixed_text(size: int) -> bytes:
    return b"".join(os.urandom(MiB // 2).hex().encode() for _ in range(size // MiB))


def system_files(size: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for top in ("/usr/lib", "/usr/share", "/usr/bin"):
            for root, _, files in os.walk(top):
                for name in sorted(files):
                    path = os.path.join(root, name)
                    if os.path.islink(path) or not os.path.isfile(path):
                        continue
                    try:
                        tar.add(path, recursive=False)
                    except OSError:
                        continue
                    if out.tell() >= size:
                        return out.getvalue()[:size]
    return out.getvalue()[:size - size % MiB]


def measure(data: bytes, level: int) -> tuple[float, float, int]:
    """CPU ms per MiB to compress, to decompress, and the stored bytes (a chunk that would not save 1/32
    is stored raw, as the chunk codec does)."""
    c, d = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    chunks = [data[i:i + MiB] for i in range(0, len(data), MiB)]
    start = time.process_time()
    packed = [c.compress(chunk) for chunk in chunks]
    compress = time.process_time() - start
    start = time.process_time()
    for p, chunk in zip(packed, chunks, strict=True):
        d.decompress(p, max_output_size=len(chunk))
    decompress = time.process_time() - start
    stored = sum(len(p) if len(p) < len(ch) - len(ch) // 32 else len(ch)
                 for p, ch in zip(packed, chunks, strict=True))
    mib = len(data) / MiB
    return compress * 1000 / mib, decompress * 1000 / mib, stored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--levels", default="1,2,3,4,6")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--image", type=Path)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    size = args.mib * MiB
    sets = {"image": args.image.read_bytes()[:size]} if args.image else \
        {"mixed-text": mixed_text(size), "system": system_files(size)}
    report: dict[str, dict[int, dict[str, float]]] = {}
    for name, data in sets.items():
        runs: dict[int, list[tuple[float, float, int]]] = {lvl: [] for lvl in levels}
        for n in range(args.rounds):
            for lvl in levels[n % len(levels):] + levels[:n % len(levels)]:
                runs[lvl].append(measure(data, lvl))
        report[name] = {lvl: {"compress_ms_per_mib": round(statistics.median(r[0] for r in rs), 3),
                              "decompress_ms_per_mib": round(statistics.median(r[1] for r in rs), 3),
                              "ratio": round(len(data) / rs[0][2], 3)} for lvl, rs in runs.items()}
        base = report[name].get(3)
        for row in report[name].values():
            if base:
                row["cpu_vs_level3"] = round(row["compress_ms_per_mib"] / base["compress_ms_per_mib"], 3)
                row["size_vs_level3"] = round(base["ratio"] / row["ratio"], 3)
    if args.json:
        print(json.dumps(report))
        return
    for name, rows in report.items():
        print(f"{name} ({args.mib} MiB, median of {args.rounds}):")
        for lvl, row in rows.items():
            rel = f"  CPU {row['cpu_vs_level3']:.2f}x, size {row['size_vs_level3']:.3f}x of level 3" \
                if "cpu_vs_level3" in row else ""
            print(f"  level {lvl:>2}: compress {row['compress_ms_per_mib']:6.2f} ms/MiB, decompress "
                  f"{row['decompress_ms_per_mib']:5.2f} ms/MiB, ratio {row['ratio']:.3f}{rel}")


if __name__ == "__main__":
    main()
