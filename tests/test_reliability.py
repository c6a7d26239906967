"""Issue 9: labels by cell (1), arguments (5), all-or-nothing annotate (6), input kind (8), progress bars (9)."""

import copy
import io
import logging

import numpy as np
import pandas as pd
import pytest
from conftest import make_counts
from scipy import sparse

import schash
from schash import _args
from schash._values import detect_kind

FAST = dict(max_epochs=2, n_top_genes=100, progress=False)


@pytest.fixture(scope="module")
def small():
    return make_counts(n_cells=240, n_genes=120, n_types=3, seed=5)


@pytest.fixture()
def query(synth):
    return synth[:60].copy()


# -- 1: a Series is matched to the cells by name, a bare array by position -------------------------

def test_shuffled_label_and_batch_series_are_aligned_by_cell_name(small):
    shuffled_labels = small.obs["cell_type"].sample(frac=1, random_state=1)
    shuffled_batches = small.obs["batch"].sample(frac=1, random_state=2)
    assert not shuffled_labels.index.equals(small.obs_names)
    model = schash.train(small, shuffled_labels, batches=shuffled_batches, **FAST)
    ref = model.reference_obs()
    assert (ref["cell_type"].astype(str).to_numpy() == small.obs["cell_type"].astype(str).to_numpy()).all()
    assert (ref["batch"].astype(str).to_numpy() == small.obs["batch"].astype(str).to_numpy()).all()


def test_bare_array_and_plain_series_stay_positional(small):
    labels = small.obs["cell_type"].astype(str).to_numpy()
    model = schash.train(small, labels, **FAST)
    assert (model.reference_obs()["cell_type"].astype(str).to_numpy() == labels).all()
    model2 = schash.train(small, pd.Series(list(labels)), **FAST)  # 0..n-1 index: no names to match
    np.testing.assert_array_equal(model2.ref_labels, model.ref_labels)


def test_series_missing_cells_is_an_error_naming_them(small):
    labels = small.obs["cell_type"].drop(small.obs_names[[3, 7]])
    with pytest.raises(schash.InputError, match=r"2 cells have no cell type.*'c3', 'c7'"):
        schash.train(small, labels, **FAST)
    with pytest.raises(schash.InputError, match="no batch"):
        schash.train(small, cell_type_key="cell_type", batches=small.obs["batch"].iloc[1:], **FAST)


def test_add_reference_aligns_a_series_by_cell_name(synth_model, synth):
    model = copy.deepcopy(synth_model)
    new = synth[:50].copy()
    labels = new.obs["cell_type"].sample(frac=1, random_state=3)
    n_before = len(model.ref_labels)
    model.add_reference(new, labels, batches=new.obs["batch"].sample(frac=1, random_state=4))
    added = model.reference_obs().iloc[n_before:]
    assert (added["cell_type"].astype(str).to_numpy() == new.obs["cell_type"].astype(str).to_numpy()).all()
    assert (added["batch"].astype(str).to_numpy() == new.obs["batch"].astype(str).to_numpy()).all()


def test_a_cell_type_named_unassigned_is_refused(small):
    labels = small.obs["cell_type"].astype(str).replace({"type_0": "Unassigned"})
    with pytest.raises(schash.InputError, match="reserves"):
        schash.train(small, labels, **FAST)


# -- 5: every numeric argument is checked at the boundary ------------------------------------------

@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=0), "k must be a whole number"),
        (dict(k=-3, method="knn"), "k must be a whole number"),
        (dict(k=10**6, method="knn"), "reference database holds 600 cells"),
        (dict(chunk_size=0), "chunk_size must be"),
        (dict(method="vote"), "method must be one of"),
        (dict(k=2.5), "k must be a whole number"),
    ],
)
def test_predict_arguments_are_checked(synth_model, query, kwargs, message):
    with pytest.raises(schash.InputError, match=message):
        synth_model.predict(query, **kwargs)


def test_neighbors_arguments_are_checked(synth_model, query):
    for k in (0, -1, 601):
        with pytest.raises(schash.InputError, match="k must be"):
            synth_model.neighbors(query, k=k)
    with pytest.raises(schash.InputError, match="chunk_size"):
        synth_model.encode(query, chunk_size=0)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(n_top_genes=0), "n_top_genes must be"),
        (dict(max_epochs=0), "max_epochs must be"),
        (dict(n_bits=12), "multiple of 8"),
        (dict(lr=0), "lr must be"),
        (dict(dropout=1.0), "dropout must be"),
        (dict(min_cells_per_type=0), "min_cells_per_type"),
        (dict(max_cells_per_type=0), "max_cells_per_type"),
        (dict(batch_size=-1), "batch_size"),
        (dict(prune_quantile=1.5), "prune_quantile"),
        (dict(novelty_alpha=-0.1), "novelty_alpha"),
        (dict(transform="sqrt"), "transform must be one of"),
        (dict(hidden=(64, 0)), "hidden layer width"),
        (dict(progress="yes"), "progress must be"),
        (dict(device="gpu0"), "device must be"),
    ],
)
def test_train_arguments_are_checked_before_any_work(small, kwargs, message, monkeypatch):
    import schash._train as api

    monkeypatch.setattr(api, "Source", lambda *a, **k: pytest.fail("read the data before checking arguments"))
    with pytest.raises(schash.InputError, match=message):
        schash.train(small, cell_type_key="cell_type", **{**FAST, **kwargs})


# -- 6: annotate writes everything or nothing, and only its own fields -----------------------------

def _snapshot(a):
    return (list(a.obs.columns), sorted(a.obsm.keys()), sorted(a.uns.keys()))


def test_failed_annotate_leaves_the_anndata_untouched(synth_model, query, monkeypatch):
    before = _snapshot(query)
    with pytest.raises(schash.InputError, match="neighbors"):
        schash.annotate(query, synth_model, neighbors=-1)
    assert _snapshot(query) == before

    def broken(*a, **k):
        raise MemoryError("no room for the neighbours")

    monkeypatch.setattr(type(synth_model), "composition_of_codes", broken)
    with pytest.raises(MemoryError):
        schash.annotate(query, synth_model, neighbors=5)
    assert _snapshot(query) == before


def test_rerun_removes_fields_of_the_earlier_run(synth_model, query, tmp_path):
    schash.annotate(query, synth_model, neighbors=5)
    assert "schash_batch_composition" in query.obsm and "schash_neighbor_batch" in query.obs
    query.write_h5ad(tmp_path / "q.h5ad")  # the record survives a round trip through a file
    import anndata as ad

    again = ad.read_h5ad(tmp_path / "q.h5ad")
    for a in (query, again):
        schash.annotate(a, synth_model)
        assert "schash_batch_composition" not in a.obsm and "schash_cell_type_composition" not in a.obsm
        assert "schash_neighbor_batch" not in a.obs and "schash_label" in a.obs
        assert a.uns["schash"]["params"]["neighbors"] is None or "neighbors" in a.uns["schash"]["params"]


def test_rerun_over_an_annotation_of_an_older_schash(synth_model, query):
    schash.annotate(query, synth_model, neighbors=5)
    del query.uns["schash"]["created"]  # what schash 0.1 wrote: no record of the keys
    schash.annotate(query, synth_model)
    assert "schash_batch_composition" not in query.obsm and "schash_neighbor_batch" not in query.obs
    assert "created" in query.uns["schash"]


def test_key_added_never_overwrites_fields_schash_did_not_create(synth_model, query):
    query.obsm["X_pca"] = np.ones((query.n_obs, 3))
    query.obs["mine_label"] = "keep me"
    before = _snapshot(query)
    with pytest.raises(schash.InputError, match="X_pca.*not written by schash"):
        schash.annotate(query, synth_model, key_added="pca")
    with pytest.raises(schash.InputError, match="mine_label"):
        schash.annotate(query, synth_model, key_added="mine")
    query.uns["other"] = {"a": 1}
    with pytest.raises(schash.InputError, match="uns\\['other'\\]"):
        schash.annotate(query, synth_model, key_added="other")
    for bad in (None, "", "a b", 3, "x-y"):
        with pytest.raises(schash.InputError, match="key_added"):
            schash.annotate(query, synth_model, key_added=bad)
    assert _snapshot(query)[:2] == before[:2] and (query.obsm["X_pca"] == 1).all()
    schash.annotate(query, synth_model, key_added="sh")
    assert list(query.uns["sh"]["created"]["obsm"]) == ["X_sh", "sh_codes", "sh_scores"]


# -- 8: what kind of values the input holds is decided once, from the whole input ------------------

def test_cpm_query_gets_the_labels_of_its_counts(synth_model, synth, caplog):
    counts = synth.X.toarray()
    cpm = synth.copy()
    cpm.X = sparse.csr_matrix(counts / counts.sum(1, keepdims=True) * 1e6)
    with caplog.at_level(logging.INFO, logger="schash"):
        a = synth_model.predict(synth)
        b = synth_model.predict(cpm)
    assert "detected as normalised" in caplog.text
    assert (a["label"] == b["label"]).all()
    assert (a["pruned_label"] == b["pruned_label"]).mean() > 0.99
    schash.annotate(cpm, synth_model)
    assert cpm.uns["schash"]["input_kind"] == "normalised"


def test_kinds_are_detected():
    rng = np.random.default_rng(0)
    counts = rng.poisson(1.0, (200, 50)).astype(np.float32)
    assert detect_kind(counts) == "counts"
    norm = counts / counts.sum(1, keepdims=True) * 10  # normalize_total to 10: small values, equal sums
    assert detect_kind(norm) == "normalised"
    assert detect_kind(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)) == "log"
    assert detect_kind(counts * 1000.37) == "normalised"  # e.g. RPKM/TPM: beyond the log range


def test_kind_comes_from_the_whole_input_not_the_first_chunk(synth_model, synth):
    q = synth.copy()
    X = q.X.toarray()
    X[:100] = 0  # the first chunk holds no counts
    q.X = sparse.csr_matrix(X)
    small_chunks = synth_model.predict(q, chunk_size=100)
    one_chunk = synth_model.predict(q, chunk_size=10_000)
    assert (small_chunks["label"] == one_chunk["label"]).all()
    ok = synth_model.predict(synth)["label"].iloc[100:]
    assert (small_chunks["label"].iloc[100:] == ok).all()


def test_reference_mixing_counts_and_rpkm_trains(small):
    ref = small.copy()
    X = ref.X.toarray().astype(np.float64)
    lengths = np.random.default_rng(0).uniform(0.5, 5.0, X.shape[1])
    half = np.arange(ref.n_obs) % 2 == 1
    X[half] = X[half] / X[half].sum(1, keepdims=True) * 1e9 / (lengths * 1e3)
    ref.X = sparse.csr_matrix(X)
    model = schash.train(ref, cell_type_key="cell_type", **FAST)
    assert model.pre.input_kind == "normalised"


def test_huge_values_are_too_large_not_nan(synth_model, synth):
    q = synth[:20].copy()
    X = q.X.toarray().astype(np.float64)
    X[0, 0] = 1e40
    q.X = X
    with pytest.raises(schash.InputError, match="too large.*1e\\+40"):
        synth_model.predict(q)


# -- 9: progress bars only on a terminal unless asked -------------------------------------------

class _Stream(io.StringIO):
    def __init__(self, tty):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_none_means_only_on_a_terminal(monkeypatch):
    import sys

    monkeypatch.setattr(sys, "stderr", _Stream(False))
    assert _args.progress(None) is False
    monkeypatch.setattr(sys, "stderr", _Stream(True))
    assert _args.progress(None) is True
    assert _args.progress(False) is False and _args.progress(True) is True


def test_no_bars_in_logs_by_default(synth_model, query, small, capsys):
    synth_model.predict(query)
    schash.annotate(query, synth_model, neighbors=3)
    synth_model.neighbors(query, k=3)
    schash.train(small, cell_type_key="cell_type", max_epochs=2, n_top_genes=100)
    assert "schash" not in capsys.readouterr().err
    synth_model.predict(query, progress=True)
    assert "schash encode" in capsys.readouterr().err


def test_saliency_groups_from_a_series_are_matched_by_cell_name(synth_model, query):
    by = query.obs["cell_type"].astype(str)
    a = synth_model.saliency(query, by=by)
    b = synth_model.saliency(query, by=by.sample(frac=1, random_state=0))
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(schash.InputError, match="n must be"):
        schash.top_genes(a, n=0)


def test_kind_of_a_mostly_empty_input_does_not_depend_on_chunk_size(synth_model):
    from conftest import make_counts

    from schash._data import Source

    big = make_counts(n_cells=6000, n_genes=300, seed=9)
    marker = sparse.csr_matrix((np.arange(1, 6001, dtype=np.float32), (np.arange(6000), np.zeros(6000, int))),
                               shape=(6000, 300))
    sampled = np.asarray(Source(marker, genes=list(big.var_names)).sample().max(axis=1).todense()).ravel()
    unseen = np.setdiff1d(np.arange(6000), sampled.astype(int) - 1)
    X = big.X.toarray()
    X[np.setdiff1d(np.arange(6000), unseen[-200:])] = 0  # the only counts are in rows the sample skips
    big.X = sparse.csr_matrix(X)
    a = synth_model.predict(big, chunk_size=500)
    b = synth_model.predict(big, chunk_size=6000)
    assert (a["label"] == b["label"]).all()
    schash.annotate(big, synth_model, chunk_size=500)
    assert big.uns["schash"]["input_kind"] == "counts"
