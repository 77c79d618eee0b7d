"""Training on several processes or GPUs with PyTorch Lightning (``pip install pyro_svae[distributed]``).

The same model, guide and ELBO as :func:`pyro_svae.fit`, in the pattern of Pyro's
``examples/svi_lightning.py``: a ``LightningModule`` computes
``TraceMeanField_ELBO().differentiable_loss(model, guide, ...)`` on its minibatch, and Lightning's
strategy (``"ddp_spawn"`` by default; ``"ddp"`` from a script, on several nodes) averages the
gradients. Each rank draws its own cells (Lightning's distributed sampler) and scales its local
terms by ``N / B`` through the model's explicit-index ``cells`` plate, so the averaged gradient is
that of the full-data ELBO with a ``ranks x batch_size`` minibatch. Every parameter, the
networks' and the prior's, is a parameter of the module, so all ranks hold identical values.

Differences from ``fit``: a fixed number of epochs (no validation split or early stopping) and
``torch.optim.Adam`` with per-element gradient clipping (Lightning's ``gradient_clip_val``)
instead of ``ClippedAdam`` (the same update up to where ``eps`` enters). Like ``fit``, it ends
with :func:`pyro_svae.prior_refit.refit_prior`, here on every cell.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pyro
import torch
from pyro.infer import TraceMeanField_ELBO

from .api import _check, model_config
from .data import read_screen
from .factory import Components, build, create_params, layout_of
from .prior_refit import refit_prior
from .svae import SVAE
from .runtime import DataOnDevice, param_scope
from .train import TrainConfig, steps_per_epoch

__all__ = ["fit"]


try:
    import lightning.pytorch as pl

    _LightningModule = pl.LightningModule
except ImportError:  # the module imports; fit() says what to install
    pl, _LightningModule = None, torch.nn.Module


class SVAEModule(_LightningModule):
    """The ELBO of one fitted model as a Lightning module; parameters shared with its param store."""

    def __init__(self, screen, components: Components, params: dict, config: TrainConfig, steps_per_epoch: int):
        super().__init__()
        self.screen, self.components, self.nets = screen, components, components.nets
        self.config, self.steps_per_epoch = config, steps_per_epoch
        self.names = sorted(name for name in params["params"] if "$$$" not in name)  # the prior's and dispersion
        self.globals = torch.nn.ParameterList([torch.nn.Parameter(params["params"][n].detach().clone())
                                               for n in self.names])
        self.constraints = params["constraints"]
        self.register_buffer("epoch_loss", torch.full((config.max_epochs,), float("nan"), dtype=torch.float64))
        self.register_buffer("rank_spread", torch.zeros((), dtype=torch.float64))
        self._data = None

    def _bind(self):
        """Point this process's param store at the module's parameters (once per process)."""
        store = pyro.get_param_store()
        if self._data is not None and all(store._params.get(n) is p for n, p in zip(self.names, self.globals)):
            return
        store.clear()
        params = dict(zip(self.names, self.globals))
        params.update({f"{prefix}$$${name}": p for prefix, net in (("encoder", self.nets.encoder),
                                                                   ("decoder", self.nets.decoder))
                       for name, p in net.named_parameters()})
        store.set_state({"params": params, "constraints": {n: self.constraints[n] for n in params}})
        self._data = DataOnDevice(self.screen, self.device)

    def training_step(self, index, batch_idx):
        self._bind()
        index = np.sort(index.cpu().numpy())
        step = self.global_step
        warmup = self.config.kl_warmup_epochs * self.steps_per_epoch
        kl_weight = min(1.0, (step + 1) / warmup) if warmup else 1.0
        loss = TraceMeanField_ELBO().differentiable_loss(
            *self.components.functions(), n_cells=self.screen.n_cells, cell_index=torch.as_tensor(index, device=self.device), kl_weight=kl_weight,
            **self._data.minibatch(index))
        self.log("loss", loss.detach() / self.screen.n_cells, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def on_train_epoch_end(self):
        self.epoch_loss[self.current_epoch] = float(self.trainer.callback_metrics["loss"])
        checksum = torch.stack([p.detach().double().sum() for p in self.parameters()])
        gathered = self.all_gather(checksum).reshape(-1, checksum.numel())
        self.rank_spread.fill_(float((gathered - gathered[0]).abs().max()))

    def teardown(self, stage):
        """Close this rank's process group when training is over, after every rank has reached this point.

        A rank that exits with its gloo group still open can abort in C++ at interpreter exit (seen as
        ``process 1 terminated with signal SIGABRT`` after a finished fit); closing it here, once no rank
        needs it, lets every process exit cleanly. Lightning has run its last collective by now.
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()

    def configure_optimizers(self):
        prior_names = {name for site in self.components.sites for name in site.params.values()}
        prior = [p for n, p in zip(self.names, self.globals) if n in prior_names]
        matrices = [p for p in self.nets.parameters() if p.dim() >= 2]  # what fit(weight_decay=...) decays
        rest = ([p for n, p in zip(self.names, self.globals) if n not in prior_names]
                + [p for p in self.nets.parameters() if p.dim() < 2])
        return torch.optim.Adam([{"params": matrices, "lr": self.config.lr, "weight_decay": self.config.weight_decay},
                                 {"params": rest, "lr": self.config.lr},
                                 {"params": prior, "lr": self.config.prior_lr}])



def _loader(n_cells: int, batch_size: int):
    return torch.utils.data.DataLoader(torch.arange(n_cells), batch_size=batch_size, shuffle=True, drop_last=False)


def fit(adata, perturbation_key: str = "perturbation", control: Optional[str] = "control", *, devices=2,
        accelerator: str = "cpu", strategy: str = "ddp_spawn", num_nodes: int = 1, max_epochs: int = 100,
        batch_size: int = 256, kl_warmup_epochs: Optional[int] = None, lr: float = 1e-3, prior_lr: float = 1e-2,
        weight_decay: float = 0.0, seed: int = 0, progress: bool = False, **options):
    """Fit on ``devices`` processes (CPU, gloo) or GPUs with a Lightning strategy.

    Takes :func:`pyro_svae.fit`'s data and model options (``layer``, ``batch_key``, ``n_latent``,
    ``prior``, ``prior_options``, ``likelihood``, ``n_hidden``, ``n_layers``, ...). ``batch_size``
    is per rank. ``weight_decay`` is ``fit``'s: an L2 penalty on the networks' weight matrices
    (:func:`pyro_svae.optim.matrix_names`; not their biases, nor the prior's parameters). Returns an :class:`~pyro_svae.SVAE` in this process, with
    ``rank_parameter_spread``, the largest difference of parameter checksums across ranks at the
    end (0 when the ranks agree).
    """
    if pl is None:
        raise ImportError("Distributed training needs PyTorch Lightning: pip install 'pyro_svae[distributed]'.")
    _check("weight_decay", weight_decay, bool(np.isfinite(weight_decay)) and weight_decay >= 0, "to be finite and >= 0")
    config, prior = model_config(perturbation_key, control, **options)
    screen = read_screen(adata, config.perturbation_key, config.control, layer=config.layer,
                         batch_key=config.batch_key, separator=config.separator,
                         allow_non_integer=config.allow_non_integer)
    warmup = max(1, max_epochs // 40) if kl_warmup_epochs is None else kl_warmup_epochs
    train_config = TrainConfig(batch_size=batch_size, max_epochs=max_epochs, lr=lr, prior_lr=prior_lr,
                               kl_warmup_epochs=warmup, weight_decay=weight_decay, validation_fraction=0.0, early_stopping=False, seed=seed)
    pyro.set_rng_seed(seed)
    components = build(config, layout_of(screen), prior)
    params: dict = {}
    with param_scope(params):
        create_params(components, "cpu")
    world = devices * num_nodes if isinstance(devices, int) else len(devices) * num_nodes
    module = SVAEModule(screen, components, params, train_config, steps_per_epoch(screen.n_cells, batch_size * world))
    trainer = pl.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                         max_epochs=max_epochs, gradient_clip_val=train_config.clip_norm,
                         gradient_clip_algorithm="value", logger=False, enable_checkpointing=False,
                         enable_progress_bar=progress, enable_model_summary=False, deterministic=False)
    trainer.fit(module, _loader(screen.n_cells, batch_size))
    # the trained values (brought back from rank 0 by the launcher) into the model's parameters
    with torch.no_grad():
        for name, value in zip(module.names, module.globals):
            params["params"][name].copy_(value)
    history = pd.DataFrame({"epoch": np.arange(max_epochs), "loss": module.epoch_loss.numpy()})
    history["train_elbo"], history["validation_elbo"] = -history["loss"], np.nan
    components.nets = module.nets  # trained in place, or brought back from rank 0
    # as in pyro_svae.fit: the prior's guide to convergence with the networks fixed, on every cell
    # (no cells are held out here)
    refit_prior(components, params, screen, torch.device("cpu"), seed=seed)
    out = SVAE(components, params, history=history[["epoch", "train_elbo", "validation_elbo", "loss"]],
               train_config=train_config, device="cpu", adata=adata)
    out.rank_parameter_spread = float(module.rank_spread)
    return out
