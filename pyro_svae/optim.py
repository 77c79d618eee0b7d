"""Pyro's ``ClippedAdam``, updating all parameters with multi-tensor (``torch._foreach_*``) kernels.

``pyro.optim.ClippedAdam`` keeps one ``torch.optim`` optimizer per parameter and steps them one
by one: ~26 Python-level optimizer calls per step for the default networks, about 2 ms of a
~15 ms CPU step (``benchmarks/speed.py``). This optimizer performs the same arithmetic, in the same
order, on all parameters of the same learning rate, clip and weight decay at once, so its updates are
bit-for-bit those of ``ClippedAdam`` (``tests/test_optim.py``) with a fraction of the Python work.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Union

import pyro
import torch
from pyro.optim import PyroOptim
from pyro.params.param_store import param_with_module_name

__all__ = ["MultiTensorClippedAdam", "matrix_names"]


def matrix_names(modules: Dict[str, torch.nn.Module]) -> set:
    """The param-store names (as ``pyro.module(name, module)`` gives them) of the 2-D parameters of ``modules``:
    the weight matrices, which ``fit(weight_decay=...)`` decays; not the biases (the decoder's output bias holds
    each gene's baseline) or normalisation gains."""
    return {param_with_module_name(prefix, name) for prefix, module in modules.items()
            for name, value in module.named_parameters() if value.dim() >= 2}


class MultiTensorClippedAdam(PyroOptim):
    """Adam with per-element gradient clipping: ``ClippedAdam`` (``lr_scale``, which the caller may change
    between steps, multiplies every learning rate, as ``ClippedAdam``'s ``lrd`` does).

    Parameters
    ----------
    optim_args : dict or callable
        ``{"lr": ..., "clip_norm": ..., "weight_decay": ...}``, or a function of the parameter's name
        returning it. ``weight_decay`` (default 0) adds ``weight_decay * p`` to the clipped gradient, as
        ``ClippedAdam`` does (an L2 penalty, scaled by Adam like the gradient).
    betas, eps : as ``torch.optim.Adam``.
    """

    def __init__(self, optim_args: Union[dict, Callable[[str], dict]], betas=(0.9, 0.999), eps: float = 1e-8):
        # no PyroOptim.__init__: that builds one torch optimizer per parameter, which is what this avoids
        self.pt_optim_args = optim_args
        self.betas, self.eps = betas, eps
        self.state: Dict[str, dict] = {}
        self.lr_scale = 1.0

    def _args(self, name: str) -> dict:
        args = self.pt_optim_args(name) if callable(self.pt_optim_args) else self.pt_optim_args
        return {"lr": args.get("lr", 1e-3) * self.lr_scale, "clip_norm": args.get("clip_norm", 10.0),
                "weight_decay": args.get("weight_decay", 0.0)}

    def __call__(self, params, *args, **kwargs) -> None:
        store = pyro.get_param_store()
        groups: dict = {}
        for p in params:
            if p.grad is None:
                continue
            name = store.param_name(p)
            state = self.state.get(name)
            if state is None:
                state = self.state[name] = {"step": 0, "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
            state["step"] += 1
            a = self._args(name)
            groups.setdefault((a["lr"], a["clip_norm"], a["weight_decay"], state["step"]), []).append((p, state))
        beta1, beta2 = self.betas
        with torch.no_grad():
            for (lr, clip_norm, weight_decay, step), members in groups.items():
                values = [p for p, _ in members]
                grads = [p.grad for p, _ in members]
                exp_avgs = [s["exp_avg"] for _, s in members]
                exp_avg_sqs = [s["exp_avg_sq"] for _, s in members]
                torch._foreach_clamp_min_(grads, -clip_norm)
                torch._foreach_clamp_max_(grads, clip_norm)
                if weight_decay != 0:  # a new list, as ClippedAdam's grad.add: p.grad keeps the clipped gradient
                    grads = torch._foreach_add(grads, values, alpha=weight_decay)
                torch._foreach_mul_(exp_avgs, beta1)
                torch._foreach_add_(exp_avgs, grads, alpha=1 - beta1)
                torch._foreach_mul_(exp_avg_sqs, beta2)
                torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
                denominators = torch._foreach_sqrt(exp_avg_sqs)
                torch._foreach_add_(denominators, self.eps)
                step_size = lr * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                torch._foreach_addcdiv_(values, exp_avgs, denominators, value=-step_size)

    def get_state(self) -> dict:
        return {name: {"step": s["step"], "exp_avg": s["exp_avg"].detach().clone(),
                       "exp_avg_sq": s["exp_avg_sq"].detach().clone()} for name, s in self.state.items()}

    def set_state(self, state_dict: dict) -> None:
        store = pyro.get_param_store()
        self.state = {}
        for name, s in state_dict.items():
            device = store._params[name].device if name in store._params else None
            self.state[name] = {"step": int(s["step"]), "exp_avg": s["exp_avg"].to(device),
                                "exp_avg_sq": s["exp_avg_sq"].to(device)}
