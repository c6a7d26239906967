"""The ``schash`` command line: train, annotate, info.

Every error ends with one line on stderr and exit status 2, never a traceback (set
``SCHASH_DEBUG=1`` to see one).  Outputs are checked before any work: an output that is
one of the inputs is refused, an existing one is replaced only with ``--overwrite``, and
every file is written to a temporary file next to it and renamed into place when complete
(:mod:`schash._atomic`), so a failed or killed run never leaves a partial file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


class _UsageError(Exception):
    """A command line argparse cannot read (reported in one line, like every other error)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _progress_flags(p) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show progress bars (default: only when stderr is a terminal)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")


def _scheduler_flag(p, what) -> None:
    p.add_argument("--scheduler", metavar="ADDRESS|local[:N]",
                   help=f"{what} on a Dask cluster: the address of its scheduler (tcp://host:8786), or local[:N] for "
                   "N one-thread worker processes here (default N: the number of cores); the input is then read "
                   "by the workers, a chunk each, so it must be reachable from them by the same path. Needs the "
                   "dask extra (pip install 'schash-annotate[dask]')")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="schash", description="Deep-hashing cell-type annotation for scRNA-seq")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a labelled reference .h5ad")
    t.add_argument("reference", help="reference .h5ad or .zarr (counts or log-normalised)")
    t.add_argument("--cell-type-key", required=True, action="append",
                   help="obs column with the cell types; label levels: several columns, coarsest first, "
                   "comma-separated (coarse,fine) or the flag repeated")
    t.add_argument("--batch-key", help="obs column with batches (optional)")
    t.add_argument("--layer", help="layer to use instead of X")
    t.add_argument("-o", "--output", required=True, help="model file to write")
    t.add_argument("--n-bits", type=int, default=64)
    t.add_argument("--n-top-genes", type=int, default=2000)
    t.add_argument("--transform", choices=("log", "rank"), default="log")
    t.add_argument("--scale", choices=("reference", "batch"), default="reference",
                   help="standardise with the reference's statistics (default) or each batch on its own")
    t.add_argument("--augment", type=float, default=0.8,
                   help="fraction of training cells given a technology-like perturbation each epoch (0: off)")
    t.add_argument("--min-cells-per-type", type=int, default=1, help="leave out types with fewer cells")
    t.add_argument("--rare-type-cells", type=int, default=10,
                   help="types with fewer cells are also scored by rank correlation (0: off)")
    t.add_argument("--max-epochs", type=int, default=None)
    t.add_argument("--max-cells-per-type", type=int, default=None,
                   help="train on at most this many cells of each type; the database still holds every cell")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--overwrite", action="store_true", help="replace an existing model file (without it, an "
                   "existing file is never touched)")
    _scheduler_flag(t, "encode every reference cell into the database")
    _progress_flags(t)

    a = sub.add_parser("annotate", help="annotate a query .h5ad with a model")
    a.add_argument("model")
    a.add_argument("query", help="query .h5ad or .zarr (a .zarr is read with Dask, a chunk per task)")
    a.add_argument("-o", "--output", help="annotated .h5ad to write (the query with schash_* columns added)")
    a.add_argument("--csv", help="write the per-cell table as CSV; with --csv alone the query is never "
                   "loaded whole, so memory stays bounded by --chunk-size")
    a.add_argument("--parquet", help="write the per-cell table as Parquet (one row group per chunk); with Dask "
                   "input (a .zarr query or --scheduler) and no -o, the tables of --parquet and --csv are "
                   "written a chunk at a time as the workers finish them, never held whole")
    a.add_argument("--chunk-size", type=int, default=8192, help="cells read and encoded at a time")
    a.add_argument("--layer")
    a.add_argument("--batch-key", help="standardise each query batch on its own")
    a.add_argument("--species", choices=("human", "mouse"), help="the query's species when it is not the "
                   "reference's: genes are mapped by one-to-one orthologues")
    a.add_argument("--method", choices=("auto", "anchor", "knn", "prototype"), default="auto",
                   help="auto (default): prototype where the model keeps type prototypes, else anchor")
    a.add_argument("-k", type=int, default=15, help="neighbours for --method knn")
    a.add_argument("--novelty-alpha", type=float, default=None, metavar="P",
                   help="calls whose typicality is below P are Unassigned (default: the model's, set at "
                        "training); raise it to catch more cells of types the reference lacks")
    a.add_argument("--over-clustering", metavar="COLUMN", help="majority voting over the clusters in this obs "
                   "column of the query (over-clustered from the codes when the query has no such column)")
    a.add_argument("--overwrite", action="store_true", help="replace existing output files (without it, an "
                   "existing file is never touched; an output that is the model or the query is always refused)")
    _scheduler_flag(a, "annotate")
    _progress_flags(a)

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print the metadata as JSON")
    return p


def _read_h5ad(path):
    import anndata as ad

    from ._data import is_zarr_path

    return ad.read_zarr(path) if is_zarr_path(path) else ad.read_h5ad(path)


def _lazy(path, args):
    """With --scheduler, the input as an AnnData of Dask row blocks that the workers read; else the path."""
    if not args.scheduler:
        return path
    from ._dask import read_lazy

    return read_lazy(path, args.layer, getattr(args, "chunk_size", 8192))


def _train(args) -> None:
    from ._atomic import check_output
    from ._train import train

    # before the training, not after it: a missing folder or an existing file ends the run now
    check_output(args.output, inputs=[args.reference], overwrite=args.overwrite, flag="--overwrite")
    from ._dask import scheduler

    # the path, not a loaded AnnData: train() reads only the training cells and streams the rest
    keys = [k.strip() for arg in args.cell_type_key for k in arg.split(",")]  # label levels: several
    # (with --scheduler, Dask workers encode the rest)
    with scheduler(args.scheduler):
        model = train(_lazy(args.reference, args), cell_type_key=keys if len(keys) > 1 else keys[0],
                      batch_key=args.batch_key, layer=args.layer,
                      n_bits=args.n_bits, n_top_genes=args.n_top_genes, transform=args.transform,
                      scale=args.scale, augment=args.augment, min_cells_per_type=args.min_cells_per_type,
                      rare_type_cells=args.rare_type_cells,
                      max_epochs=args.max_epochs, max_cells_per_type=args.max_cells_per_type, seed=args.seed,
                      device=args.device, progress=args.progress)
    _save_model(model, args.output, args.overwrite)
    print(model)
    print(f"validation macro F1 {model.history['best_val_macro_f1']:.3f}; model written to {args.output}")


def _save_model(model, path, overwrite) -> None:
    try:
        model.save(path, overwrite=overwrite)
    except FileExistsError:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it") from None


def _annotate(args) -> None:
    from ._annotate import write_annotation
    from ._atomic import check_output
    from ._dask import scheduler
    from ._data import Source, is_zarr_path
    from ._model import SchashModel
    from ._result import annotation

    outputs = [p for p in (args.output, args.csv, args.parquet) if p]
    if not outputs:
        raise OSError("nothing to write: give -o OUT.h5ad, --csv OUT.csv and/or --parquet OUT.parquet")
    if len({os.path.realpath(p) for p in outputs}) < len(outputs):
        raise FileExistsError(f"-o, --csv and --parquet name the same file ({', '.join(outputs)}); give different "
                              "files")
    inputs = [args.model, args.query]
    for path in outputs:  # before any work
        check_output(path, inputs=inputs, overwrite=args.overwrite, flag="--overwrite")
    if args.parquet:
        from ._dask import require

        require("--parquet", "pyarrow.parquet")
    model = SchashModel.load(args.model)
    with scheduler(args.scheduler):
        query = _lazy(args.query, args)  # the path (encoded straight from the file, a chunk at a time), or Dask
        if (args.scheduler or is_zarr_path(args.query)) and not args.output and not args.over_clustering:
            return _annotate_streamed(args, model, Source(query, layer=args.layer), inputs)
        clusters = None
        if args.over_clustering:
            with Source(query, layer=args.layer) as src:  # the obs column only, read from the file
                obs = src.obs
                clusters = obs[args.over_clustering].to_numpy() if args.over_clustering in obs else "codes"
        res = annotation(model, query, layer=args.layer, method=args.method, k=args.k, batch_key=args.batch_key,
                         species=args.species, clusters=clusters, chunk_size=args.chunk_size,
                         progress=args.progress, novelty_alpha=args.novelty_alpha)
    df, enc = res.table, res.encoded
    adata = None
    if args.output:  # everything computed before the first file is written
        adata = _read_h5ad(args.query)
        res.table.index = adata.obs_names
        write_annotation(adata, model, res)
    table = df.add_prefix("schash_")
    _write_tables(args, inputs, [table], adata)
    _summary(len(df), enc.n_genes_matched, len(model.genes), enc.kind, outputs, df["pruned_label"].value_counts(),
             enc.gene_mapping, df["resolved_level"].value_counts() if "resolved_level" in df else None)


def _annotate_streamed(args, model, src, inputs) -> None:
    """Dask input, table outputs only: each chunk's calls written as the workers finish them."""
    import pandas as pd

    from ._dask import tables

    plan, blocks = tables(model, src, method=args.method, k=args.k, batch_key=args.batch_key,
                          species=args.species, chunk_size=args.chunk_size, progress=args.progress,
                          novelty_alpha=args.novelty_alpha)
    counts = []

    def prefixed():
        for t in blocks:
            counts.append(t["pruned_label"].value_counts())
            yield t.add_prefix("schash_")

    _write_tables(args, inputs, prefixed(), None)
    counts = pd.concat(counts, axis=1).sum(axis=1).astype(int).sort_values(ascending=False, kind="stable")
    _summary(src.n, plan.n_genes_matched, len(model.genes), plan.kind,
             [p for p in (args.csv, args.parquet) if p], counts.rename("count"), plan.gene_mapping)


def _write_tables(args, inputs, tables, adata) -> None:
    """Write the .h5ad, the CSV and the Parquet file, each to a temporary file first; they are placed one
    right after the other only once every one is complete (tables: the table's pieces, in order)."""
    from ._atomic import write_atomic

    kw = dict(overwrite=args.overwrite, inputs=inputs, flag="--overwrite")
    todo = [(path, kind) for path, kind in ((args.output, "h5ad"), (args.csv, "csv"), (args.parquet, "parquet"))
            if path]

    def write(tmps):
        if adata is not None:
            adata.write_h5ad(tmps["h5ad"])
        csv = open(tmps["csv"], "w", newline="", encoding="utf-8") if "csv" in tmps else None  # closed below
        pq = None
        try:
            for i, t in enumerate(tables):
                if csv is not None:
                    t.to_csv(csv, header=i == 0)
                if "parquet" in tmps:
                    pq = _parquet_rows(tmps["parquet"], t, pq)
        finally:
            if csv is not None:
                csv.close()
            if pq is not None:
                pq.close()

    def nest(i, tmps):  # the last file written is placed first, inside the others' writers
        if i == len(todo):
            return write(tmps)
        path, kind = todo[i]
        write_atomic(path, lambda tmp: nest(i + 1, {**tmps, kind: tmp}), **kw)

    nest(0, {})


def _parquet_rows(path, table, writer):
    """Append ``table`` to the Parquet file at ``path`` as one row group (``writer``: None at first)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.Table.from_pandas(table, preserve_index=True)
    if writer is None:
        writer = pq.ParquetWriter(path, t.schema)
    writer.write_table(t)
    return writer


def _summary(n, matched, n_model, kind, outputs, counts, gene_mapping=None, levels=None) -> None:
    print(f"annotated {n} cells ({matched} of {n_model} model genes found, input detected as {kind}); "
          f"written to {' and '.join(outputs)}")
    if gene_mapping:
        print(f"genes: {gene_mapping['summary']}")
    print(counts.to_string())
    if levels is not None:  # label levels: where each cell was resolved
        print(levels.to_string())


def _info(args) -> None:
    from pathlib import Path

    from ._io import read_header
    from ._model import SchashModel

    meta = read_header(Path(args.model))
    if args.json:
        print(json.dumps(meta, indent=2))
        return
    print(SchashModel.load(args.model))
    print(f"format {meta['format']} v{meta['format_version']}, written by schash {meta.get('schash_version')}")
    h = meta.get("history", {})
    if h:
        print(f"trained {len(h.get('epoch', []))} epochs, best validation macro F1 {h.get('best_val_macro_f1', 0):.3f}")


def main(argv=None) -> int:
    import warnings

    before = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *a, **k: f"schash: warning: {_one_line(message)}\n"
    try:
        args = _parser().parse_args(argv)
        {"train": _train, "annotate": _annotate, "info": _info}[args.command](args)
    except KeyboardInterrupt:
        return _fail("interrupted")
    except Exception as err:  # noqa: BLE001 - the promise: one line, exit 2, for every error
        from ._errors import SchashError

        if os.environ.get("SCHASH_DEBUG"):
            raise
        if isinstance(err, (SchashError, OSError, _UsageError)):
            return _fail(str(err) or type(err).__name__)
        return _fail(f"{type(err).__name__}: {err} (unexpected; rerun with SCHASH_DEBUG=1 for details and "
                     "please report it)")
    finally:
        warnings.formatwarning = before
    return 0


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _fail(message: str) -> int:
    print(f"schash: error: {_one_line(message)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
