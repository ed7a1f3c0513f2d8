"""A small logistic-regression head (numpy) for the learned scorer and prompt router:
standardised features, L2-regularised, fitted by Newton's method."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))


@dataclass
class LogisticHead:
    weights: np.ndarray  # [D]
    bias: float
    mean: np.ndarray  # [D] feature standardisation
    scale: np.ndarray  # [D]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """P(label = 1) for each row of x [N, D]."""
        z = ((x - self.mean) / self.scale) @ self.weights + self.bias
        return _sigmoid(z)

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 25) -> LogisticHead:
        mean, scale = x.mean(0), x.std(0) + 1e-6
        xs = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])  # [N, D+1]
        w = np.zeros(xs.shape[1])
        reg = np.full(xs.shape[1], l2)
        reg[-1] = 0.0  # the bias is not regularised
        for _ in range(steps):
            p = _sigmoid(xs @ w)
            grad = xs.T @ (p - y) + reg * w
            hessian = (xs * (p * (1 - p))[:, None]).T @ xs + np.diag(reg + 1e-9)
            w -= np.linalg.solve(hessian, grad)
        return cls(w[:-1], float(w[-1]), mean, scale)

    def save(self, path: str | Path) -> None:
        np.savez(path, weights=self.weights, bias=np.asarray(self.bias), mean=self.mean,
                 scale=self.scale)

    @classmethod
    def load(cls, path: str | Path) -> LogisticHead:
        with np.load(path) as data:
            return cls(data["weights"], float(data["bias"]), data["mean"], data["scale"])


def cross_validated_l2(x: np.ndarray, y: np.ndarray, grid: tuple[float, ...] = (
        0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0), folds: int = 5, seed: int = 0) -> float:
    """The L2 strength with the best mean held-out log-likelihood."""
    order = np.random.default_rng(seed).permutation(len(x))
    best, best_ll = grid[0], -np.inf
    for l2 in grid:
        ll = 0.0
        for k in range(folds):
            test = order[k::folds]
            train = np.setdiff1d(order, test)
            if len(np.unique(y[train])) < 2:
                continue
            p = np.clip(LogisticHead.fit(x[train], y[train], l2).predict(x[test]), 1e-6, 1 - 1e-6)
            ll += float(np.sum(y[test] * np.log(p) + (1 - y[test]) * np.log(1 - p)))
        if ll > best_ll:
            best, best_ll = l2, ll
    return best


def out_of_fold_predictions(x: np.ndarray, y: np.ndarray, l2: float, folds: int = 5,
                            seed: int = 0) -> np.ndarray:
    """Each row's prediction from a head that never saw it (for honest calibration)."""
    order = np.random.default_rng(seed).permutation(len(x))
    out = np.zeros(len(x))
    for k in range(folds):
        test = order[k::folds]
        train = np.setdiff1d(order, test)
        out[test] = LogisticHead.fit(x[train], y[train], l2).predict(x[test])
    return out
