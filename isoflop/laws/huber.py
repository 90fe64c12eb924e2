"""The Approach 3 objective of Hoffmann et al. 2022 (Sec. 3.3, Eq. 3 and App. D.2), with analytic gradients.

The parametric law ``L(N, D) = E + A / N^alpha + B / D^beta`` is written in the log-sum-exp form

    log L_hat_i = LSE(a - alpha log N_i, b - beta log D_i, e),   A = e^a, B = e^b, E = e^e,

and fitted by minimising ``sum_i w_i Huber_delta(log L_hat_i - log L_i)`` with ``delta = 1e-3`` (Hoffmann et al.
2022; kept by the replication of Besiroglu et al. 2024). ``theta = (a, b, e, alpha, beta)``, the order both papers use.
Everything is vectorised over points; ``batch_objective`` also evaluates many ``theta`` at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

HUBER_DELTA = 1e-3


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run BLAS on one thread: the optimisers here work on 5-vectors, where OpenBLAS's thread pool only adds
    synchronisation (10x slower on a busy 2-core machine). A no-op without ``threadpoolctl``."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def huber(r: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    """Huber (1964) loss: ``r^2 / 2`` for ``|r| <= delta``, else ``delta (|r| - delta / 2)``
    (``scipy.special.huber``)."""
    ar = np.abs(r)
    return np.where(ar <= delta, 0.5 * r * r, delta * (ar - 0.5 * delta))


def _shifted_terms(
    theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The three log-sum-exp terms ``exp(a - alpha log N)``, ``exp(b - beta log D)``, ``exp(e)``, each divided by
    ``exp(m)`` with ``m`` their largest exponent (for stability); returns ``m, x0, x1, x2, x0 + x1 + x2``."""
    a, b, e, alpha, beta = theta
    t0 = a - alpha * log_n
    t1 = b - beta * log_d
    m = np.maximum(np.maximum(t0, t1), e)
    x0, x1, x2 = np.exp(t0 - m), np.exp(t1 - m), np.exp(e - m)
    return m, x0, x1, x2, x0 + x1 + x2


def log_predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """``log L_hat`` for every point (log-sum-exp of the three terms, computed stably)."""
    m, _, _, _, s = _shifted_terms(theta, log_n, log_d)
    return m + np.log(s)


def objective_and_grad(
    theta: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    weights: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
) -> tuple[float, np.ndarray]:
    """Huber objective and its exact gradient with respect to ``(a, b, e, alpha, beta)``."""
    m, x0, x1, x2, s = _shifted_terms(theta, log_n, log_d)
    r = m + np.log(s) - log_l
    loss = huber(r, delta)
    dr = np.clip(r, -delta, delta)  # Huber'(r)
    if weights is not None:
        loss = loss * weights
        dr = dr * weights
    g = dr / s
    g0, g1 = g * x0, g * x1
    grad = np.array([g0.sum(), g1.sum(), (g * x2).sum(), -(g0 * log_n).sum(), -(g1 * log_d).sum()])
    return float(loss.sum()), grad


def batch_objective(
    thetas: np.ndarray,
    log_n: np.ndarray,
    log_d: np.ndarray,
    log_l: np.ndarray,
    weights: np.ndarray | None = None,
    delta: float = HUBER_DELTA,
) -> np.ndarray:
    """The objective for many parameter vectors at once: ``thetas`` has shape ``(k, 5)``; returns ``(k,)``."""
    a, b, e, alpha, beta = (thetas[:, i : i + 1] for i in range(5))
    t0 = a - alpha * log_n[None, :]
    t1 = b - beta * log_d[None, :]
    lse = np.logaddexp(np.logaddexp(t0, t1), np.broadcast_to(e, t0.shape))
    loss = huber(lse - log_l[None, :], delta)
    if weights is not None:
        loss = loss * weights[None, :]
    return loss.sum(axis=1)


def residuals(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:
    """``log L_hat_i - log L_i`` for every point."""
    return log_predict(theta, log_n, log_d) - log_l


def jacobian(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_l: np.ndarray) -> np.ndarray:  # noqa: ARG001
    """d residual_i / d theta, shape ``(n, 5)``: the softmax weights of the three log-sum-exp terms."""
    _, x0, x1, x2, s = _shifted_terms(theta, log_n, log_d)
    w0, w1 = x0 / s, x1 / s
    return np.stack([w0, w1, x2 / s, -w0 * log_n, -w1 * log_d], axis=1)
