"""Methods of the icl families: the trained in-context learner as a predictor, and hidden-state probes.

- ``icl-transformer`` (family ``icl``): the task's trained small GPT
  (handed over in ``ICLProblem.learner``), queried at every prefix.
- ``ridge-probe`` / ``mlp-probe`` (family ``icl-probe``): decode a target
  from hidden states.  Both standardise the hidden states with the training
  split's statistics.
"""

from __future__ import annotations

import numpy as np
import torch

from harness.protocols.icl import ICLPredictor, ICLProbe
from harness.core.registry import register_method
from harness.core.seeding import torch_threads


@register_method("icl-transformer", version="1",
                 description="the task's trained in-context learner (small GPT), every prefix in one pass")
class ICLTransformer(ICLPredictor):
    def predict_prefixes(self, xs, ys, x_query):
        learner = None if self.problem is None else self.problem.learner
        if learner is None:
            raise RuntimeError("icl-transformer needs the task's learner (ICLProblem.learner); none was given")
        return np.asarray(learner.predict_prefixes(xs, ys, x_query), dtype=np.float64)

    def predict(self, xs, ys, x_query):
        k = xs.shape[1]
        return self.predict_prefixes(xs, ys, x_query)[:, k]


def _standardise(H: np.ndarray, eps: float = 1e-8) -> tuple[np.ndarray, np.ndarray]:
    H = np.asarray(H, dtype=np.float64)
    return H.mean(axis=0), H.std(axis=0) + eps


@register_method("ridge-probe", version="1",
                 description="linear probe: ridge on standardised hidden states, penalty by exact leave-one-out CV")
class RidgeProbe(ICLProbe):
    """Ridge with an intercept on standardised ``H``; one penalty for all target dimensions, chosen from
    ``alphas`` by the exact leave-one-out error (closed form from one SVD of ``H``)."""

    def __init__(self, alphas: tuple = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)):
        self.alphas = alphas

    def fit(self, H, T):
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):  # tiny BLAS calls: threads only cost (and oversubscribe)
            return self._fit(H, T)

    def _fit(self, H, T):
        H = np.asarray(H, np.float64)
        T = np.asarray(T, np.float64).reshape(len(H), -1)
        self.mu_, self.sd_ = _standardise(H)
        self.t_mu_ = T.mean(axis=0)
        X, Y = (H - self.mu_) / self.sd_, T - self.t_mu_
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        UtY = U.T @ Y
        best = None
        for alpha in self.alphas:
            f = s**2 / (s**2 + alpha)
            resid = Y - U @ (f[:, None] * UtY)
            h = (U**2) @ f + 1.0 / len(X)  # hat-matrix diagonal, intercept included
            loo = float((((resid / (1.0 - h)[:, None]) ** 2).sum()))
            if best is None or loo < best[0]:
                best = (loo, alpha)
        self.alpha_ = best[1]
        self.coef_ = Vt.T @ ((s / (s**2 + self.alpha_))[:, None] * UtY)
        return self

    def predict(self, H):
        X = (np.asarray(H, np.float64) - self.mu_) / self.sd_
        return X @ self.coef_ + self.t_mu_


class _MLP(torch.nn.Module):
    """``T = W_skip h + b + W2 gelu(W1 h)``: a linear probe plus a one-hidden-layer nonlinear correction."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.skip = torch.nn.Linear(d_in, d_out)
        self.fc1 = torch.nn.Linear(d_in, hidden)
        self.fc2 = torch.nn.Linear(hidden, d_out, bias=False)
        torch.nn.init.zeros_(self.fc2.weight)  # starts as the linear probe

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.skip(h) + self.fc2(torch.nn.functional.gelu(self.fc1(h)))


@register_method("mlp-probe", version="1",
                 description="MLP probe: ridge probe + one GELU hidden layer, full-batch AdamW, best epoch on a 15% validation split")
class MLPProbe(ICLProbe):
    """A probe at least as good as the linear one on its validation split: the skip path starts at the
    ridge solution (fitted on the training part), the nonlinear path at zero, and the epoch with the
    lowest validation error (epoch 0 included) is kept."""

    selftest_params = {"epochs": 5}

    def __init__(self, hidden: int = 64, epochs: int = 100, lr: float = 3e-3, weight_decay: float = 1e-4,
                 val_frac: float = 0.15):
        self.hidden, self.epochs, self.lr = hidden, epochs, lr
        self.weight_decay, self.val_frac = weight_decay, val_frac

    def fit(self, H, T):
        H = np.asarray(H, np.float64)
        T = np.asarray(T, np.float64).reshape(len(H), -1)
        self.mu_, self.sd_ = _standardise(H)
        self.t_mu_, self.t_sd_ = _standardise(T)
        Xn, Yn = (H - self.mu_) / self.sd_, (T - self.t_mu_) / self.t_sd_
        rng = np.random.default_rng(int(self.seed))
        perm = rng.permutation(len(Xn))
        n_val = max(1, int(round(self.val_frac * len(Xn))))
        val, tr = perm[:n_val], perm[n_val:]
        ridge = RidgeProbe().fit(Xn[tr], Yn[tr])
        with torch_threads(1):  # deterministic and independent of the machine's cores
            torch.manual_seed(int(self.seed))
            X = torch.as_tensor(Xn, dtype=torch.float32)
            Y = torch.as_tensor(Yn, dtype=torch.float32)
            net = _MLP(X.shape[1], self.hidden, Y.shape[1])
            with torch.no_grad():  # the ridge solution in the skip path (ridge standardised its input again)
                W = ridge.coef_ / ridge.sd_[:, None]
                net.skip.weight.copy_(torch.as_tensor(W.T, dtype=torch.float32))
                net.skip.bias.copy_(torch.as_tensor(ridge.t_mu_ - ridge.mu_ @ W, dtype=torch.float32))
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            Xt, Yt, Xv, Yv = X[tr], Y[tr], X[val], Y[val]

            def val_loss() -> float:
                with torch.no_grad():
                    return float(((net(Xv) - Yv) ** 2).mean())

            best, best_state = val_loss(), {k: p.detach().clone() for k, p in net.state_dict().items()}
            for epoch in range(self.epochs):
                opt.zero_grad(set_to_none=True)
                loss = ((net(Xt) - Yt) ** 2).mean()
                loss.backward()
                opt.step()
                if epoch % 5 == 4 or epoch == self.epochs - 1:
                    v = val_loss()
                    if v < best:
                        best, best_state = v, {k: p.detach().clone() for k, p in net.state_dict().items()}
            net.load_state_dict(best_state)
            self.net_ = net.eval()
        return self

    def predict(self, H):
        with torch_threads(1):
            with torch.no_grad():
                X = torch.as_tensor((np.asarray(H, np.float64) - self.mu_) / self.sd_, dtype=torch.float32)
                out = self.net_(X).double().numpy()
        return out * self.t_sd_ + self.t_mu_
