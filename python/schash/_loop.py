"""The network training loop: class-balanced BCE toward each type's anchor plus a quantisation loss.

Plain PyTorch.  Hyper-parameters that depend on the data size (batch size, number of
epochs, patience) are chosen from it unless given.  Early stopping keeps the weights
with the best macro F1 of nearest-anchor calls on a stratified validation split.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split

from ._concurrency import Again, ahead, threads
from ._first_layer import SparseBatch, forward, torch_csr
from ._logging import logger
from ._module import HashMLP
from ._optim import AdamW


@dataclass
class TrainConfig:
    hidden: tuple[int, ...] = (128, 64)
    dropout: float = 0.2
    lr: float | None = None  # None: learning_rate() chooses it from the batch size
    weight_decay: float = 1e-4
    batch_size: int | None = None
    max_epochs: int | None = None
    patience: int | None = None
    val_fraction: float = 0.1
    beta: float = 0.9999
    quant_weight: float = 0.1
    target_steps: int = 4000
    f1_tolerance: float = 0.01
    min_epochs: int = 10
    warmup_epochs: int = 5
    num_threads: int | None = None
    dense_limit_bytes: int = 1 << 30
    # augmentation that imitates technology shifts (log-expression inputs only); 0 turns a part off
    augment: float = 0.0  # fraction of training cells augmented in each epoch
    aug_gene_sd: float = 0.5  # SD of the gene-wise log factor (capture efficiency of each gene)
    aug_cell_sd: float = 0.2  # SD of the cell-wise log factor (share of the library on the model's genes)
    aug_dropout: float = 0.3  # largest fraction of a cell's non-zero values set to zero


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def class_weights(y: np.ndarray, n_types: int, beta: float) -> np.ndarray:
    """Effective-number class weights (Cui et al. 2019), normalised to sum to ``n_types``."""
    n = np.bincount(y, minlength=n_types).astype(np.float64)
    eff = (1.0 - np.power(beta, n)) / (1.0 - beta)
    w = np.where(n > 0, 1.0 / np.maximum(eff, 1e-12), 0.0)
    return (w / w.sum() * n_types).astype(np.float32)


def sizes_from_data(n_train: int, cfg: TrainConfig) -> tuple[int, int, int]:
    """Batch size, maximum epochs and patience for ``n_train`` cells."""
    bs = cfg.batch_size or int(np.clip(2 ** round(math.log2(max(n_train, 1) / 20)), 32, 512))
    steps = math.ceil(n_train / bs)
    epochs = cfg.max_epochs or int(np.clip(math.ceil(cfg.target_steps / steps), 5, 60))
    # at most 8 epochs without improvement: measured on the accuracy benchmark's cross-batch and
    # random-split folds (3 seeds), a patience of 8 instead of 12 gave the same mean macro F1 (0.8333
    # vs 0.8334) and stopped 10,000-cell references 4 epochs sooner
    patience = cfg.patience or int(np.clip(epochs // 5, 3, 8))
    return bs, epochs, patience


BASE_LR, LR_BATCH = 1e-3, 128


def learning_rate(batch_size: int, cfg: TrainConfig) -> float:
    """``cfg.lr`` where given, else 1e-3 for batches up to 128 cells and ``1e-3 * sqrt(batch / 128)``
    above (2e-3 for the 512-cell batches of references from ~7,000 cells).

    A large batch averages away gradient noise, so each Adam step can go further; at 1e-3 a
    10,000-cell reference took 30-37 epochs.  Measured (seeds 0-2 or 0-4): the speed benchmark's
    synthetic 10,000-cell reference at 2e-3 stopped after 21-28 epochs (5.3 s instead of 8.7 s) with
    query accuracy 0.971 against 0.970; CBMC's 4,300-cell reference (batches of 256) at 1.41e-3 gave
    macro F1 0.846 against 0.845 in 22 epochs instead of 24 (2e-3: 0.841); 100,000 cells at 2e-3 the
    same epochs and accuracy (0.991).  Batches of up to 128 cells (references up to ~3,600 cells: every
    fold of the accuracy benchmark but CBMC's) keep 1e-3 exactly.
    """
    if cfg.lr is not None:
        return float(cfg.lr)
    return BASE_LR * math.sqrt(max(batch_size, LR_BATCH) / LR_BATCH)


def split(y: np.ndarray, fraction: float, seed: int, min_cells: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/validation indices: one validation cell or more of each type that has at
    least ``min_cells`` cells; rarer types are kept whole for training."""
    idx = np.arange(len(y))
    types, counts = np.unique(y, return_counts=True)
    pool = idx[np.isin(y, types[counts >= min_cells])]
    n_types = int((counts >= min_cells).sum())
    if n_types < 2:  # too few cells to validate by type: a plain random split
        rng = np.random.default_rng(seed)
        va = rng.choice(idx, max(1, int(round(fraction * len(y)))), replace=False)
        return np.setdiff1d(idx, va), np.sort(va)
    n_val = min(max(int(round(fraction * len(pool))), n_types), len(pool) - n_types)
    tr, va = train_test_split(pool, test_size=n_val, stratify=y[pool], random_state=seed)
    return np.sort(np.concatenate([tr, idx[~np.isin(idx, pool)]])), np.sort(va)


def predict_anchor(out: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Nearest anchor of the sign code (max inner product of ±1 codes = min Hamming distance)."""
    code = torch.where(out > 0, 1.0, -1.0)
    return (code @ anchors.T).argmax(1)


class _Rows:
    """Training rows: transformed features, augmented (optionally) and then standardised per group.

    Held dense in torch when small (``dense_limit_bytes``), else made dense a batch at a time.
    Augmentation acts on the log scale before standardisation, as a technology would: a
    gene-wise factor (each gene's capture efficiency), a cell-wise factor and the loss of
    some non-zero values; zeros stay zeros.
    """

    def __init__(self, X, cfg: TrainConfig, log_scale: bool):
        from scipy import sparse

        F = X.F
        self.cfg, self.log_scale = cfg, log_scale
        self.augmenting = cfg.augment > 0 and log_scale
        self.is_sparse = sparse.issparse(F)
        # sparse rows are augmented on their non-zero values only (zeros stay zeros), then made dense
        self.csr = sparse.csr_matrix(F, dtype=np.float32) if self.is_sparse and self.augmenting else None
        self.F = F
        self.dense = None
        if self.csr is None and F.shape[0] * F.shape[1] * 4 <= cfg.dense_limit_bytes:
            self.dense = torch.from_numpy(np.asarray(F.toarray() if sparse.issparse(F) else F, dtype=np.float32))
        self.mean = torch.from_numpy(np.asarray(X.mean, dtype=np.float32))
        self.std = torch.from_numpy(np.asarray(X.std, dtype=np.float32))
        self.groups = torch.from_numpy(np.asarray(X.groups, dtype=np.int64))
        self.clip = float(X.clip)
        mean, std = np.asarray(X.mean, dtype=np.float32), np.asarray(X.std, dtype=np.float32)
        self.inv_sd, self.shift = torch.from_numpy(1.0 / std), torch.from_numpy(mean / std)
        self.base = torch.from_numpy(np.clip(-mean / std, -self.clip, self.clip))  # z where x is 0, per group

    @functools.cached_property
    def sparse(self):
        """The rows as canonical CSR (each entry once, sorted): what :meth:`sparse_batch` reads; a copy
        where the input is not canonical (the caller's matrix is never changed)."""
        from scipy import sparse

        F = sparse.csr_matrix(self.F, dtype=np.float32)
        if not F.has_canonical_format:
            F = F.copy()
            F.sum_duplicates()
        return F

    def sparse_batch(self, b: np.ndarray, gen: torch.Generator | None = None) -> SparseBatch:
        """Rows ``b`` for the sparse first layer: ``z - base`` at the stored values (see :class:`SparseBatch`)."""
        from scipy import sparse

        block = self.sparse[b]  # (augmented values are drawn in stored order, so the order is fixed first)
        n = len(b)
        row_np = np.repeat(np.arange(n), np.diff(block.indptr))
        row_of = torch.from_numpy(row_np)
        values = torch.from_numpy(block.data.copy())
        if gen is not None and self.augmenting:
            values = augment_values(values, row_of, n, self.cfg, gen)
        cols = torch.from_numpy(block.indices.astype(np.int64))
        groups = self.groups[torch.from_numpy(b)]
        if self.base.shape[0] == 1:
            inv_sd, shift, base = self.inv_sd[0][cols], self.shift[0][cols], self.base[0][cols]
        else:
            g = groups[row_of]
            inv_sd, shift, base = self.inv_sd[g, cols], self.shift[g, cols], self.base[g, cols]
        delta = (values * inv_sd - shift).clamp_(-self.clip, self.clip) - base
        d = delta.numpy()
        shape = (n, block.shape[1])
        transposed = sparse.csr_matrix((d, block.indices, block.indptr), shape=shape).T.tocsr()
        return SparseBatch(torch_csr(block.indptr, block.indices, delta, shape),
                           torch_csr(transposed.indptr, transposed.indices, torch.from_numpy(transposed.data),
                                      shape[::-1]), groups, self.base)

    def get(self, b: np.ndarray, gen: torch.Generator | None = None) -> torch.Tensor:
        from scipy import sparse

        tb = torch.from_numpy(b)
        if self.csr is not None:
            block = self.csr[b]
            row_of = torch.from_numpy(np.repeat(np.arange(len(b)), np.diff(block.indptr)))
            values = torch.from_numpy(block.data.copy())
            if gen is not None:
                values = augment_values(values, row_of, len(b), self.cfg, gen)
            x = torch.zeros(len(b), block.shape[1])
            x.index_put_((row_of, torch.from_numpy(block.indices.astype(np.int64))), values, accumulate=True)
        elif self.dense is not None:
            x = self.dense[tb]
        else:
            block = self.F[b]
            x = torch.from_numpy(np.asarray(block.toarray() if sparse.issparse(block) else block, dtype=np.float32))
        if gen is not None and self.augmenting and self.csr is None:
            x = augment(x, self.cfg, gen)
        g = self.groups[tb]
        return ((x - self.mean[g]) / self.std[g]).clamp_(-self.clip, self.clip)


def augment_values(values: torch.Tensor, row_of: torch.Tensor, n: int, cfg: TrainConfig,
                   gen: torch.Generator) -> torch.Tensor:
    """:func:`augment` applied to the non-zero values of ``n`` sparse rows (``row_of``: each value's row).

    The same perturbation in distribution as on dense rows (zeros are untouched there too),
    at the cost of the non-zeros only.
    """
    k = len(values)
    lin = torch.expm1(values)
    log_f = torch.randn(k, generator=gen) * cfg.aug_gene_sd + (torch.randn(n, generator=gen) * cfg.aug_cell_sd)[row_of]
    lin = lin * torch.exp(log_f)
    if cfg.aug_dropout > 0:
        rate = torch.rand(n, generator=gen) * cfg.aug_dropout
        lin = lin * (torch.rand(k, generator=gen) >= rate[row_of])
    chosen = (torch.rand(n, generator=gen) < cfg.augment)[row_of]
    return torch.where(chosen, torch.log1p(lin), values)


def augment(x: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Technology-like perturbation of log1p-scale rows (see :class:`_Rows`)."""
    n, g = x.shape
    lin = torch.expm1(x)
    log_f = torch.randn(n, g, generator=gen) * cfg.aug_gene_sd + torch.randn(n, 1, generator=gen) * cfg.aug_cell_sd
    lin = lin * torch.exp(log_f)
    if cfg.aug_dropout > 0:
        rate = torch.rand(n, 1, generator=gen) * cfg.aug_dropout
        lin = lin * (torch.rand(n, g, generator=gen) >= rate)
    chosen = torch.rand(n, 1, generator=gen) < cfg.augment
    return torch.where(chosen, torch.log1p(lin), x)


def calibration_rows(X, cfg: TrainConfig, log_scale: bool, seed: int):
    """``rows(idx)``: reference rows as novelty calibration sees them — augmented as in training
    (every cell), so that p-values expect a query from another technology; plain when the
    model trains without augmentation or on ranks."""
    from dataclasses import replace

    rows = _Rows(X, replace(cfg, augment=1.0 if cfg.augment > 0 else 0.0), log_scale)
    gen = torch.Generator().manual_seed(seed + 1)
    return lambda idx: rows.get(np.asarray(idx), gen).numpy()


SPARSE_MIN_WORK = 1_000_000  # batch size × genes from which the sparse first layer pays off


def _batches(rows: _Rows, idx: np.ndarray, bs: int, device, gen=None, train_bs: int | None = None):
    """Batches of rows ``idx``: sparse on the CPU when the input is sparse and a training batch is large
    (``train_bs`` × genes at least :data:`SPARSE_MIN_WORK`; smaller ones are faster dense), else dense.

    Measured (bench/accuracy.py, every dataset sparse, batches of 32-256 cells): the sparse path made
    training 23% slower in all, with the same accuracy; on 10k cells × 2,000 genes (batches of 512)
    an epoch took 30% less time.
    """
    use_sparse = (rows.is_sparse and torch.device(device).type == "cpu"
                  and (train_bs or bs) * rows.F.shape[1] >= SPARSE_MIN_WORK)
    for s in range(0, len(idx), bs):
        b = idx[s : s + bs]
        yield b, (rows.sparse_batch(b, gen) if use_sparse else rows.get(b, gen).to(device))


def train_network(X, y: np.ndarray, anchors: np.ndarray, *, cfg: TrainConfig, seed: int, device: str, progress: bool,
                  log_scale: bool = True):
    """Train a :class:`HashMLP`; returns (module on CPU in eval mode, history, validation indices)."""
    bs, _, _ = sizes_from_data(len(y), cfg)
    # one thread unless a step is large (a batch of 512 cells over more than ~8,000 genes): on 2 cores
    # with another process busy, 10k cells x 2,000 genes trained in 24 s on one thread and 80 s on two
    n_threads = cfg.num_threads or (1 if bs * X.shape[1] <= 4_000_000 else None)
    with threads(n_threads):
        return _train(X, y, anchors, cfg=cfg, seed=seed, device=device, progress=progress, log_scale=log_scale)


def _train(X, y, anchors, *, cfg, seed, device, progress, log_scale):
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = resolve_device(device)
    n_types = anchors.shape[0]
    tr, va = split(y, cfg.val_fraction, seed)
    bs, epochs, patience = sizes_from_data(len(tr), cfg)
    rows = _Rows(X, cfg, log_scale)
    gen = torch.Generator().manual_seed(seed)
    model = HashMLP(X.shape[1], anchors.shape[1], cfg.hidden, cfg.dropout).to(dev)
    lr = learning_rate(bs, cfg)
    opt = AdamW(list(model.parameters()), lr=lr, weight_decay=cfg.weight_decay)
    A = torch.from_numpy(anchors).to(dev)
    target = (A + 1) / 2
    w = torch.from_numpy(class_weights(y[tr], n_types, cfg.beta)).to(dev)
    y_t = torch.from_numpy(y.astype(np.int64))
    # the validation batches are the same every epoch (no augmentation): made once where they are small
    val_batches = _batches(rows, va, bs * 4, dev, train_bs=bs)
    if len(va) * X.shape[1] * 4 <= VAL_CACHE_BYTES:
        val_batches = list(val_batches)
    else:
        val_batches = Again(functools.partial(_batches, rows, va, bs * 4, dev, train_bs=bs))
    history = {"epoch": [], "train_loss": [], "val_loss": [], "val_macro_f1": [], "val_accuracy": []}
    best, best_state, since = (-1.0, np.inf), None, 0
    bar = tqdm(range(epochs), desc="schash train", disable=not progress, unit="epoch")
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for b, xb in ahead(_batches(rows, rng.permutation(tr), bs, dev, gen)):
            yb = y_t[b].to(dev)
            out = forward(model, xb)
            loss = _loss(out, target[yb], w[yb], cfg.quant_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(b)
            count += len(b)
        val_loss, f1, acc = _evaluate(model, val_batches, y, va, A, target, w, cfg.quant_weight)
        for key, val in zip(history, (epoch + 1, total / count, val_loss, f1, acc), strict=False):
            history[key].append(val)
        bar.set_postfix(loss=f"{total / count:.3f}", val_f1=f"{f1:.3f}")
        # better: a clearly higher validation F1, or about the same F1 with a lower validation
        # loss (the loss keeps falling as codes settle on their anchors; F1 on a small
        # validation split is noisy and would otherwise freeze an early, unquantised model)
        # The first epochs only count once codes have begun to settle (warm-up).
        warm = epoch + 1 >= min(cfg.warmup_epochs, max(1, epochs // 2))
        if warm and (f1 > best[0] + cfg.f1_tolerance or (f1 >= best[0] - cfg.f1_tolerance and val_loss < best[1])):
            best, since = (max(f1, best[0]) if f1 <= best[0] + cfg.f1_tolerance else f1, val_loss), 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            history["best_epoch"] = epoch + 1
        else:
            since += warm
            if since >= patience and epoch + 1 >= cfg.min_epochs:
                logger.info("early stop at epoch %d (best validation macro F1 %.3f)", epoch + 1, best[0])
                break
    bar.close()
    model = model.cpu()
    model.load_state_dict(best_state)
    model.eval()
    history.update(batch_size=bs, lr=lr, max_epochs=epochs, patience=patience,
                   best_val_macro_f1=history["val_macro_f1"][history["best_epoch"] - 1])
    return model, history, va


def _loss(out, target, weight, quant_weight):
    p = ((out + 1) / 2).clamp(1e-6, 1 - 1e-6)
    # binary cross-entropy toward 0/1 targets (the anchors' bits): -log p where the bit is 1, -log(1 - p)
    # where it is 0; torch's binary_cross_entropy computes both logs for every bit (forward and backward
    # on 512 × 64 outputs 0.72 ms → 0.41 ms)
    bce = -torch.where(target > 0.5, p, 1 - p).log().mean(1)
    return (weight * bce).sum() / weight.sum() + quant_weight * ((out.abs() - 1) ** 2).mean()


VAL_CACHE_BYTES = 64 << 20  # validation rows (as dense float32) kept between epochs up to this size


@torch.no_grad()
def _evaluate(model, val_batches, y, va, A, target, w, quant_weight):
    model.eval()
    preds, losses = [], []
    for b, xb in val_batches:
        out = forward(model, xb)
        yb = torch.from_numpy(y[b].astype(np.int64)).to(A.device)
        losses.append(float(_loss(out, target[yb], w[yb], quant_weight)) * len(b))
        preds.append(predict_anchor(out, A).cpu().numpy())
    pred = np.concatenate(preds)
    f1 = f1_score(y[va], pred, average="macro")
    return sum(losses) / len(va), float(f1), float(np.mean(pred == y[va]))
