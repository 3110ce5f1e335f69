"""LightningModule of the Neural ODE generator (:class:`sns.surrogates.neural_ode.NeuralODE`).

Batches are windows ``(B, T, D)`` of normalised frames ``dt`` apart
(:class:`sns.data.datamodule.WindowDataModule`, ``history = 1``, ``horizon = T - 1``).
Two training losses (seed 000, step 2: "MSE between predicted and true trajectories
(or their derivatives)"):

* ``loss="trajectory"``: one integration from the first frame over the window's time
  grid, ``x^(t_k) = odeint(f_theta, x_0, [0, dt, ..., L dt])``, and
  ``MSE = (1/L) sum_{k=1..L} mean |x^(t_k) - x_k|^2`` with ``L = unroll(global_step)``
  (:class:`~sns.training.terms.UnrollSchedule`: the window length can grow);
* ``loss="derivative"``: no ODE solve; central differences
  ``xdot_k = (x_{k+1} - x_{k-1}) / (2 dt)`` at the interior frames regressed by the field,
  ``MSE(f_theta(x_k, t_k), xdot_k)`` (cheap, but biased by ``O(dt^2 x''')``).

Extra loss terms (:mod:`sns.training.terms`; e.g. :class:`sns.losses.DivergenceRegularizer`)
receive ``outputs["inputs"]``: the data frames of the window the loss used, ``(B L, D)``
(points on the attractor, where a divergence target is meaningful), and
``outputs["predictions"]`` ``(B, L, D)`` for the trajectory loss.

Validation logs ``val/loss``: the trajectory MSE over the whole validation window (always
the trajectory MSE, whatever the training loss, so runs compare), ``val/rmse_1``,
``val/rmse_<K>`` and ``val/rollout_rmse`` (RMSE per lead time from one integration), and,
with ``validate_terms``, every loss term's logs on the validation frames as
``val/<term>_<key>`` (e.g. ``val/div_err``: the divergence error on held-out data).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sns.training.modules import OptimizerFactory, SchedulerFactory, _Base
from sns.training.terms import LossTerm, UnrollSchedule, term_name

__all__ = ["NeuralODEModule"]

LOSSES = ("trajectory", "derivative")


class NeuralODEModule(_Base):
    """Train a Neural ODE on trajectory windows (module docstring).

    Args:
        net: model spec of kind ``neural_ode`` (:mod:`sns.models`).
        loss: ``"trajectory"`` or ``"derivative"``.
        optimizer: partial ``params -> Optimizer`` (default AdamW, lr 1e-4; seed: Adam 1e-3).
        scheduler: partial ``optimizer -> LRScheduler`` or None.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        unroll_start, unroll_max, unroll_every: intervals ``L`` of the trajectory loss as a
            function of the optimizer step (windows need ``>= unroll_max + 1`` frames).
        validate_terms: also evaluate the loss terms on validation frames (logs only).
        loss_terms: extra loss terms.
    """

    task = "neural_ode"

    def __init__(
        self,
        net: Mapping[str, Any],
        loss: str = "trajectory",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        unroll_start: int = 1,
        unroll_max: int = 1,
        unroll_every: int = 0,
        validate_terms: bool = True,
        loss_terms: Sequence[LossTerm] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "loss_terms"])
        if loss not in LOSSES:
            raise ValueError(f"unknown Neural ODE loss {loss!r}; valid choices: {LOSSES}")
        self._setup_common(net, optimizer, scheduler, scheduler_interval, loss_terms)
        self.loss = loss
        self.unroll = UnrollSchedule(unroll_start, unroll_max, unroll_every)
        self.validate_terms = bool(validate_terms)
        self._val_sse: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """One saved interval ``(B, D) -> (B, D)``."""
        return self.model(x)

    def _check_batch(self, batch: Tensor, frames: int) -> None:
        if batch.ndim != 3:
            raise ValueError(f"the Neural ODE trains on vector windows (B, T, D), got {tuple(batch.shape)}")
        if batch.shape[1] < frames:
            raise ValueError(f"the {self.loss} loss needs windows of >= {frames} frames, got {batch.shape[1]}; "
                             f"set data.horizon >= {frames - 1}")

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        if self.loss == "trajectory":
            L = self.unroll(self.global_step)
            self._check_batch(batch, L + 1)
            nfe0 = self.model.nfe
            pred = self.model.trajectory(batch[:, 0], L)[:, 1:]
            self.log("train/nfe", float(self.model.nfe - nfe0))
            loss = F.mse_loss(pred, batch[:, 1:L + 1])
            outputs = {"inputs": batch[:, :L].reshape(-1, batch.shape[-1]), "predictions": pred,
                       "targets": batch[:, 1:L + 1]}
            self.log("train/unroll", float(L))
        else:
            self._check_batch(batch, 3)
            dt = self.model.dt
            xdot = (batch[:, 2:] - batch[:, :-2]) / (2 * dt)
            x = batch[:, 1:-1]
            T = x.shape[1]
            t = (torch.arange(1, T + 1, device=x.device, dtype=x.dtype) * dt).repeat(x.shape[0])
            pred = self.model.vector_field(x.reshape(-1, x.shape[-1]), t)
            loss = F.mse_loss(pred, xdot.reshape(-1, x.shape[-1]))
            outputs = {"inputs": x.reshape(-1, x.shape[-1])}
        self.log("train/mse", loss.detach(), prog_bar=True)
        loss = self._add_terms(loss, batch, outputs)
        self.log("train/loss", loss.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sse, self._val_count = None, None

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._check_batch(batch, 2)
        K = batch.shape[1] - 1
        pred = self.model.trajectory(batch[:, 0], K)[:, 1:]
        B = batch.shape[0]
        self.log("val/loss", F.mse_loss(pred, batch[:, 1:]), prog_bar=True, sync_dist=True, batch_size=B)
        sse = [((pred[:, k] - batch[:, k + 1]) ** 2).sum().double() for k in range(K)]
        self._accumulate_rollout_sse(sse, batch[:, 0].numel())
        if self.validate_terms and self.loss_terms:
            # Lightning validates under inference mode: leave it (and clone the frames out of
            # it) so the terms can differentiate the field
            with torch.inference_mode(False), torch.enable_grad():
                outputs = {"inputs": batch[:, :-1].reshape(-1, batch.shape[-1]).clone(),
                           "predictions": pred.clone(), "loss": batch.new_zeros(())}
                for i, term in enumerate(self.loss_terms):
                    _, logs = term(self, batch, outputs)
                    for k, v in dict(logs).items():
                        self.log(f"val/{term_name(term, i)}_{k}", v, sync_dist=True, batch_size=B)

    def on_validation_epoch_end(self) -> None:
        if self._val_sse is None:
            return
        rmse = (self._reduce_sum(self._val_sse) / self._reduce_sum(self._val_count)).sqrt().float()
        self.log("val/rmse_1", rmse[0])
        self.log(f"val/rmse_{rmse.shape[0]}", rmse[-1])
        self.log("val/rollout_rmse", rmse.mean(), prog_bar=True)
        self._val_sse = None

    def export_extra(self) -> dict[str, Any]:
        return {"task": self.task, "dt": self.model.dt}
