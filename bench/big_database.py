#!/usr/bin/env python
"""A 10,000,000-cell reference database from the command line: time and peak memory of each step.

    python bench/big_database.py [--cells 10000000] [--work /tmp/schash-big] [--out bench/results/big_database.md]

Steps, each a fresh process measured from outside (wall time and peak resident memory of the
process and its children): write the synthetic reference and a 100,000-cell query
(``bench/synth.py``, skipped when the files exist), ``schash train`` on at most 5,000 cells per
type (the database holds every cell's code), loading the model file, ``schash annotate`` by
nearest anchor and by a vote among the 15 nearest of the 10,000,000 reference cells (``--method
knn``), both streamed to CSV.  The synthetic reference takes ~20 GB of disk and most of an hour
to write on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def run(name: str, cmd: list[str]) -> dict:
    """Run ``cmd`` in a child process; its wall time and peak RSS (GB)."""
    probe = ("import resource, subprocess, sys, time\n"
             "t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); s = time.perf_counter() - t\n"
             "print('RESULT', r.returncode, s, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([PY, "-c", probe, *cmd], capture_output=True, text=True)
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT")]
    if out.returncode or not line or line[0].split()[1] != "0":
        raise SystemExit(f"{name} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    _, _, sec, kb = line[0].split()
    row = {"step": name, "seconds": float(sec), "peak GB": int(kb) / 1e6, "command": " ".join(cmd)}
    print(f"{name}: {row['seconds']:.1f} s, peak {row['peak GB']:.2f} GB", flush=True)
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, default=10_000_000)
    p.add_argument("--queries", type=int, default=100_000)
    p.add_argument("--max-per-type", type=int, default=5000)
    p.add_argument("--work", type=Path, default=Path("/tmp/schash-big"))
    p.add_argument("--out", type=Path, default=HERE / "results" / "big_database.md")
    a = p.parse_args(argv)
    a.work.mkdir(parents=True, exist_ok=True)
    ref, qry = a.work / f"ref_{a.cells}.h5ad", a.work / f"query_{a.queries}.h5ad"
    model = a.work / "model.schash"
    rows = []
    for path, n, seed in ((ref, a.cells, None), (qry, a.queries, 1)):
        if not path.exists():
            cmd = [PY, str(HERE / "synth.py"), str(path), "--cells", str(n), "--seed", "0"]
            rows.append(run(f"write {n:,} synthetic cells", cmd + (["--data-seed", str(seed)] if seed else [])))
    cli = [PY, "-m", "schash"]
    rows.append(run("schash train", cli + ["train", str(ref), "--cell-type-key", "cell_type", "--batch-key", "batch",
                                           "--max-cells-per-type", str(a.max_per_type), "-o", str(model),
                                           "--overwrite", "--no-progress"]))
    rows.append(run("load the model file", [PY, "-c", f"import schash; m = schash.load({str(model)!r}); "
                                                     "print(len(m.ref_codes))"]))
    rows.append(run("schash annotate (nearest anchor)", cli + ["annotate", str(model), str(qry), "--csv",
                                                               str(a.work / "anchor.csv"), "--overwrite",
                                                               "--no-progress"]))
    rows.append(run("schash annotate (--method knn, k = 15)", cli + ["annotate", str(model), str(qry), "--csv",
                                                                     str(a.work / "knn.csv"), "--method", "knn",
                                                                     "-k", "15", "--overwrite", "--no-progress"]))
    size = model.stat().st_size / 1e6
    lines = ["# A 10,000,000-cell reference database from the command line", "",
             f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S')}, {os.cpu_count()} cores, "
             f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB memory",
             f"- command: `python bench/big_database.py --cells {a.cells}`",
             f"- reference: {a.cells:,} synthetic cells × 2,000 genes ({ref.stat().st_size / 1e9:.1f} GB .h5ad), "
             f"query {a.queries:,} cells; model file {size:.0f} MB", "",
             __doc__.split("\n\n", 2)[2].strip(), "",
             "| step | seconds | peak memory (GB) | command |", "|---|---|---|---|"]
    lines += [f"| {r['step']} | {r['seconds']:.1f} | {r['peak GB']:.2f} | `{r['command'].replace(PY, 'python')}` |"
              for r in rows]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
