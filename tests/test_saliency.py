"""Saliency must find biology: known PBMC markers among each type's top genes, unlike a shuffled control."""

import numpy as np
import pytest

import schash

MARKERS = {
    "CD19+ B": ["MS4A1", "CD79A", "CD79B"],
    "CD14+ Monocyte": ["LYZ", "S100A8", "S100A9", "FCN1", "CST3"],
    # GNLY and NKG7 are also high in this dataset's CD8+ cytotoxic T cells, so the network
    # tells NK cells apart by the NK-specific markers; all of these are standard NK markers
    "CD56+ NK": ["GNLY", "NKG7", "PRF1", "GZMB", "KLRD1", "KLRF1", "SPON2", "CD160", "XCL1", "MATK"],
}


def _marker_hits(model, adata, labels, n=20):
    sal = model.saliency(adata, by=labels)
    top = schash.top_genes(sal, n)
    return {t: len(set(top.loc[top.group == t, "gene"]) & set(m)) for t, m in MARKERS.items()}


@pytest.fixture(scope="module")
def pbmc_model(pbmc68k):
    return schash.train(pbmc68k, cell_type_key="bulk_labels", min_cells_per_type=5, progress=False)


def test_saliency_shape_and_top_genes(pbmc_model, pbmc68k):
    sal = pbmc_model.saliency(pbmc68k, by="label")
    assert sal.shape[0] == len(pbmc_model.genes) and set(sal.columns) <= set(pbmc_model.cell_types)
    top = schash.top_genes(sal, 5)
    assert list(top.columns) == ["group", "rank", "gene", "score"]
    assert (top.groupby("group")["rank"].max() == 5).all()
    assert top.groupby("group")["score"].apply(lambda s: s.is_monotonic_decreasing).all()


def test_known_markers_rank_high_unlike_shuffled_labels(pbmc_model, pbmc68k):
    labels = pbmc68k.obs["bulk_labels"].astype(str).to_numpy()
    hits = _marker_hits(pbmc_model, pbmc68k, labels)
    assert all(h >= 1 for h in hits.values()), hits
    assert sum(hits.values()) >= 5, hits
    shuffled = np.random.default_rng(0).permutation(labels)
    a = pbmc68k.copy()
    a.obs["shuffled"] = shuffled
    control = schash.train(a, cell_type_key="shuffled", min_cells_per_type=5, progress=False)
    control_hits = _marker_hits(control, a, shuffled)
    assert sum(control_hits.values()) < sum(hits.values()) / 2, (hits, control_hits)


def test_per_cell_top_genes(pbmc_model, pbmc68k):
    from schash._saliency import compute_saliency

    res = compute_saliency(pbmc_model, pbmc68k[:50].copy(), n_top_cell=3)
    assert len(res.cell_top_genes) == 50
    assert all(len(s.split(",")) == 3 for s in res.cell_top_genes)
