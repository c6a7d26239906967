#!/usr/bin/env python
"""Saliency on large queries: peak memory is bounded by the chunk, not by the query.

    python bench/saliency_memory.py [--cells 10000 100000] [--out bench/results]

A synthetic reference (bench/synth.py; 2,000 genes, 20 types) trains a model once; queries of
each size are written to ``.h5ad`` and ``model.saliency(path)`` runs in a fresh process per
size, which reports its peak resident memory (VmHWM) and time.  Before the one encoder,
saliency built the whole cells × genes matrix dense (100k × 2,000 float32 = 0.8 GB, plus its
gradients); now each chunk of ``chunk_size`` cells is made dense, explained, added to the
per-group sums and dropped.  Writes ``OUT/saliency_memory.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _step(model_path: str, query_path: str, chunk_size: int) -> None:
    import schash

    model = schash.load(model_path)
    before = peak_mb()
    t = time.perf_counter()
    sal = model.saliency(query_path, chunk_size=chunk_size)
    print(json.dumps({"seconds": time.perf_counter() - t, "peak_mb": peak_mb(), "peak_before_mb": before,
                      "groups": sal.shape[1]}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_step":
        _step(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--chunk-size", type=int, default=2048)
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    sys.path.insert(0, str(HERE))
    from synth import write_synthetic

    import schash

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_synthetic(tmp / "ref.h5ad", 20_000, seed=0, data_seed=1)
        model = schash.train(str(tmp / "ref.h5ad"), cell_type_key="cell_type", seed=0, progress=False)
        model.save(tmp / "m.schash")
        for n in args.cells:
            write_synthetic(tmp / f"q{n}.h5ad", n, seed=0, data_seed=2)
            out = subprocess.run([sys.executable, __file__, "_step", str(tmp / "m.schash"), str(tmp / f"q{n}.h5ad"),
                                  str(args.chunk_size)], capture_output=True, text=True, check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            dense_mb = n * len(model.genes) * 4 / 1024**2
            rows.append(f"| {n:,} | {r['seconds']:.1f} | {r['peak_before_mb']:.0f} | {r['peak_mb']:.0f} | "
                        f"{r['peak_mb'] - r['peak_before_mb']:.0f} | {dense_mb:.0f} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        "# Saliency memory: chunked through the one encoder",
        "",
        f"- date: {datetime.datetime.now().isoformat(timespec='seconds')}",
        f"- command: `python bench/saliency_memory.py --cells {' '.join(map(str, args.cells))}`",
        f"- machine: {platform.platform()}, Python {platform.python_version()}",
        "",
        f"`model.saliency(path.h5ad, chunk_size={args.chunk_size})` in a fresh process per query size (synthetic",
        "data, 2,000 genes, 20 types; the query read backed from the file). `peak` is the process's peak",
        "resident memory (VmHWM) after saliency; `before` after loading the model and libraries; the",
        "last column is what one dense float32 copy of the query would take, which the old path built.",
        "",
        "| query cells | seconds | peak before (MB) | peak (MB) | added by saliency (MB) | dense query (MB) |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ])
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "saliency_memory.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
