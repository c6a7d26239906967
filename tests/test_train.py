import numpy as np
import pytest
import torch

import schash
from schash._loop import TrainConfig, class_weights, sizes_from_data


def test_effective_number_weights_favour_rare_types():
    w = class_weights(np.array([0] * 1000 + [1] * 10), 2, beta=0.999)
    assert w[1] > 5 * w[0]
    np.testing.assert_allclose(w.sum(), 2.0, rtol=1e-5)


def test_sizes_follow_the_data():
    small = sizes_from_data(500, TrainConfig())
    large = sizes_from_data(1_000_000, TrainConfig())
    assert small[0] < large[0] and small[1] > large[1]
    # early stopping waits at most 8 epochs without improvement (and at least 3)
    assert all(3 <= sizes_from_data(n, TrainConfig())[2] <= 8 for n in (100, 1000, 10_000, 100_000, 1_000_000))
    assert sizes_from_data(1000, TrainConfig())[2] == 8


def test_same_seed_same_model(synth):
    kw = dict(cell_type_key="cell_type", batch_key="batch", max_epochs=3, progress=False)
    a = schash.train(synth, seed=5, **kw)
    b = schash.train(synth, seed=5, **kw)
    c = schash.train(synth, seed=6, **kw)
    for (k, va), vb in zip(a.module.state_dict().items(), b.module.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    np.testing.assert_array_equal(a.encode(synth), b.encode(synth))
    assert not all(torch.equal(x, y) for x, y in zip(a.module.state_dict().values(), c.module.state_dict().values(),
                                                   strict=True))


def test_history_is_kept(synth_model):
    h = synth_model.history
    assert len(h["epoch"]) == len(h["train_loss"]) == len(h["val_macro_f1"]) >= 1
    assert h["best_val_macro_f1"] == h["val_macro_f1"][h["best_epoch"] - 1]
    assert h["best_val_macro_f1"] >= max(h["val_macro_f1"]) - 0.01 or h["best_epoch"] < 5
    assert h["best_val_macro_f1"] > 0.9  # synthetic types are well separated


def test_single_type_and_missing_labels_are_errors(synth):
    with pytest.raises(schash.InputError, match="at least two"):
        schash.train(synth, labels=["x"] * synth.n_obs, progress=False)
    labels = synth.obs["cell_type"].astype(object).to_numpy().copy()
    labels[4] = None
    with pytest.raises(schash.InputError, match="1 cells have a missing cell type"):
        schash.train(synth, labels=labels, progress=False)
    with pytest.raises(schash.LabelKeyError, match="'nope' is not in obs"):
        schash.train(synth, cell_type_key="nope", progress=False)


def test_plain_sparse_matrix_with_labels(synth):
    m = schash.train(synth.X, labels=synth.obs["cell_type"].to_numpy(), genes=list(synth.var_names),
                     max_epochs=5, progress=False, n_top_genes=100)
    assert len(m.genes) == 100
    df = m.predict(synth.X, genes=list(synth.var_names))
    assert (df["label"].astype(str).to_numpy() == synth.obs["cell_type"].astype(str).to_numpy()).mean() > 0.9


def test_training_from_file_with_subsampling_keeps_every_cell_in_the_database(synth, tmp_path):
    path = tmp_path / "ref.h5ad"
    synth.write_h5ad(path)
    m = schash.train(str(path), cell_type_key="cell_type", batch_key="batch", max_cells_per_type=60,
                     max_epochs=5, progress=False)
    assert m.params["n_training_cells"] == 4 * 60
    assert len(m.ref_labels) == synth.n_obs and m.ref_codes.shape == (synth.n_obs, 8)
    np.testing.assert_array_equal(m.reference_obs()["cell_type"].astype(str), synth.obs["cell_type"].astype(str))
    df = m.predict(synth)
    assert (df["label"].astype(str).to_numpy() == synth.obs["cell_type"].astype(str).to_numpy()).mean() > 0.9
    # the same subsample in memory gives the same model
    m2 = schash.train(synth, cell_type_key="cell_type", batch_key="batch", max_cells_per_type=60,
                      max_epochs=5, progress=False)
    np.testing.assert_array_equal(m2.ref_codes, m.ref_codes)


@pytest.mark.parametrize("fused", [False, True])
def test_adamw_matches_torch_bit_for_bit(fused):
    """Both of our update paths give torch's own updates exactly: the single-tensor loop and, where the
    torch build has it, the fused kernel that training uses by default."""
    import torch

    from schash._optim import AdamW

    if fused and not hasattr(torch, "_fused_adamw_"):
        pytest.skip("this torch build has no fused AdamW kernel")
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    b = torch.nn.Sequential(torch.nn.Linear(20, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 4))
    b.load_state_dict(a.state_dict())
    ours = AdamW(list(a.parameters()), lr=1e-2, weight_decay=1e-3, fused=fused)
    assert AdamW(list(a.parameters()), lr=1e-2, weight_decay=1e-3).fused == hasattr(torch, "_fused_adamw_")
    ref = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=1e-3, **({"fused": True} if fused else
                                                                          {"foreach": False}))
    x = torch.randn(64, 20)
    for _ in range(25):
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad(set_to_none=True)
            (net(x) ** 2).mean().backward()
            opt.step()
    assert ours.fused == fused
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_dropout_zeroes_a_fraction_p_and_rescales_the_rest():
    import torch

    from schash._module import Dropout

    torch.manual_seed(0)
    x = torch.rand(400, 250) + 0.5
    x.requires_grad_(True)
    d = Dropout(0.2)
    y = d(x)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - 0.2) < 0.01  # 100,000 draws: SD 0.0013
    torch.testing.assert_close(y[kept], (x * 1.25)[kept])
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() * 1.25)  # the gradient flows through kept values only
    assert not torch.equal(d(x), y)  # a new mask each call
    d.eval()
    assert d(x) is x
    assert Dropout(0.0).train()(x) is x


def test_sparse_first_layer_gives_the_dense_outputs_and_gradients(synth):
    """Large training batches use a sparse first layer; it must compute what the dense rows do."""
    import torch

    from schash._data import extract
    from schash._first_layer import forward
    from schash._loop import TrainConfig, _Rows
    from schash._module import HashMLP
    from schash._preprocess import fit_preprocessor

    expr = extract(synth)
    batches = synth.obs["batch"].astype(str).to_numpy()
    for scale in ("reference", "batch"):  # one group, and a group per batch
        _, X = fit_preprocessor(expr, n_top_genes=None, batches=batches, transform="log", scale=scale)
        rows = _Rows(X, TrainConfig(augment=0.0), log_scale=True)
        b = np.arange(0, 120, 3)
        torch.manual_seed(0)
        model = HashMLP(X.shape[1], 32, (16,), 0.0)
        dense_out = model(rows.get(b))
        sparse_out = forward(model, rows.sparse_batch(b))
        torch.testing.assert_close(sparse_out, dense_out, rtol=1e-4, atol=1e-5)
        grads = []
        for out in (dense_out, sparse_out):
            model.zero_grad()
            (out**2).sum().backward(retain_graph=True)
            grads.append(model.net[0].weight.grad.clone())
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)


def test_training_on_large_sparse_batches_learns(synth, monkeypatch):
    import schash._loop as loop

    monkeypatch.setattr(loop, "SPARSE_MIN_WORK", 1)  # every batch through the sparse first layer
    model = schash.train(synth, cell_type_key="cell_type", max_epochs=8, progress=False)
    assert model.history["best_val_macro_f1"] > 0.9
    acc = (model.predict(synth)["label"].astype(str) == synth.obs["cell_type"].astype(str).to_numpy()).mean()
    assert acc > 0.9


def test_batches_made_ahead_give_the_same_model(synth, monkeypatch):
    """Batches made in a worker thread draw their augmentation in the plain loop's order."""
    import schash._loop as loop

    kw = dict(cell_type_key="cell_type", batch_key="batch", max_epochs=3, progress=False, seed=2)
    ahead = schash.train(synth, **kw)
    monkeypatch.setattr(loop, "ahead", lambda items, depth=2: items)
    plain = schash.train(synth, **kw)
    for (k, va), vb in zip(ahead.module.state_dict().items(), plain.module.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_ahead_keeps_order_raises_failures_and_stops_when_left():
    import itertools
    import threading

    from schash._concurrency import ahead as _ahead

    assert list(_ahead(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for x in _ahead(failing()):
            got.append(x)
    assert got == [1]
    for x in _ahead(itertools.count()):  # endless: leaving the loop must stop the producer
        if x == 3:
            break
    assert not any(t.name == "schash-batches" for t in threading.enumerate())


@pytest.mark.parametrize("where", ["train_network", "fit_novelty"])
def test_a_failure_beside_the_other_thread_is_raised(synth, monkeypatch, where):
    """The network and the novelty scorer are fitted in two threads: a failure in either reaches the
    caller (and a failed training does not leave the scorer's thread waiting for a network)."""
    import schash._train as tr

    def boom(*args, **kwargs):
        raise ValueError(f"failed in {where}")

    monkeypatch.setattr(tr, where, boom)
    with pytest.raises(ValueError, match=f"failed in {where}"):
        schash.train(synth, cell_type_key="cell_type", max_epochs=2, progress=False)


def test_prune_threshold_is_the_clipped_quantile_of_the_cells_it_is_given():
    from schash._train import _prune_threshold

    rng = np.random.default_rng(0)
    anchors = np.where(rng.random((3, 64)) < 0.5, -1.0, 1.0).astype(np.float32)
    flips = np.array([0, 2, 5, 9, 11, 20, 30])  # each row: anchor 0 with this many bits flipped

    class Net:
        @staticmethod
        def logits_dense(rows):
            out = np.repeat(anchors[:1], len(rows), axis=0)
            for i, f in enumerate(rows[:, 0].astype(int)):
                out[i, :f] *= -1
            return out

    rows = lambda idx: flips[idx, None].astype(np.float32)  # noqa: E731
    idx = np.arange(len(flips))
    dist = np.minimum(flips, 64 - flips)  # distance to the nearest anchor is at most the flips
    assert _prune_threshold(Net, rows, idx[:4], anchors, 1.0) == 9  # within [8, 23]
    assert _prune_threshold(Net, rows, idx[:2], anchors, 1.0) == 8  # floor K/8
    assert _prune_threshold(Net, rows, idx[:6], anchors, 1.0) == 20  # above the old cap K/4 - 1
    assert _prune_threshold(Net, rows, idx, anchors, 1.0) == 23  # cap 3K/8 - 1
    assert dist.max() > 23


@pytest.mark.parametrize("augment", [0.0, 0.8])
def test_prune_threshold_sees_augmented_validation_cells(synth, monkeypatch, augment):
    """The threshold is calibrated on validation cells perturbed as in training (plain without augmentation)."""
    import schash._train as tr

    seen = {}

    def capture(module, rows, val_idx, anchors, quantile):
        seen["rows"], seen["val"] = rows(val_idx), val_idx
        return 10

    monkeypatch.setattr(tr, "_prune_threshold", capture)
    real_rows = tr.calibration_rows
    plain = {}

    def calibration_rows(X, cfg, log_scale, seed):
        plain["X"] = X
        return real_rows(X, cfg, log_scale, seed)

    monkeypatch.setattr(tr, "calibration_rows", calibration_rows)
    model = schash.train(synth, cell_type_key="cell_type", max_epochs=2, augment=augment, progress=False)
    assert model.threshold == 10
    same = np.allclose(seen["rows"], plain["X"].rows(seen["val"]))
    assert same == (augment == 0.0)


def test_validation_batches_kept_or_remade_give_the_same_model(synth, monkeypatch):
    import schash._loop as loop

    kw = dict(cell_type_key="cell_type", max_epochs=3, progress=False, seed=1)
    kept = schash.train(synth, **kw)
    monkeypatch.setattr(loop, "VAL_CACHE_BYTES", 0)  # remade each epoch
    remade = schash.train(synth, **kw)
    assert kept.history["val_loss"] == remade.history["val_loss"]
    for (k, va), vb in zip(kept.module.state_dict().items(), remade.module.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_loss_is_class_weighted_bce_toward_the_anchor_bits_plus_quantisation():
    import torch

    from schash._loop import _loss

    torch.manual_seed(0)
    out = torch.tanh(torch.randn(50, 16))
    target = (torch.randint(0, 2, (50, 16)) * 1.0)
    w = torch.rand(50) + 0.1
    p = ((out + 1) / 2).clamp(1e-6, 1 - 1e-6)
    bce = torch.nn.functional.binary_cross_entropy(p, target, reduction="none").mean(1)
    expected = (w * bce).sum() / w.sum() + 0.1 * ((out.abs() - 1) ** 2).mean()
    torch.testing.assert_close(_loss(out, target, w, 0.1), expected)


def test_learning_rate_grows_with_the_square_root_of_large_batches():
    from schash._loop import learning_rate

    cfg = TrainConfig()
    assert learning_rate(32, cfg) == learning_rate(128, cfg) == 1e-3  # small batches: exactly as before
    assert learning_rate(512, cfg) == pytest.approx(2e-3)
    assert learning_rate(256, cfg) == pytest.approx(1e-3 * 2**0.5)
    assert learning_rate(512, TrainConfig(lr=5e-4)) == 5e-4  # a given rate is used as given
    assert sizes_from_data(10_000, cfg)[0] == 512  # where the default rises


def test_the_learning_rate_used_is_recorded_and_a_given_one_is_used(synth):
    kw = dict(cell_type_key="cell_type", max_epochs=2, progress=False)
    assert schash.train(synth, **kw).history["lr"] == 1e-3  # a small reference: small batches
    m = schash.train(synth, lr=3e-3, **kw)
    assert m.history["lr"] == 3e-3 and m.params["lr"] == 3e-3
    with pytest.raises(schash.InputError, match="lr"):
        schash.train(synth, lr=0, **kw)
