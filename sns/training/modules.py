"""LightningModules: the deterministic residual surrogate and the SNS pair denoiser.

Both take plain arguments: a model *spec* (:mod:`sns.models`; a JSON-able dict
that alone rebuilds the network, stored in the checkpoint hyper-parameters and in the
exported file), the optimizer and the learning-rate scheduler as *partials*
(``optimizer(params) -> Optimizer``, ``scheduler(optimizer) -> LRScheduler``; Hydra's
``_partial_: true``), and a list of extra loss terms (:mod:`sns.training.terms`).
Batches are windows of normalised frames ``(B, T, *state)`` from
:class:`sns.data.datamodule.WindowDataModule`; ``state`` is ``(C, H, W)`` or ``(D,)``.

EMA of the weights is Lightning's own ``EMAWeightAveraging`` callback (configured in
``conf/callbacks``): validation runs on the averaged weights, ``last.ckpt`` holds them in
``state_dict`` (the raw weights in ``current_model_state``), and after ``fit`` the module
holds them, ready for :func:`sns.export.save_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sns.models import build_model, model_task, resolve_spec
from sns.training.terms import LossTerm, UnrollSchedule, term_name

__all__ = ["PDERefinerModule", "PairDenoiserModule", "SurrogateModule"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

_INTERVALS = ("step", "epoch")


class _Base(pl.LightningModule):
    """Shared plumbing: model from a spec, optimizer/scheduler partials, loss terms."""

    task: str = ""

    def _setup_common(
        self,
        net: Mapping[str, Any],
        optimizer: OptimizerFactory | None,
        scheduler: SchedulerFactory | None,
        scheduler_interval: str,
        loss_terms: Sequence[LossTerm] | None,
    ) -> None:
        if model_task(net) != self.task:
            raise ValueError(
                f"{type(self).__name__} trains a {self.task}, but model kind {net['kind']!r} is a "
                f"{model_task(net)}; choose a {self.task} kind"
            )
        if scheduler_interval not in _INTERVALS:
            raise ValueError(f"unknown scheduler_interval {scheduler_interval!r}; valid choices: {_INTERVALS}")
        for i, term in enumerate(loss_terms or ()):
            if not callable(term):
                raise TypeError(f"loss_terms[{i}] is a {type(term).__name__}, not a callable "
                                "term(module, batch, outputs) -> (value, logs)")
        self.model_spec = resolve_spec(net)
        self.model = build_model(self.model_spec)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss_terms = list(loss_terms or ())

    def _add_terms(self, loss: Tensor, batch: Any, outputs: dict[str, Any]) -> Tensor:
        outputs["loss"] = loss
        for i, term in enumerate(self.loss_terms):
            value, logs = term(self, batch, outputs)
            if not isinstance(value, Tensor) or value.ndim != 0:
                raise ValueError(f"loss term {term_name(term, i)} must return a scalar tensor, got {value!r}")
            loss = loss + value
            prefix = term_name(term, i)
            self.log(f"train/{prefix}", value.detach())
            for k, v in dict(logs).items():
                self.log(f"train/{prefix}_{k}", v)
        return loss

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or (lambda p: torch.optim.AdamW(p, lr=1e-4))
        opt = factory(self.parameters())
        if self.scheduler_factory is None:
            return opt
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": self.scheduler_interval},
        }

    def export_extra(self) -> dict[str, Any]:
        """Metadata beyond the model spec that inference needs (see :mod:`sns.export`)."""
        return {"task": self.task}

    def _accumulate_rollout_sse(self, sse: list[Tensor], n_values: int) -> None:
        """Add one batch's per-lead-time squared errors to the epoch's running sums."""
        sse_t = torch.stack(sse)
        n = torch.tensor(float(n_values), dtype=torch.float64, device=sse_t.device)
        if self._val_sse is None or self._val_sse.shape != sse_t.shape:
            self._val_sse, self._val_count = sse_t, n
        else:
            self._val_sse, self._val_count = self._val_sse + sse_t, self._val_count + n

    def _reduce_sum(self, t: Tensor) -> Tensor:
        if self.trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(t, reduce_op="sum")
        return t


class SurrogateModule(_Base):
    """Residual surrogate ``x_n = x_{n-1} + f_theta(x_{n-1})`` trained by unrolling.

    Training loss on a window ``(x_0, ..., x_T)``, with ``L = unroll(global_step) <= T``::

        x^_0 = x_0,    x^_k = F(x^_{k-1} + sigma z_k),  z_k ~ N(0, I)
        loss = (1/L) sum_k MSE(f_theta(x^_{k-1} + sigma z_k), x_k - x^_{k-1} - sigma z_k)

    i.e. MSE on the increment; it equals ``MSE(x^_k, x_k)``.  ``sigma`` = ``input_noise``
    (paper: 1e-4) is drawn independently at every unrolled step.  With
    ``truncate_every = m`` the gradient flows through at most ``m`` consecutive steps
    (``x^`` is detached every ``m`` steps: truncated backpropagation through time).

    Validation logs the one-step MSE ``val/loss`` and the RMSE of a ``val_rollout_steps``-
    step autoregressive rollout from the first frame of each validation window against the
    truth: ``val/rmse_1``, ``val/rmse_<K>`` and the mean over steps ``val/rollout_rmse``
    (normalised units; RMSE over all samples, channels and grid points of that step).

    Args:
        net: model spec of a surrogate kind (``residual_unet``, ``residual_mlp``).
        optimizer: partial ``params -> Optimizer`` (default AdamW, lr 1e-4).
        scheduler: partial ``optimizer -> LRScheduler`` or None.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        unroll_start, unroll_max, unroll_every: :class:`~sns.training.terms.UnrollSchedule`.
        truncate_every: steps between detaches (None: full backpropagation).
        input_noise: std of the noise added to every network input during training.
        val_rollout_steps: rollout length of the validation metric (0: off).
        loss_terms: extra loss terms (:mod:`sns.training.terms`).
    """

    task = "surrogate"

    def __init__(
        self,
        net: Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        unroll_start: int = 1,
        unroll_max: int = 1,
        unroll_every: int = 0,
        truncate_every: int | None = None,
        input_noise: float = 1e-4,
        val_rollout_steps: int = 10,
        loss_terms: Sequence[LossTerm] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "loss_terms"])
        self._setup_common(net, optimizer, scheduler, scheduler_interval, loss_terms)
        self.unroll = UnrollSchedule(unroll_start, unroll_max, unroll_every)
        if truncate_every is not None and (not isinstance(truncate_every, int) or truncate_every < 1):
            raise ValueError(f"truncate_every must be a positive integer or None, got {truncate_every!r}")
        if not input_noise >= 0:
            raise ValueError(f"input_noise must be >= 0, got {input_noise!r}")
        if not isinstance(val_rollout_steps, int) or val_rollout_steps < 0:
            raise ValueError(f"val_rollout_steps must be a non-negative integer, got {val_rollout_steps!r}")
        self.truncate_every = truncate_every
        self.input_noise = float(input_noise)
        self.val_rollout_steps = val_rollout_steps
        self._val_sse: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        """One surrogate step ``(B, *state) -> (B, *state)``."""
        return self.model(x)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        L = self.unroll(self.global_step)
        if batch.shape[1] - 1 < L:
            raise ValueError(
                f"unroll length {L} needs windows of >= {L + 1} frames, got {batch.shape[1]}; "
                f"set data.horizon >= {self.unroll.max_length}"
            )
        x = batch[:, 0]
        preds, inputs, loss = [], [], batch.new_zeros(())
        for k in range(1, L + 1):
            if self.truncate_every is not None and (k - 1) % self.truncate_every == 0 and k > 1:
                x = x.detach()
            x_in = x + self.input_noise * torch.randn_like(x) if self.input_noise > 0 else x
            dx = self.model.increment(x_in) if hasattr(self.model, "increment") else self.model(x_in) - x_in
            loss = loss + F.mse_loss(dx, batch[:, k] - x_in)
            x = x_in + dx
            preds.append(x)
            inputs.append(x_in)
        loss = loss / L
        self.log("train/mse", loss.detach(), prog_bar=True)
        self.log("train/unroll", float(L))
        outputs = {"inputs": torch.cat(inputs), "predictions": torch.stack(preds, 1), "targets": batch[:, 1:L + 1]}
        loss = self._add_terms(loss, batch, outputs)
        self.log("train/loss", loss.detach())
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_sse, self._val_count = None, None

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        x = batch[:, 0]
        one = self.model(x)
        self.log("val/loss", F.mse_loss(one, batch[:, 1]), prog_bar=True, sync_dist=True,
                 batch_size=batch.shape[0])
        K = min(self.val_rollout_steps, batch.shape[1] - 1)
        if K == 0:
            return
        sse = []
        for k in range(1, K + 1):
            x = one if k == 1 else self.model(x)
            sse.append(((x - batch[:, k]) ** 2).sum().double())
        self._accumulate_rollout_sse(sse, batch[:, 0].numel())

    def on_validation_epoch_end(self) -> None:
        if self._val_sse is None:
            return
        sse, n = self._reduce_sum(self._val_sse), self._reduce_sum(self._val_count)
        rmse = (sse / n).sqrt().float()
        K = rmse.shape[0]
        self.log("val/rmse_1", rmse[0])
        self.log(f"val/rmse_{K}", rmse[-1])
        self.log("val/rollout_rmse", rmse.mean(), prog_bar=True)
        self._val_sse = None


class PairDenoiserModule(_Base):
    """SNS pair denoiser trained by multi-noise-level DSM (:func:`sns.diffusion.pair_dsm_loss`).

    ``loss = MSE(eps_hat, (e2, e1)) + lambda_ce (CE(logits_i2, i2) + CE(logits_i1, i1))``
    with independent uniform levels; parts logged as ``train/mse``, ``train/ce_i2``,
    ``train/ce_i1``.  Pairs are consecutive frames of each window: ``(x_0, x_1)`` only
    (``pairs="first"``) or all ``T - 1`` adjacent pairs (``pairs="all"``).

    Validation (deterministic: the noise comes from a generator seeded by ``val_seed`` and
    the batch index) logs ``val/loss`` and its parts, the level-estimation accuracy of the
    heads on independently noised pairs (``val/acc_i2``, ``val/acc_i1``: exact level;
    ``val/level_mae_i2``, ``val/level_mae_i1``: mean absolute error in levels), and, if
    ``val_rollout_steps > 0``, ``val/rollout_rmse``: RMSE over ``val_rollout_steps`` steps of
    an :class:`sns.refine.SNSRefiner` refining a *persistence* proposal (``x_hat = x_{n-1}``)
    against the truth (adaptive cost ``1 + s1 + s2`` calls per step: keep it short).

    Args:
        net: model spec of a denoiser kind (``blind_pair_unet``, ``explicit_pair_unet``,
            ``mlp_pair``); its ``n_levels`` must equal ``n_levels``.
        schedule: ``"cosine"`` or ``"linear"`` (:func:`sns.diffusion.make_schedule`).
        n_levels: S.
        schedule_kwargs: extra arguments of the schedule constructor.
        lambda_ce: weight of the level cross-entropies (paper: 0.1).
        pairs: ``"first"`` or ``"all"``.
        optimizer, scheduler, scheduler_interval, loss_terms: as :class:`SurrogateModule`.
        val_rollout_steps: length of the refined-persistence validation rollout (0: off).
        val_rollout_path: path of that refiner (``"A"``, ``"B"``, ``"C"``, ``"fix_s2"``).
        val_seed: seed of the validation noise.
        levels: level sampling of the loss (:func:`sns.diffusion.pair_dsm_loss`):
            ``"independent"`` (SNS), ``"diagonal"`` (ACDM), ``"unconditional"`` (Thermalizer).
            The exported file records the method (``sns``, ``acdm``, ``thermalizer``).
        level_emphasis: ``None`` (uniform levels) or ``{"low": i, "high": j, "factor": f}``:
            training draws the levels ``i..j`` ``f`` times as often as the others
            (:func:`sns.diffusion.emphasis_weights`; the heads are logit-adjusted so that they
            still read levels under a uniform prior).  Validation keeps uniform levels, so
            ``val/*`` stays comparable between runs with and without emphasis.
    """

    task = "denoiser"

    def __init__(
        self,
        net: Mapping[str, Any],
        schedule: str = "cosine",
        n_levels: int = 1000,
        schedule_kwargs: Mapping[str, float] | None = None,
        lambda_ce: float = 0.1,
        pairs: str = "first",
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        val_rollout_steps: int = 0,
        val_rollout_path: str = "A",
        val_seed: int = 0,
        loss_terms: Sequence[LossTerm] | None = None,
        levels: str = "independent",
        level_emphasis: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "loss_terms"])
        from sns.diffusion import make_schedule
        from sns.diffusion.loss import LEVEL_SAMPLING

        if levels not in LEVEL_SAMPLING:
            raise ValueError(f"unknown levels {levels!r}; valid choices: {LEVEL_SAMPLING}")
        if levels != "independent" and val_rollout_steps:
            raise ValueError(f"val_rollout_steps refines with SNS and needs levels='independent', got {levels!r}")
        self.levels = levels

        self._setup_common(net, optimizer, scheduler, scheduler_interval, loss_terms)
        self.schedule = make_schedule(schedule, n_levels, **dict(schedule_kwargs or {}))
        if self.model.n_levels != self.schedule.n_levels:
            raise ValueError(f"the denoiser has n_levels={self.model.n_levels} but the schedule has "
                             f"S={self.schedule.n_levels}; set both to the same value")
        if pairs not in ("first", "all"):
            raise ValueError(f"unknown pairs {pairs!r}; valid choices: ('first', 'all')")
        if not isinstance(val_rollout_steps, int) or val_rollout_steps < 0:
            raise ValueError(f"val_rollout_steps must be a non-negative integer, got {val_rollout_steps!r}")
        self.schedule_spec = {"name": schedule, "n_levels": int(n_levels), "kwargs": dict(schedule_kwargs or {})}
        self.level_weights = None
        if level_emphasis is not None:
            from sns.diffusion import emphasis_weights

            spec = dict(level_emphasis)
            if set(spec) != {"low", "high", "factor"}:
                raise ValueError(f"level_emphasis needs exactly the keys low, high, factor; got {sorted(spec)}")
            self.level_weights = emphasis_weights(self.schedule.n_levels, int(spec["low"]), int(spec["high"]),
                                                  float(spec["factor"]))
        self.lambda_ce = float(lambda_ce)
        self.pairs = pairs
        self.val_rollout_steps = val_rollout_steps
        self.val_rollout_path = val_rollout_path
        self.val_seed = int(val_seed)
        self._val_sse: Tensor | None = None

    def _pairs(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        if batch.shape[1] < 2:
            raise ValueError(f"windows need >= 2 frames for pairs, got {batch.shape[1]}")
        if self.pairs == "first":
            return batch[:, 0], batch[:, 1]
        return batch[:, :-1].flatten(0, 1), batch[:, 1:].flatten(0, 1)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        from sns.diffusion import pair_dsm_loss

        x_prev, x_next = self._pairs(batch)
        loss, parts = pair_dsm_loss(self.model, self.schedule, x_prev, x_next, self.lambda_ce, levels=self.levels,
                                    level_weights=self.level_weights)
        for k, v in parts.items():
            self.log(f"train/{k}", v, prog_bar=k == "mse")
        outputs = {"inputs": x_prev, "x_prev": x_prev, "x_next": x_next, "parts": parts}
        loss = self._add_terms(loss, batch, outputs)
        self.log("train/loss", loss.detach())
        return loss

    def _generator(self, batch_idx: int) -> torch.Generator:
        g = torch.Generator(device=self.device)
        g.manual_seed(self.val_seed * 1_000_003 + batch_idx)
        return g

    def on_validation_epoch_start(self) -> None:
        self._val_sse, self._val_count = None, None

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        from sns.diffusion import noise_pair, pair_dsm_loss

        g = self._generator(batch_idx)
        x_prev, x_next = batch[:, 0], batch[:, 1]
        B = x_prev.shape[0]
        loss, parts = pair_dsm_loss(self.model, self.schedule, x_prev, x_next, self.lambda_ce, generator=g,
                                    levels=self.levels)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=B)
        for k, v in parts.items():
            self.log(f"val/{k}", v, sync_dist=True, batch_size=B)
        S = self.schedule.n_levels
        i1 = torch.randint(0, S, (B,), generator=g, device=self.device)
        i2 = {"independent": lambda: torch.randint(0, S, (B,), generator=g, device=self.device),
              "diagonal": lambda: i1.clone(), "unconditional": lambda: torch.full_like(i1, S - 1)}[self.levels]()
        xp, xn, _, _ = noise_pair(self.schedule, x_prev, x_next, i2, i1, generator=g)
        l2, l1 = self.model.estimate_levels(xp, xn)
        heads = (("i2", l2, i2), ("i1", l1, i1)) if self.levels == "independent" else (("i1", l1, i1),)
        for name, logits, i in heads:
            est = logits.argmax(-1)
            self.log(f"val/acc_{name}", (est == i).float().mean(), sync_dist=True, batch_size=B)
            self.log(f"val/level_mae_{name}", (est - i).abs().float().mean(), sync_dist=True, batch_size=B)
        K = min(self.val_rollout_steps, batch.shape[1] - 1)
        if K > 0:
            from sns.refine import SNSRefiner

            refiner = SNSRefiner(self.model, self.schedule, surrogate=lambda x: x, path=self.val_rollout_path)
            x, sse = batch[:, 0], []
            for k in range(1, K + 1):
                x = refiner(x, generator=g)
                sse.append(((x - batch[:, k]) ** 2).sum().double())
            self._accumulate_rollout_sse(sse, batch[:, 0].numel())

    def on_validation_epoch_end(self) -> None:
        if self._val_sse is None:
            return
        rmse = (self._reduce_sum(self._val_sse) / self._reduce_sum(self._val_count)).sqrt().float()
        self.log("val/rollout_rmse", rmse.mean())
        self.log(f"val/rmse_{rmse.shape[0]}", rmse[-1])
        self._val_sse = None

    def export_extra(self) -> dict[str, Any]:
        from sns.methods import method_for_levels

        return {"task": self.task, "method": method_for_levels(self.levels), "schedule": dict(self.schedule_spec)}


class PDERefinerModule(_Base):
    """PDE-Refiner (:mod:`sns.baselines.pde_refiner`) trained by its v-prediction loss.

    Pairs ``(x_0, x_1)`` of each window; logs ``train/loss`` and ``val/loss`` (the same loss on
    validation pairs with noise from a seeded generator) and ``val/rmse_1``, the RMSE of the full
    ``K + 1``-call prediction against the truth (normalised units).

    Args:
        net: model spec of an explicit denoiser kind (``explicit_pair_unet``, ``mlp_pair`` with
            ``blind: false``) with ``n_levels = n_refinement_steps + 1``.
        n_refinement_steps: K (paper: 3).
        min_noise_std: the schedule's minimum (paper: 4e-7).
        optimizer, scheduler, scheduler_interval, loss_terms, val_seed: as :class:`PairDenoiserModule`.
    """

    task = "denoiser"

    def __init__(
        self,
        net: Mapping[str, Any],
        n_refinement_steps: int = 3,
        min_noise_std: float = 4e-7,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        val_seed: int = 0,
        loss_terms: Sequence[LossTerm] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "loss_terms"])
        from sns.baselines.pde_refiner import _check, pde_refiner_schedule

        self._setup_common(net, optimizer, scheduler, scheduler_interval, loss_terms)
        pde_refiner_schedule(n_refinement_steps, min_noise_std)  # validates both
        _check(self.model, n_refinement_steps)
        self.K = int(n_refinement_steps)
        self.min_noise_std = float(min_noise_std)
        self.val_seed = int(val_seed)

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        from sns.baselines.pde_refiner import pde_refiner_loss

        x_prev, x_next = batch[:, 0], batch[:, 1]
        loss = pde_refiner_loss(self.model, x_prev, x_next, self.K, self.min_noise_std)
        self.log("train/mse", loss.detach(), prog_bar=True)
        loss = self._add_terms(loss, batch, {"inputs": x_prev, "x_prev": x_prev, "x_next": x_next})
        self.log("train/loss", loss.detach())
        return loss

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        from sns.baselines.pde_refiner import PDERefiner, pde_refiner_loss

        g = torch.Generator(device=self.device)
        g.manual_seed(self.val_seed * 1_000_003 + batch_idx)
        x_prev, x_next = batch[:, 0], batch[:, 1]
        B = x_prev.shape[0]
        loss = pde_refiner_loss(self.model, x_prev, x_next, self.K, self.min_noise_std, generator=g)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True, batch_size=B)
        pred = PDERefiner(self.model, self.K, self.min_noise_std)(x_prev, generator=g)
        self.log("val/rmse_1", F.mse_loss(pred, x_next).sqrt(), sync_dist=True, batch_size=B)

    def export_extra(self) -> dict[str, Any]:
        return {"task": self.task, "method": "pde_refiner",
                "pde_refiner": {"n_refinement_steps": self.K, "min_noise_std": self.min_noise_std}}
