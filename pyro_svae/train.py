"""Stochastic variational inference: minibatches, KL warm-up, early stopping, device, progress."""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from tqdm.auto import tqdm

from .checkpoint import save_checkpoint
from .data import ScreenData
from .elbo import local_elbo
from .objective import cell_elbo, register_networks, step_function
from .factory import Components
from .optim import MultiTensorClippedAdam, matrix_names
from .runtime import DataOnDevice, flush_denormals, param_scope

__all__ = ["TrainConfig", "TrainingDiverged", "auto_max_epochs", "split_cells", "steps_per_epoch", "train"]

logger = logging.getLogger(__name__)

#: ``max_epochs="auto"`` aims at about this many steps: 14,000 left 27 of the grid's 42 seed-0 fits still improving;
#: 28,000 raised MCC on 34 of 42 (F1 +0.007, FDP at fdr 0.1 -0.012) for 1.7x the time (benchmarks/results/budget.md)
TARGET_STEPS = 28000
AUTO_EPOCHS = (50, 2000)  # the bounds of ``max_epochs="auto"``: small screens do not run for ever
#: epochs averaged in the validation ELBO that early stopping watches
EARLY_STOPPING_WINDOW = 10


class TrainingDiverged(FloatingPointError):
    """The loss became NaN or infinite. ``fit`` attaches the model with the best parameters so
    far as ``.model`` (when early stopping had recorded any; ``.restored`` says so)."""

    model = None
    history = None
    restored = False


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings of one fit (the model's own hyperparameters live in ``SVAEConfig``)."""

    batch_size: int = 256
    max_epochs: int = 100
    lr: float = 1e-3
    prior_lr: float = 1e-2
    kl_warmup_epochs: int = 20
    validation_fraction: float = 0.1
    early_stopping: bool = True
    patience: int = 50
    seed: int = 0
    clip_norm: float = 10.0
    lr_decay: float = 1.0  # both learning rates reach this fraction at the last step of ``max_epochs`` (exponentially)
    weight_decay: float = 0.0  # L2 penalty on the networks' weight matrices (ClippedAdam's weight_decay)
    #: "fused" (pyro_svae.objective, TraceMeanField_ELBO's estimator in one pass) or "pyro" (SVI itself)
    objective: str = "fused"


def steps_per_epoch(n_cells: int, batch_size: int) -> int:
    """Optimisation steps of one epoch over ``n_cells`` cells in minibatches of ``batch_size`` (the last one partial)."""
    return math.ceil(n_cells / batch_size)


def auto_max_epochs(n_cells: int, batch_size: int) -> int:
    """Epochs that give about :data:`TARGET_STEPS` steps, within :data:`AUTO_EPOCHS` (50 to 2,000)."""
    low, high = AUTO_EPOCHS
    return int(min(high, max(low, round(TARGET_STEPS / max(1, steps_per_epoch(n_cells, batch_size))))))


def split_cells(n_cells: int, validation_fraction: float, rng: np.random.Generator):
    """``(train, validation)`` cell positions, each sorted: a random ``validation_fraction`` held out."""
    order = rng.permutation(n_cells)
    n_val = int(round(validation_fraction * n_cells))
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _mean_elbo(cell_elbos: Callable, data: DataOnDevice, index: np.ndarray, batch_size: int) -> float:
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(index), batch_size):
            total += cell_elbos(data.minibatch(index[start:start + batch_size])).sum().item()
    return total / max(1, len(index))


def _stepper(name: str, components: Components, optimizer, store, n_train: int, device):
    """``(take_step, cell_elbos)`` of the training objective ``name``: ``"fused"`` (:mod:`pyro_svae.objective`)
    or ``"pyro"`` (Pyro's ``SVI`` with ``TraceMeanField_ELBO`` on the model and guide functions)."""
    if name == "fused":
        register_networks(components)
        step = step_function(components, optimizer, store)
        return (lambda batch, index, kl_weight: step(batch, n_train, kl_weight)), \
            (lambda batch: cell_elbo(components, batch))
    if name != "pyro":
        raise ValueError(f"Expected objective 'fused' or 'pyro', but got {name!r}.")
    model_fn, guide_fn = components.functions()
    svi = SVI(model_fn, guide_fn, optimizer, loss=TraceMeanField_ELBO())

    def take_step(batch, index, kl_weight):
        loss = svi.step(n_cells=n_train, cell_index=torch.as_tensor(index, device=device), kl_weight=kl_weight, **batch)
        return torch.tensor(loss), torch.tensor(np.nan)

    return take_step, (lambda batch: local_elbo(model_fn, guide_fn, batch))


@contextlib.contextmanager
def _frozen(store, frozen: dict):
    """Zero the gradients of the ``frozen`` parameters (or entries) while inside."""
    handles = []
    for name, mask in frozen.items():
        unconstrained = store._params[name]  # the leaf tensor the optimizer updates
        if mask is True:
            handles.append(unconstrained.register_hook(torch.zeros_like))
        else:
            mask = torch.as_tensor(mask, dtype=torch.bool, device=unconstrained.device)
            handles.append(unconstrained.register_hook(lambda grad, mask=mask: grad.masked_fill(mask, 0.0)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _snapshot(store) -> dict:
    return {name: value.detach().clone() for name, value in store.get_state()["params"].items()}


def _restore(store, snapshot: dict) -> None:
    with torch.no_grad():
        for name, value in store.get_state()["params"].items():
            value.copy_(snapshot[name])


def train(
    data: ScreenData,
    components: Components,
    *,
    config: TrainConfig,
    params: dict,
    device: torch.device,
    progress: bool = True,
    checkpoint_every: Optional[int] = None,
    checkpoint_dir=None,
    resume=None,
    settings: Optional[dict] = None,
    frozen: Optional[dict] = None,
    on_epoch_end: Optional[Callable[[int], None]] = None,
    epoch_offset: int = 0,
    checkpoint_extra: Optional[dict] = None,
) -> pd.DataFrame:
    """Fit ``model``/``guide`` by SVI with ``TraceMeanField_ELBO`` and ``ClippedAdam`` (multi-tensor).

    The parameters end in ``params`` (a param-store state): the best by validation ELBO when
    early stopping is on, else the last. Returns the history, one row per epoch.

    Every ``checkpoint_every`` epochs the whole state of the fit (parameters, optimizer moments,
    random generators, counters, history; with ``settings`` to check a resume against) goes to
    ``checkpoint_dir``. ``resume`` is a ``load_checkpoint`` result: training continues from it as
    if it had never stopped.

    ``frozen`` maps parameter names (already in ``params``) to ``True`` (the whole parameter) or a boolean
    tensor of its shape (``True`` entries): their gradients are zeroed, so Adam leaves them exactly as they
    were. :meth:`SVAE.transfer` fits only new perturbations' rows this way. Guide parameters of the prior's
    sites (``components.sites``) learn at ``config.prior_lr``, everything else at ``config.lr``, both times
    ``config.lr_decay ** (step / planned steps)``. ``on_epoch_end(epoch)`` is called after each epoch.

    The history's ``restored`` column marks the epoch whose parameters the model keeps, and ``kl_weight`` the
    warm-up weight reached. A ``UserWarning`` says when ``max_epochs`` ran out while the validation ELBO was
    still improving. Epochs are numbered from ``epoch_offset`` (the epochs of a warm start before this fit);
    ``checkpoint_extra`` is stored in every checkpoint, for the caller to resume with.
    """
    rng = np.random.default_rng(config.seed)
    train_index, val_index = split_cells(data.n_cells, config.validation_fraction, rng)
    n_val = len(val_index)
    if len(train_index) < config.batch_size:
        raise ValueError(f"batch_size={config.batch_size} is larger than the {len(train_index)} training cells; "
                         "expected batch_size <= number of cells (after the validation split).")
    on_device = DataOnDevice(data, device)
    nets = components.nets
    global_params = {name for site in components.sites for name in site.params.values()}
    decayed = matrix_names({"encoder": nets.encoder, "decoder": nets.decoder}) - set(frozen or {})  # never frozen ones

    def optim_args(param_name):
        lr = config.prior_lr if param_name in global_params else config.lr
        decay = config.weight_decay if param_name in decayed else 0.0
        return {"lr": lr, "clip_norm": config.clip_norm, "weight_decay": decay}

    # ClippedAdam's updates, bit for bit, with multi-tensor kernels (pyro_svae.optim)
    optimizer = MultiTensorClippedAdam(optim_args)
    epoch_steps = steps_per_epoch(len(train_index), config.batch_size)
    warmup_steps = config.kl_warmup_epochs * epoch_steps
    rows, best, best_elbo, since_best, step, first_epoch, best_epoch = [], None, -math.inf, 0, 0, 0, None
    stopped_early = False
    nets.to(device)
    n_train = len(train_index)
    on_cpu = device.type == "cpu"
    # argument validation is off while training (it costs time each step, and a NaN must reach the
    # loss check below, which restores the best parameters, rather than raise deep inside torch)
    with param_scope(params) as store, pyro.validation_enabled(False), flush_denormals(device.type == "cpu"), \
            _frozen(store, frozen or {}):
        take_step, cell_elbos = _stepper(config.objective, components, optimizer, store, n_train, device)
        if resume is not None:
            document, tensors = resume
            with torch.no_grad():
                cell_elbos(on_device.minibatch(train_index[:2]))  # creates every parameter
            _restore(store, {k: v.to(device) for k, v in tensors["params"].items()})
            optimizer.set_state(tensors["optim"])
            best = {k: v.to(device) for k, v in tensors["best"].items()} or None
            torch.set_rng_state(tensors["torch_rng"])
            rng.bit_generator.state = document["numpy_rng"]
            counters = document["progress"]
            rows, step, since_best = counters["rows"], counters["step"], counters["since_best"]
            best_elbo, first_epoch = counters["best_elbo"], counters["epoch"] + 1
            best_epoch = counters.get("best_epoch")
        bar = tqdm(range(first_epoch, config.max_epochs), disable=not progress, desc="pyro_svae", unit="epoch")
        try:
            for epoch in bar:
                nets.train()
                perm = rng.permutation(train_index)
                epoch_loss, epoch_cells = torch.zeros((), device=device), torch.zeros((), device=device)
                for start in range(0, len(perm), config.batch_size):
                    index = np.sort(perm[start:start + config.batch_size])
                    # warm-up weights > 0: the exact KL takes the guide site's scale, which must be positive
                    kl_weight = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
                    optimizer.lr_scale = config.lr_decay ** (step / (config.max_epochs * epoch_steps))
                    loss, cells = take_step(on_device.minibatch(index), index, kl_weight)
                    step += 1
                    # checked each step on the CPU; on a GPU at the epoch's end (a check is a device sync)
                    end_of_epoch = start + config.batch_size >= len(perm)
                    if (on_cpu or end_of_epoch) and not math.isfinite(loss.item() if on_cpu else epoch_loss.item() + loss.item()):
                        if best is not None:
                            _restore(store, best)
                        error = TrainingDiverged(
                            f"The loss became {float(loss)} at step {step} (epoch {epoch}); "
                            + ("the best parameters so far were restored: the error's .model holds them."
                               if best is not None else "no earlier parameters to restore.")
                        )
                        error.history = _history(rows)
                        error.restored = best is not None
                        raise error
                    epoch_loss += loss.to(device)
                    epoch_cells += cells.to(device)
                nets.eval()
                epoch_loss, epoch_cells = epoch_loss.item(), epoch_cells.item()
                # the training cells' ELBO is read off the steps themselves (as the parameters moved
                # during the epoch), not from a second pass over the data
                row = {"epoch": epoch + epoch_offset, "loss": epoch_loss / epoch_steps / n_train,
                       "train_elbo": epoch_cells / n_train, "validation_elbo": np.nan, "kl_weight": kl_weight}
                if n_val:
                    row["validation_elbo"] = _mean_elbo(cell_elbos, on_device, val_index, 4 * config.batch_size)
                rows.append(row)
                bar.set_postfix(elbo=f"{row['train_elbo']:.1f}", val=f"{row['validation_elbo']:.1f}")
                if n_val and config.early_stopping and epoch >= config.kl_warmup_epochs:
                    # the validation ELBO creeps up by ~0.005 nats/epoch under ~0.3 nats of Monte
                    # Carlo noise: a rolling mean keeps a lucky epoch from stopping training
                    recent = [r["validation_elbo"] for r in rows[-EARLY_STOPPING_WINDOW:]]
                    smoothed = float(np.mean(recent))
                    if smoothed > best_elbo:
                        best, best_elbo, since_best, best_epoch = _snapshot(store), smoothed, 0, epoch + epoch_offset
                    else:
                        since_best += 1
                        if since_best >= config.patience:
                            stopped_early = True
                            bar.close()  # the message goes after the bar, not over it
                            logger.info("Early stopping at epoch %d; parameters of epoch %d restored (smoothed "
                                        "validation ELBO %.3f).", epoch + epoch_offset, best_epoch, best_elbo)
                            break
                if on_epoch_end is not None:
                    on_epoch_end(epoch + epoch_offset)
                if checkpoint_every and (epoch + epoch_offset + 1) % checkpoint_every == 0:
                    save_checkpoint(
                        checkpoint_dir, settings=settings or {}, params=store.get_state()["params"],
                        optim_state=optimizer.get_state(), best=best, numpy_rng_state=rng.bit_generator.state,
                        progress={"epoch": epoch, "step": step, "since_best": since_best, "best_elbo": best_elbo,
                                  "best_epoch": best_epoch, "rows": rows, "extra": checkpoint_extra or {}})
        except KeyboardInterrupt:
            logger.warning("Training interrupted at step %d; keeping the best parameters so far.", step)
        bar.close()
        if best is not None:
            _restore(store, best)
    nets.eval()
    if best is not None and not stopped_early and rows and best_epoch >= rows[-1]["epoch"] - 1:
        warnings.warn("Training used every epoch (max_epochs) while the validation ELBO was still improving: its "
                      "best is at the end. A longer fit may do better.", UserWarning, stacklevel=3)
    return _history(rows, best_epoch if best is not None else None)


def _history(rows, restored_epoch: Optional[int] = None) -> pd.DataFrame:
    history = pd.DataFrame(rows, columns=["epoch", "train_elbo", "validation_elbo", "loss", "kl_weight"])
    restored = history["epoch"].max() if restored_epoch is None else restored_epoch
    history["restored"] = history["epoch"] == restored
    return history
