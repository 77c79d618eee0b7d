"""The multi-tensor ClippedAdam makes exactly the updates of pyro.optim.ClippedAdam."""

import numpy as np
import pyro
import torch
from pyro.infer import SVI, TraceMeanField_ELBO
from pyro.optim import ClippedAdam

from pyro_svae.data import read_screen
from pyro_svae.factory import SVAEConfig, build, layout_of
from pyro_svae.optim import MultiTensorClippedAdam
from pyro_svae.runtime import DataOnDevice, param_scope

from .conftest import make_screen


def _run(optimizer, steps=15):
    adata = make_screen(seed=4)
    data = read_screen(adata)
    torch.manual_seed(0)
    components = build(SVAEConfig(n_latent=3, n_hidden=16, n_layers=1), layout_of(data))
    params = {}
    with param_scope(params):
        svi = SVI(*components.functions(), optimizer, loss=TraceMeanField_ELBO())
        on_device = DataOnDevice(data, torch.device("cpu"))
        pyro.set_rng_seed(0)
        rng = np.random.default_rng(0)
        for _ in range(steps):
            index = np.sort(rng.choice(data.n_cells, 32, replace=False))
            svi.step(n_cells=data.n_cells, cell_index=torch.as_tensor(index), **on_device.minibatch(index))
        state = svi.optim.get_state()
    return {k: v.detach().clone() for k, v in params["params"].items()}, state


def test_updates_are_bit_for_bit_those_of_clipped_adam():
    def args(name):  # two learning rates, as fit uses, and a clip that bites
        return {"lr": 1e-2 if name.startswith("PriorGuide.") else 1e-3, "clip_norm": 0.5}

    reference, _ = _run(ClippedAdam(args))
    fast, state = _run(MultiTensorClippedAdam(args))
    assert set(reference) == set(fast)
    for name in reference:
        assert torch.equal(reference[name], fast[name]), name
    assert all(s["step"] == 15 for s in state.values())


def test_weight_decay_is_that_of_clipped_adam_on_the_parameters_it_names():
    def args(name):  # decay on the networks only, as fit(weight_decay=...) asks
        decay = 0.0 if name.startswith("PriorGuide.") or name == "dispersion" else 0.05
        return {"lr": 1e-2 if name.startswith("PriorGuide.") else 1e-3, "clip_norm": 0.5, "weight_decay": decay}

    reference, _ = _run(ClippedAdam(args))
    fast, _ = _run(MultiTensorClippedAdam(args))
    plain, _ = _run(MultiTensorClippedAdam(lambda name: {**args(name), "weight_decay": 0.0}))
    assert set(reference) == set(fast)
    for name in reference:
        assert torch.equal(reference[name], fast[name]), name
    decayed = [name for name in reference if args(name)["weight_decay"]]
    assert decayed and all(not torch.equal(fast[name], plain[name]) for name in decayed if "weight" in name)
    # with a zero gradient only the decayed parameter moves, towards 0
    optimizer = MultiTensorClippedAdam(lambda name: {"lr": 0.1, "weight_decay": 0.5 if name == "w" else 0.0})
    with param_scope({}) as store:
        store["w"], store["v"] = torch.ones(2), torch.ones(2)
        w, v = store._params["w"], store._params["v"]
        w.grad, v.grad = torch.zeros(2), torch.zeros(2)
        optimizer([w, v])
        assert (w < 1).all() and torch.equal(v, torch.ones(2)) and torch.equal(w.grad, torch.zeros(2))


def test_state_round_trip():
    optimizer = MultiTensorClippedAdam({"lr": 1e-3})
    p = torch.zeros(3, requires_grad=True)
    with param_scope({}) as store:
        store["w"] = p
        w = store._params["w"]
        w.grad = torch.ones(3)
        optimizer([w])
        state = optimizer.get_state()
        other = MultiTensorClippedAdam({"lr": 1e-3})
        other.set_state(state)
        assert other.state["w"]["step"] == 1 and torch.equal(other.state["w"]["exp_avg"], state["w"]["exp_avg"])


def test_lr_scale_multiplies_every_learning_rate():
    def args(scale):  # halving is exact in floating point, so the updates must match bit for bit
        return lambda name: {"lr": (1e-2 if name.startswith("PriorGuide.") else 1e-3) * scale, "clip_norm": 0.5}

    reference, _ = _run(ClippedAdam(args(0.5)))
    scaled = MultiTensorClippedAdam(args(1.0))
    scaled.lr_scale = 0.5
    fast, _ = _run(scaled)
    for name in reference:
        assert torch.equal(reference[name], fast[name]), name
