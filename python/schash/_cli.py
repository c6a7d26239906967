"""The ``schash`` command line: train, annotate, info.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="schash", description="Deep-hashing cell-type annotation for scRNA-seq")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model on a labelled reference .h5ad")
    t.add_argument("reference", help="reference .h5ad (counts or log-normalised)")
    t.add_argument("--cell-type-key", required=True, help="obs column with the cell types")
    t.add_argument("--batch-key", help="obs column with batches (optional)")
    t.add_argument("--layer", help="layer to use instead of X")
    t.add_argument("-o", "--output", required=True, help="model file to write")
    t.add_argument("--n-bits", type=int, default=64)
    t.add_argument("--n-top-genes", type=int, default=2000)
    t.add_argument("--transform", choices=("log", "rank"), default="log")
    t.add_argument("--scale", choices=("batch", "reference"), default="batch")
    t.add_argument("--max-epochs", type=int, default=None)
    t.add_argument("--max-cells-per-type", type=int, default=None,
                   help="train on at most this many cells of each type; the database still holds every cell")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="auto")
    t.add_argument("--overwrite", action="store_true", help="replace an existing model file")
    t.add_argument("--no-progress", action="store_true", help="hide progress bars")

    a = sub.add_parser("annotate", help="annotate a query .h5ad with a model")
    a.add_argument("model")
    a.add_argument("query", help="query .h5ad")
    a.add_argument("-o", "--output", help="annotated .h5ad to write (the query with schash_* columns added)")
    a.add_argument("--csv", help="write the per-cell table as CSV; with --csv alone the query is never "
                   "loaded whole, so memory stays bounded by --chunk-size")
    a.add_argument("--chunk-size", type=int, default=8192, help="cells read and encoded at a time")
    a.add_argument("--layer")
    a.add_argument("--batch-key", help="standardise each query batch on its own")
    a.add_argument("--method", choices=("anchor", "knn"), default="anchor")
    a.add_argument("-k", type=int, default=15, help="neighbours for --method knn")
    a.add_argument("--no-progress", action="store_true")

    i = sub.add_parser("info", help="describe a model file")
    i.add_argument("model")
    i.add_argument("--json", action="store_true", help="print the metadata as JSON")
    return p


def _read_h5ad(path):
    import anndata as ad

    return ad.read_h5ad(path)


def _train(args) -> None:
    from pathlib import Path

    from . import train

    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output} exists; pass --overwrite to replace it")
    # the path, not a loaded AnnData: train() reads only the training cells and streams the rest
    model = train(args.reference, cell_type_key=args.cell_type_key, batch_key=args.batch_key, layer=args.layer,
                  n_bits=args.n_bits, n_top_genes=args.n_top_genes, transform=args.transform, scale=args.scale,
                  max_epochs=args.max_epochs, max_cells_per_type=args.max_cells_per_type, seed=args.seed,
                  device=args.device, progress=not args.no_progress)
    model.save(args.output, overwrite=args.overwrite)
    print(model)
    print(f"validation macro F1 {model.history['best_val_macro_f1']:.3f}; model written to {args.output}")


def _annotate(args) -> None:
    from . import load
    from ._api import write_annotation

    if not args.output and not args.csv:
        raise OSError("nothing to write: give -o OUT.h5ad and/or --csv OUT.csv")
    model = load(args.model)
    # encode straight from the file, a chunk at a time
    enc = model._pass(args.query, layer=args.layer, batch_key=args.batch_key, chunk_size=args.chunk_size,
                      progress=not args.no_progress)
    df = model.call(enc, method=args.method, k=args.k)
    if args.csv:
        df.add_prefix("schash_").to_csv(args.csv)
    if args.output:
        query = _read_h5ad(args.query)
        write_annotation(query, model, enc, df, method=args.method, k=args.k, layer=args.layer,
                         batch_key=args.batch_key)
        query.write_h5ad(args.output)
    written = " and ".join(p for p in (args.output, args.csv) if p)
    print(f"annotated {len(df)} cells ({enc.n_genes_matched} of {len(model.genes)} model genes found); "
          f"written to {written}")
    print(df["pruned_label"].value_counts().to_string())


def _info(args) -> None:
    from ._io import _read_header
    from pathlib import Path

    meta = _read_header(Path(args.model))
    if args.json:
        print(json.dumps(meta, indent=2))
        return
    from . import load

    print(load(args.model))
    print(f"format {meta['format']} v{meta['format_version']}, written by schash {meta['schash_version']}")
    h = meta.get("history", {})
    if h:
        print(f"trained {len(h.get('epoch', []))} epochs, best validation macro F1 {h.get('best_val_macro_f1', 0):.3f}")


def main(argv=None) -> int:
    import warnings

    args = _parser().parse_args(argv)
    before = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *a, **k: f"schash: warning: {message}\n"
    from ._errors import SchashError

    try:
        {"train": _train, "annotate": _annotate, "info": _info}[args.command](args)
    except (SchashError, OSError, KeyboardInterrupt) as err:
        msg = str(err) if not isinstance(err, KeyboardInterrupt) else "interrupted"
        print(f"schash: error: {msg}", file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = before
    return 0


if __name__ == "__main__":
    sys.exit(main())
