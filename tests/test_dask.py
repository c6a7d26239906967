"""Issue 13: Dask input and encoding on a Dask cluster give what one machine gives, bit for bit.

The cluster is a ``distributed.LocalCluster`` of two one-thread worker processes; chunk
sizes (700) do not divide the number of cells (3001) and differ from the Dask array's own
blocks (1000 rows), so blocks are cut again to the encoder's chunks.  Without the ``dask``
extra the Dask tests are skipped; the test of the error that names the extra always runs.
"""

from __future__ import annotations

import importlib.util
import logging
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from conftest import environment_as_at_start, make_counts

import schash
from schash import InputError
from schash._cli import main

HAVE_DASK = all(importlib.util.find_spec(m) is not None for m in ("dask", "distributed"))
needs_dask = pytest.mark.skipif(not HAVE_DASK, reason="needs the dask extra (pip install 'schash-annotate[dask]')")
pytestmark = pytest.mark.filterwarnings("ignore:Writing zarr v2")  # anndata writing the test .zarr files
CHUNK = 700  # the encoder's chunks: 3001 cells are 4 chunks of 700 and one of 201


@pytest.fixture(scope="module")
def query():
    q = make_counts(n_cells=3001, n_genes=300, seed=7)
    X = q.X.tolil()
    X[[5, 1400, 3000]] = 0  # a few empty cells (Unassigned, confidence 0)
    q.X = X.tocsr()
    return q


@pytest.fixture(scope="module")
def reference():
    return make_counts(n_cells=2000, n_genes=300, seed=0)


@pytest.fixture(scope="module")
def models(reference):
    kw = dict(cell_type_key="cell_type", batch_key="batch", max_epochs=5, progress=False)
    y = reference.obs["cell_type"].astype(str).to_numpy()
    few = reference[np.setdiff1d(np.arange(reference.n_obs), np.flatnonzero(y == "type_3")[6:])].copy()
    return {"reference": schash.train(reference, **kw), "batch": schash.train(reference, scale="batch", **kw),
            "rare": schash.train(few, **kw)}  # type_3 from 6 cells: the rare types' contest runs per chunk


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with environment_as_at_start(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                 dashboard_address=":0", silence_logs=logging.ERROR) as c:
        yield c


@pytest.fixture(autouse=True)
def _workers_start_clean():
    """Workers started by a test (``--scheduler local:2``) get the session's starting environment."""
    with environment_as_at_start():
        yield


@pytest.fixture
def client(cluster):
    from distributed import Client

    with Client(cluster) as c:
        yield c


def lazy(adata, rows=1000):
    """The same AnnData with X as a Dask array of ``rows``-row blocks."""
    import dask.array as da

    return ad.AnnData(X=da.from_array(adata.X, chunks=(rows, adata.n_vars), asarray=False), obs=adata.obs,
                      var=adata.var)


# -- without the extra ------------------------------------------------------------------------------
def test_dask_input_and_scheduler_without_the_extra_name_it(monkeypatch, tmp_path, synth_model, capsys):
    for name in ("dask", "dask.array", "distributed"):
        monkeypatch.setitem(sys.modules, name, None)  # import dask now fails, as where it is not installed
    (tmp_path / "q.zarr").mkdir()
    with pytest.raises(InputError, match=r"schash-annotate\[dask\]"):
        synth_model.predict(str(tmp_path / "q.zarr"))
    synth_model.save(tmp_path / "m.schash")
    for argv in (["annotate", str(tmp_path / "m.schash"), str(tmp_path / "q.zarr"), "--csv", str(tmp_path / "a.csv")],
                 ["annotate", str(tmp_path / "m.schash"), str(tmp_path / "q.h5ad"), "--csv", str(tmp_path / "a.csv"),
                  "--scheduler", "local"],
                 ["train", str(tmp_path / "r.h5ad"), "--cell-type-key", "x", "-o", str(tmp_path / "n.schash"),
                  "--scheduler", "local:2"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "pip install 'schash-annotate[dask]'" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.schash", "q.zarr"]  # nothing written


def test_plain_input_never_imports_dask(synth, synth_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)
    assert len(synth_model.predict(synth[:50])) == 50


# -- identical results ---------------------------------------------------------------------------------
def test_a_chunk_gives_the_same_bits_with_any_number_of_threads():
    """A one-thread Dask worker must encode a chunk exactly as the calling process does with all its threads
    (BLAS splitting a sum over 2,000 genes among threads once changed typicality of 1 cell in 10,000)."""
    import os

    import torch
    from scipy import sparse
    from threadpoolctl import threadpool_limits

    from schash._encode import Encoder
    from schash._module import HashMLP
    from schash._novelty import NoveltyScorer
    from schash._preprocess import Preprocessor
    from schash._scaled import Scaled

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no other thread count to compare with")
    rng, G, f32 = np.random.default_rng(0), 2000, np.float32
    mean, std = rng.random(G, dtype=f32), rng.random(G, dtype=f32) + 0.5
    F = sparse.random(4096, G, density=0.1, format="csr", dtype=f32, random_state=1) * 5
    block = Scaled(F, np.zeros(4096, np.int64), mean[None], std[None], np.ones(G, bool), 10.0)
    torch.manual_seed(0)
    module = HashMLP(G, 64).eval()
    comps = np.linalg.qr(rng.normal(size=(G, 30)))[0].T.astype(f32)
    scorer = NoveltyScorer(comps, rng.normal(size=G).astype(f32), rng.normal(size=(300, 31)).astype(f32),
                           np.sort(rng.random(5000)).astype(f32), np.sort(rng.normal(size=5000)).astype(f32),
                           clarity_coef=rng.normal(size=(4, 31)).astype(f32), clarity_intercept=np.zeros(4, f32),
                           clarity_calibration=np.sort(rng.uniform(0.25, 1, 5000)).astype(f32))
    enc = Encoder(Preprocessor(pd.Index([f"g{i}" for i in range(G)]), mean, std), module,
                  np.sign(rng.normal(size=(4, 64))).astype(f32), scorer)
    many, threads = enc.block(block), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with threadpool_limits(1):
            one = enc.block(block)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(many, one, strict=True):
        assert np.array_equal(a, b)

@needs_dask
@pytest.mark.parametrize("scale", ["reference", "batch", "rare"])
def test_cluster_gives_identical_codes_calls_and_typicality(client, models, query, scale):
    model = models[scale]
    assert (model.rare is not None) == (scale == "rare")
    kw = dict(chunk_size=CHUNK, batch_key="batch" if scale == "batch" else None)
    one, dq = model.encoded(query, **kw), lazy(query)
    many = model.encoded(dq, **kw)
    assert np.array_equal(one.codes, many.codes)  # bit for bit
    assert np.array_equal(one.typicality, many.typicality) and np.array_equal(one.empty, many.empty)
    assert (one.kind, one.n_genes_matched) == (many.kind, many.n_genes_matched) and many.empty.sum() == 3
    assert one.cells.equals(many.cells)
    for method in ("auto", "anchor", "knn"):
        pd.testing.assert_frame_equal(model.predict(query, method=method, **kw),
                                      model.predict(dq, method=method, **kw), check_exact=True)
    assert np.array_equal(model.encode(query, **kw), model.encode(dq, **kw))
    # the projection that places cells on a reference map, too
    from schash._data import Source

    with Source(query) as a, Source(dq) as b:
        assert np.array_equal(model.encoder.run(a, keep_projected=True, **kw).projected,
                              model.encoder.run(b, keep_projected=True, **kw).projected)


@needs_dask
def test_batch_statistics_are_the_ones_of_one_machine(client, models, query):
    from schash import _dask
    from schash._data import Source
    from schash._encode import ScaledPass

    model = models["batch"]
    with Source(query) as a, Source(lazy(query, rows=333)) as b:
        one = ScaledPass(model.pre, a, batch_key="batch", chunk_size=CHUNK)
        plan, groups = _dask.plan(model.pre, b, batch_key="batch", chunk_size=CHUNK)
    assert np.array_equal(one.mean, plan.mean) and np.array_equal(one.std, plan.std)
    assert np.array_equal(one.groups, groups) and np.array_equal(one.present, plan.present)


@needs_dask
def test_annotate_writes_the_same_fields(client, models, query):
    model = models["reference"]
    one, many = query.copy(), lazy(query)
    schash.annotate(one, model, neighbors=5, chunk_size=CHUNK)
    schash.annotate(many, model, neighbors=5, chunk_size=CHUNK)
    pd.testing.assert_frame_equal(one.obs, many.obs, check_exact=True)
    for key in one.obsm:
        a, b = one.obsm[key], many.obsm[key]
        assert (a.equals(b) if isinstance(a, pd.DataFrame) else np.array_equal(a, b)), key


@needs_dask
def test_zarr_path_with_and_without_a_cluster(models, query, tmp_path, cluster):
    from distributed import Client

    query.write_zarr(tmp_path / "q.zarr")
    model = models["reference"]
    expected = model.predict(query, chunk_size=CHUNK)
    got = model.predict(str(tmp_path / "q.zarr"), chunk_size=CHUNK)  # Dask's local threads
    pd.testing.assert_frame_equal(expected, got, check_exact=True)
    with Client(cluster):
        pd.testing.assert_frame_equal(expected, model.predict(tmp_path / "q.zarr", chunk_size=CHUNK),
                                      check_exact=True)


@needs_dask
def test_reference_database_built_on_the_cluster(client, reference):
    kw = dict(cell_type_key="cell_type", batch_key="batch", max_epochs=3, max_cells_per_type=300, progress=False)
    one, many = schash.train(reference, **kw), schash.train(lazy(reference, rows=640), **kw)
    assert np.array_equal(one.ref_codes, many.ref_codes) and np.array_equal(one.ref_labels, many.ref_labels)
    assert np.array_equal(one.ref_batches, many.ref_batches) and one.threshold == many.threshold
    for (name, a), b in zip(one.module.state_dict().items(), many.module.state_dict().values(), strict=True):
        assert np.array_equal(a.numpy(), b.numpy()), name


@needs_dask
def test_errors_found_on_a_worker_are_input_errors(client, models, query):
    bad = query.copy()
    X = bad.X.tolil()
    X[2900, 3] = -1.0  # in the last chunk, found by the worker that reads it
    bad.X = X.tocsr()
    with pytest.raises(InputError, match="negative values"):
        models["reference"].predict(lazy(bad), chunk_size=CHUNK)


@needs_dask
def test_dask_array_with_genes_and_unknown_block_sizes(client, models, query):
    import dask.array as da

    model = models["reference"]
    X = da.from_array(query.X.toarray(), chunks=(512, 100))  # dense, blocks of columns too
    expected = model.predict(query.X.toarray(), genes=query.var_names, chunk_size=CHUNK)
    got = model.predict(X, genes=query.var_names, chunk_size=CHUNK)
    pd.testing.assert_frame_equal(expected, got, check_exact=True)
    with pytest.raises(InputError, match="compute_chunk_sizes"):
        model.predict(X[X[:, 0] >= 0], genes=query.var_names)


# -- the command line ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory, models, query, reference):
    d = tmp_path_factory.mktemp("dask_cli")
    models["reference"].save(d / "m.schash")
    query.write_h5ad(d / "q.h5ad")
    if HAVE_DASK:
        query.write_zarr(d / "q.zarr")
        reference.write_zarr(d / "ref.zarr")
    reference.write_h5ad(d / "ref.h5ad")
    return d


def same_table(parquet, csv):
    table, csv = pd.read_parquet(parquet), pd.read_csv(csv, index_col=0, float_precision="round_trip")
    assert list(table.index) == list(csv.index) and list(table.columns) == list(csv.columns)
    for col in csv:
        a = table[col].astype(str) if table[col].dtype == "category" else table[col]
        assert np.array_equal(a.to_numpy(), csv[col].to_numpy()), col


@needs_dask
def test_cli_streams_csv_and_parquet_identical_to_one_machine(files, cluster, tmp_path, capsys):
    m, chunk = str(files / "m.schash"), ["--chunk-size", str(CHUNK), "--no-progress"]
    assert main(["annotate", m, str(files / "q.h5ad"), "--csv", str(tmp_path / "one.csv"), *chunk]) == 0
    expected = (tmp_path / "one.csv").read_bytes()
    for query, sched in (("q.zarr", ["--scheduler", cluster.scheduler_address]), ("q.zarr", []),
                         ("q.h5ad", ["--scheduler", cluster.scheduler_address])):
        out = tmp_path / f"{query.replace('.', '_')}{len(sched)}"
        assert main(["annotate", m, str(files / query), "--csv", f"{out}.csv", "--parquet", f"{out}.parquet",
                     *sched, *chunk]) == 0, capsys.readouterr().err
        assert open(f"{out}.csv", "rb").read() == expected
        same_table(f"{out}.parquet", tmp_path / "one.csv")
    assert "annotated 3001 cells" in capsys.readouterr().out


@needs_dask
def test_cli_streamed_novelty_alpha(files, tmp_path):
    m, chunk = str(files / "m.schash"), ["--chunk-size", str(CHUNK), "--no-progress", "--novelty-alpha", "0.3"]
    assert main(["annotate", m, str(files / "q.h5ad"), "--csv", str(tmp_path / "one.csv"), *chunk]) == 0
    assert main(["annotate", m, str(files / "q.zarr"), "--csv", str(tmp_path / "many.csv"), *chunk]) == 0
    assert (tmp_path / "many.csv").read_bytes() == (tmp_path / "one.csv").read_bytes()
    assert main(["annotate", m, str(files / "q.zarr"), "--csv", str(tmp_path / "default.csv"), *chunk[:-2]]) == 0
    un = [(pd.read_csv(tmp_path / f)["schash_pruned_label"] == "Unassigned").sum() for f in ("default.csv", "one.csv")]
    assert un[0] < un[1]


@needs_dask
def test_cli_parquet_without_dask_and_h5ad_output_from_zarr(files, tmp_path):
    m = str(files / "m.schash")
    assert main(["annotate", m, str(files / "q.h5ad"), "--parquet", str(tmp_path / "a.parquet"), "--csv",
                 str(tmp_path / "a.csv"), "--no-progress"]) == 0
    same_table(tmp_path / "a.parquet", tmp_path / "a.csv")
    assert main(["annotate", m, str(files / "q.zarr"), "-o", str(tmp_path / "z.h5ad"), "--no-progress"]) == 0
    one = pd.read_csv(tmp_path / "a.csv", index_col=0, float_precision="round_trip")
    got = ad.read_h5ad(tmp_path / "z.h5ad").obs
    assert np.array_equal(got["schash_confidence"].to_numpy(), one["schash_confidence"].to_numpy())


@needs_dask
def test_cli_train_on_a_local_cluster(files, tmp_path):
    argv = ["--cell-type-key", "cell_type", "--batch-key", "batch", "--max-epochs", "3", "--max-cells-per-type",
            "300", "--no-progress"]
    assert main(["train", str(files / "ref.h5ad"), "-o", str(tmp_path / "one.schash"), *argv]) == 0
    assert main(["train", str(files / "ref.zarr"), "-o", str(tmp_path / "many.schash"), "--scheduler", "local:2",
                 *argv]) == 0
    one, many = schash.load(tmp_path / "one.schash"), schash.load(tmp_path / "many.schash")
    assert np.array_equal(one.ref_codes, many.ref_codes) and np.array_equal(one.ref_labels, many.ref_labels)



@needs_dask
def test_a_bad_scheduler_is_one_line(files, tmp_path, capsys):
    argv = ["annotate", str(files / "m.schash"), str(files / "q.zarr"), "--csv", str(tmp_path / "a.csv")]
    assert main(argv + ["--scheduler", "local:none"]) == 2
    assert "whole number of workers" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
