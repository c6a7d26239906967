"""Quick start: train schash on half of scanpy's bundled real PBMC data, annotate the other half.

Run with ``.venv/bin/python examples/quickstart.py`` after ``bash scripts/setup.sh``.
"""

import numpy as np
import scanpy as sc
from sklearn.model_selection import train_test_split

import schash

full = sc.datasets.pbmc68k_reduced()  # 700 PBMCs shipped with scanpy; .raw holds log-normalised values
adata = full.raw.to_adata()
adata.obs = full.obs[["bulk_labels", "louvain"]].copy()
ref_idx, query_idx = train_test_split(
    np.arange(adata.n_obs), test_size=0.5, stratify=adata.obs["bulk_labels"], random_state=0
)
reference, query = adata[ref_idx].copy(), adata[query_idx].copy()

model = schash.train(reference, cell_type_key="bulk_labels", min_cells_per_type=5, seed=0)
print(model)

schash.annotate(query, model)  # writes obs["schash_label"], obs["schash_pruned_label"], ...
truth = query.obs["bulk_labels"].astype(str)
accuracy = (query.obs["schash_label"].astype(str) == truth).mean()
print(f"\naccuracy on {query.n_obs} held-out cells: {accuracy:.3f}")
print(f"Unassigned: {(query.obs['schash_pruned_label'] == schash.UNASSIGNED).sum()} cells")
print(query.obs[["bulk_labels", "schash_label", "schash_distance", "schash_confidence"]].head())

top = schash.top_genes(model.saliency(query), n=5)
print("\ntop salient genes per predicted type:")
print(top.groupby("group")["gene"].apply(", ".join).to_string())

model.save("pbmc68k.schash", overwrite=True)
print("\nmodel saved to pbmc68k.schash; reload it with schash.load('pbmc68k.schash')")
