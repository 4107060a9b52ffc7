"""Neural survival models: DeepSurv and the discrete-time (logistic-hazard) model.

Both train a small torch MLP (full batch, Adam, ReLU, dropout, L2 penalty on the
weights in the loss) and then keep only the weights as numpy arrays: prediction is a
numpy forward pass in evaluation mode (no dropout), so torch is needed to fit, never
to load or predict, and a saved model predicts exactly as the live one.

- :class:`DeepSurv` (Katzman et al. 2018; seed 000): one output, the log-risk;
  loss = negative log Cox partial likelihood with **Breslow** ties (each tied event's
  risk set holds every patient still at risk at that time), averaged over events,
  + ``l2 * sum(W^2)``. Survival curves from the Breslow baseline hazard on the
  training risks.
- :class:`DiscreteTimeSurvival` (seed 004, Kvamme & Borgan 2021 "logistic hazard"):
  ``K`` outputs = logits of the conditional hazard ``h_k = P(T in interval k | T > start
  of k)``; ``S_k = prod_{j<=k} (1 - h_j)``. Censoring-aware negative log-likelihood: an
  event in interval ``k`` contributes ``-log h_k - sum_{j<k} log(1 - h_j)``; a patient
  censored at ``t`` contributes ``-sum log(1 - h_j)`` over the intervals that ended by
  ``t``. Expected time = ``sum_k S_k * width_k`` (seed 004), risk = minus that.
  Interval breaks: quantiles of the training event times (``n_intervals``), or fixed
  ``breaks`` (e.g. MMPL's 0, 300, ..., 6000 days).
- :class:`TimeStack`: appends the discrete model's expected time as ``stack:pred_time``
  (out-of-fold on the training rows, seed 004's "predicted survival time" input to the
  CoxPH integration).
"""

from __future__ import annotations

import contextlib

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, TransformerMixin, clone

from ._state import StateMixin, register
from .survival import SurvivalMixin, as_matrix, breslow_baseline, make_y, unpack_y


@contextlib.contextmanager
def _torch_single_thread(seed: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    state = torch.random.get_rng_state()
    torch.manual_seed(int(seed))
    try:
        yield torch
    finally:
        torch.random.set_rng_state(state)
        torch.set_num_threads(threads)


def _build_mlp(torch, n_in: int, hidden, n_out: int, dropout: float):
    layers = []
    prev = n_in
    for h in hidden:
        layers += [torch.nn.Linear(prev, int(h)), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
        prev = int(h)
    layers.append(torch.nn.Linear(prev, n_out))
    return torch.nn.Sequential(*layers).double()


def _weights_of(net) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    out = []
    for layer in net:
        if isinstance(layer, torch.nn.Linear):
            out.append((layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy()))
    return out


def _forward(weights: list[tuple[np.ndarray, np.ndarray]], X: np.ndarray) -> np.ndarray:
    """Evaluation-mode forward pass of the ReLU MLP, in numpy."""
    h = np.asarray(X, dtype=np.float64)
    for k, (W, b) in enumerate(weights):
        h = h @ W.T + b
        if k < len(weights) - 1:
            h = np.maximum(h, 0.0)
    return h


class _MLPState(StateMixin):
    """Saved state of the MLP models: weights ``W<k>``/``b<k>`` plus the fitted arrays
    named in ``_saved_arrays`` (attribute ``<name>_`` saved as ``<name>``)."""

    _saved_arrays: tuple[str, ...] = ()

    def _get_state(self):
        arrays = {}
        for k, (W, b) in enumerate(self.weights_):
            arrays[f"W{k}"] = W
            arrays[f"b{k}"] = b
        arrays.update({name: getattr(self, f"{name}_") for name in self._saved_arrays})
        meta = {"feature_names_in": self.feature_names_in_, "tau": self.tau_,
                "n_layers": len(self.weights_)}
        return meta, arrays

    def _set_state(self, meta, arrays):
        self.feature_names_in_ = meta["feature_names_in"]
        self.tau_ = meta["tau"]
        self.weights_ = [(arrays[f"W{k}"], arrays[f"b{k}"]) for k in range(meta["n_layers"])]
        for name in self._saved_arrays:
            setattr(self, f"{name}_", arrays[name])


def _train(torch, net, loss_fn, epochs: int, lr: float, l2: float):
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    net.train()
    for _ in range(int(epochs)):
        opt.zero_grad()
        loss = loss_fn(net)
        if l2:
            loss = loss + l2 * sum((w**2).sum() for w in weights)
        loss.backward()
        opt.step()
    net.eval()


@register
class DeepSurv(SurvivalMixin, _MLPState, BaseEstimator):
    """DeepSurv: MLP log-risk trained on the Breslow negative log partial likelihood + L2."""

    _saved_arrays = ("surv_times", "cumhaz0")

    def __init__(self, hidden=(32, 32), dropout=0.2, l2=1e-3, lr=1e-3, epochs=300, random_state=0):
        self.hidden = hidden
        self.dropout = dropout
        self.l2 = l2
        self.lr = lr
        self.epochs = epochs
        self.random_state = random_state

    def fit(self, X, y):
        Xf = as_matrix(self, X, fit=True)
        event, time = unpack_y(y)
        order = np.argsort(-time, kind="mergesort")  # descending time
        t_sorted = time[order]
        # last index (in descending order) of each tie group: the full risk set
        last = np.searchsorted(-t_sorted, -t_sorted, side="right") - 1
        n_events = max(int(event.sum()), 1)
        with _torch_single_thread(self.random_state) as torch:
            x = torch.as_tensor(Xf[order])
            ev = torch.as_tensor(event[order].astype(np.float64))
            last_t = torch.as_tensor(last)
            net = _build_mlp(torch, Xf.shape[1], self.hidden, 1, self.dropout)

            def loss_fn(net):
                eta = net(x).squeeze(1)
                lse = torch.logcumsumexp(eta, dim=0)[last_t]
                return -((eta - lse) * ev).sum() / n_events

            _train(torch, net, loss_fn, self.epochs, self.lr, self.l2)
            self.weights_ = _weights_of(net)
        risk = self.predict(Xf)
        self.surv_times_, self.cumhaz0_ = breslow_baseline(risk, time, event)
        self.tau_ = float(time.max())
        return self

    def predict(self, X) -> np.ndarray:
        return _forward(self.weights_, as_matrix(self, X))[:, 0]

    def _survival_grid(self, X) -> np.ndarray:
        return np.exp(-np.outer(np.exp(self.predict(X)), self.cumhaz0_))



def interval_breaks(time, event, n_intervals: int) -> np.ndarray:
    """0, quantiles of the event times, and the last follow-up time (strictly increasing)."""
    time = np.asarray(time, float)
    ev_t = time[np.asarray(event, bool)]
    ev_t = ev_t if ev_t.size else time
    qs = np.quantile(ev_t, np.linspace(0, 1, int(n_intervals) + 1)[1:-1])
    b = np.unique(np.concatenate([[0.0], qs, [time.max()]]))
    return b


@register
class DiscreteTimeSurvival(SurvivalMixin, _MLPState, BaseEstimator):
    """Discrete-time neural survival model (logistic hazard over intervals)."""

    _saved_arrays = ("breaks",)

    def __init__(
        self,
        n_intervals=10,
        breaks=None,
        hidden=(32,),
        dropout=0.2,
        l2=1e-3,
        lr=3e-3,
        epochs=300,
        random_state=0,
    ):
        self.n_intervals = n_intervals
        self.breaks = breaks
        self.hidden = hidden
        self.dropout = dropout
        self.l2 = l2
        self.lr = lr
        self.epochs = epochs
        self.random_state = random_state

    def fit(self, X, y):
        Xf = as_matrix(self, X, fit=True)
        event, time = unpack_y(y)
        if self.breaks is not None:
            b = np.asarray(sorted(set(float(v) for v in self.breaks)), dtype=np.float64)
            if b[0] > 0:
                b = np.concatenate([[0.0], b])
        else:
            b = interval_breaks(time, event, self.n_intervals)
        self.breaks_ = b
        K = b.size - 1
        ends = b[1:]
        idx = np.clip(np.searchsorted(ends, time, side="left"), 0, K - 1)  # interval of t
        completed = np.searchsorted(ends, time, side="right")  # intervals ended by t
        surv_mask = np.zeros((time.size, K))
        ev_mask = np.zeros((time.size, K))
        cols = np.arange(K)[None, :]
        surv_mask[event] = (cols < idx[event, None]).astype(float)
        surv_mask[~event] = (cols < completed[~event, None]).astype(float)
        ev_mask[np.flatnonzero(event), idx[event]] = 1.0
        with _torch_single_thread(self.random_state) as torch:
            x = torch.as_tensor(Xf)
            sm = torch.as_tensor(surv_mask)
            em = torch.as_tensor(ev_mask)
            net = _build_mlp(torch, Xf.shape[1], self.hidden, K, self.dropout)
            logsig = torch.nn.functional.logsigmoid
            n = float(time.size)

            def loss_fn(net):
                z = net(x)
                return -(sm * logsig(-z) + em * logsig(z)).sum() / n

            _train(torch, net, loss_fn, self.epochs, self.lr, self.l2)
            self.weights_ = _weights_of(net)
        self.surv_times_ = ends
        self.tau_ = float(time.max())
        return self

    def _survival_grid(self, X) -> np.ndarray:
        from scipy.special import expit

        h = expit(_forward(self.weights_, as_matrix(self, X)))
        return np.cumprod(1.0 - h, axis=1)

    def predict_expected_time(self, X) -> np.ndarray:
        """Seed 004: sum over intervals of S_k * width_k."""
        return self._survival_grid(X) @ np.diff(self.breaks_)

    def predict(self, X) -> np.ndarray:
        return -self.predict_expected_time(X)

    def _set_state(self, meta, arrays):
        super()._set_state(meta, arrays)
        self.surv_times_ = self.breaks_[1:]


@register
class TimeStack(StateMixin, TransformerMixin, BaseEstimator):
    """Append a survival model's expected time as ``stack:pred_time`` (z-scored).

    ``fit_transform`` gives the training rows out-of-fold values (``cv`` inner folds), so
    that the next step learns how much to trust the prediction on patients it has not
    seen; ``transform`` uses the model fitted on all training rows.
    """

    def __init__(self, model=None, cv=3, random_state=0):
        self.model = model
        self.cv = cv
        self.random_state = random_state

    def _model(self):
        return clone(self.model) if self.model is not None else DiscreteTimeSurvival()

    def _numeric(self, X: pd.DataFrame) -> pd.DataFrame:
        return X[[c for c in X.columns if not str(c).startswith("stack:pred_time")]]

    def fit(self, X, y):
        self.fit_transform(X, y)
        return self

    def fit_transform(self, X, y=None, **params):
        from sklearn.model_selection import StratifiedKFold

        event, time = unpack_y(y)
        Xn = self._numeric(X)
        oof = np.full(len(Xn), np.nan)
        folds = min(int(self.cv), int(event.sum()), int((~event).sum()))
        if folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.random_state)
            for tr, te in cv.split(Xn, event):
                m = self._model().fit(Xn.iloc[tr], make_y(event[tr], time[tr]))
                oof[te] = m.predict_expected_time(Xn.iloc[te])
        self.model_ = self._model().fit(Xn, make_y(event, time))
        if np.isnan(oof).any():
            oof = np.where(np.isnan(oof), self.model_.predict_expected_time(Xn), oof)
        self.center_ = float(np.mean(oof))
        sd = float(np.std(oof))
        self.scale_ = sd if sd > 1e-12 else 1.0
        return self._append(Xn, oof)

    def _append(self, X: pd.DataFrame, values: np.ndarray) -> pd.DataFrame:
        out = X.copy()
        out["stack:pred_time"] = (values - self.center_) / self.scale_
        return out

    def transform(self, X):
        Xn = self._numeric(X)
        return self._append(Xn, self.model_.predict_expected_time(Xn))

    def _get_state(self):
        from .persistence import estimator_to_state

        meta, arrays = estimator_to_state(self.model_)
        return {"model": meta, "center": self.center_, "scale": self.scale_}, {
            f"model/{k}": v for k, v in arrays.items()
        }

    def _set_state(self, meta, arrays):
        from .persistence import estimator_from_state

        self.center_ = meta["center"]
        self.scale_ = meta["scale"]
        sub = {k[6:]: v for k, v in arrays.items() if k.startswith("model/")}
        self.model_ = estimator_from_state(meta["model"], sub)
