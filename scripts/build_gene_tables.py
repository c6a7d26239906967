#!/usr/bin/env python
"""Build the gene identifier tables that schash ships in ``python/schash/data/``.

    python scripts/build_gene_tables.py [SOURCE_DIR]      (default: ../shared/genes)

``SOURCE_DIR`` holds the two CSV files described in its README (no header):

* ``human_gencode44_id2name.csv``: human Ensembl gene ID (no version), symbol; GENCODE 44;
* ``human2mouse_ensembl105.csv``: human symbol, mouse symbol (empty where none); Ensembl 105
  orthologues, one-to-many pairs on several rows.

Both come from CellTypist's repository (Teichlab/celltypist, MIT).  The installed package
never reads ``SOURCE_DIR``: it reads the compact tables written here, with
:mod:`importlib.resources`.  The output is deterministic (sorted rows, gzip without a
timestamp), so rebuilding from the same sources gives byte-identical files.

Written tables (tab-separated, gzip, one header line):

``human_genes.tsv.gz``  ``ensembl_id``, ``symbol``
    Only genes with a symbol: GENCODE gives 20k genes their own ID as "symbol", which says
    nothing a name's form does not already say.
``human_mouse_orthologues.tsv.gz``  ``human``, ``mouse``, ``one_to_one``
    Every distinct pair of symbols, ``one_to_one`` = 1 where neither symbol has another
    partner (a partner without a symbol counts: such a pair is not one-to-one).  Symbols
    with no orthologue are left out.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "python" / "schash" / "data"
GENES_CSV = "human_gencode44_id2name.csv"
ORTHO_CSV = "human2mouse_ensembl105.csv"


def _read(path: Path, columns: list[str]) -> pd.DataFrame:
    df = pd.read_csv(path, header=None, names=columns, dtype=str, keep_default_na=False)
    return df.apply(lambda c: c.str.strip())


def human_genes(src: Path) -> pd.DataFrame:
    g = _read(src / GENES_CSV, ["ensembl_id", "symbol"])
    if not g.ensembl_id.str.fullmatch(r"ENSG\d{11}").all():
        raise SystemExit(f"{GENES_CSV}: expected human Ensembl gene IDs without version in column 1")
    if g.ensembl_id.duplicated().any():
        raise SystemExit(f"{GENES_CSV}: an Ensembl ID occurs twice")
    g = g[(g.symbol != "") & (g.symbol != g.ensembl_id)]
    return g.sort_values("ensembl_id", ignore_index=True)


def orthologues(src: Path) -> pd.DataFrame:
    o = _read(src / ORTHO_CSV, ["human", "mouse"]).drop_duplicates()
    pairs = o[(o.human != "") & (o.mouse != "")]
    # a pair is one-to-one when neither symbol has another partner.  An empty mouse column
    # means "no mouse orthologue"; an empty human column is a human gene without a symbol,
    # which is a partner of its mouse gene all the same
    n_mouse_of = o[o.mouse != ""].human.value_counts()
    n_human_of = o[o.mouse != ""].mouse.value_counts()
    one = (pairs.human.map(n_mouse_of) == 1) & (pairs.mouse.map(n_human_of) == 1)
    pairs = pairs.assign(one_to_one=one.astype(int))
    return pairs.sort_values(["human", "mouse"], ignore_index=True)


def write(df: pd.DataFrame, path: Path) -> None:
    data = df.to_csv(sep="\t", index=False, lineterminator="\n").encode()
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    print(f"{path.relative_to(ROOT)}: {len(df)} rows, {path.stat().st_size / 1e3:.0f} kB")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", nargs="?", default=str(ROOT.parent / "shared" / "genes"),
                    help="folder with the two source CSV files (default: ../shared/genes)")
    args = ap.parse_args(argv)
    src = Path(args.source)
    missing = [f for f in (GENES_CSV, ORTHO_CSV) if not (src / f).is_file()]
    if missing:
        print(f"build_gene_tables: {src} lacks {', '.join(missing)}", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)
    write(human_genes(src), OUT / "human_genes.tsv.gz")
    write(orthologues(src), OUT / "human_mouse_orthologues.tsv.gz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
