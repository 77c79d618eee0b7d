"""Training safety and awkward-but-valid data: interruptions, checkpoints, edge cases, property tests."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyro_svae
from pyro_svae.priors import plates

from .conftest import FAST, make_screen


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    adata = make_screen()
    settings_ = {**FAST, "max_epochs": 4, "early_stopping": False}
    full = pyro_svae.fit(adata, **settings_)
    pyro_svae.fit(adata, **{**settings_, "max_epochs": 2}, checkpoint_every=2, checkpoint_dir=tmp_path / "ck")
    resumed = pyro_svae.fit(adata, **settings_, resume_from=tmp_path / "ck")
    assert np.array_equal(resumed.get_latent(), full.get_latent())
    assert np.allclose(resumed.history["train_elbo"], full.history["train_elbo"])


def test_resume_refuses_other_settings_and_damaged_checkpoints(tmp_path):
    adata = make_screen()
    pyro_svae.fit(adata, **FAST, checkpoint_every=1, checkpoint_dir=tmp_path / "ck")
    with pytest.raises(ValueError, match="lr was 0.001 in the checkpoint but is 0.01 now"):
        pyro_svae.fit(adata, **FAST, lr=1e-2, resume_from=tmp_path / "ck")
    tensors = tmp_path / "ck" / "checkpoint.pt"
    tensors.write_bytes(tensors.read_bytes()[:100])
    with pytest.raises(ValueError, match="checksum"):
        pyro_svae.fit(adata, **FAST, resume_from=tmp_path / "ck")
    with pytest.raises(ValueError, match="checkpoint_dir is None"):
        pyro_svae.fit(adata, **FAST, checkpoint_every=1)


def test_lr_decay_reaches_its_fraction_at_the_last_planned_step(monkeypatch):
    scales = []

    class Recording(pyro_svae.train.MultiTensorClippedAdam):
        def __call__(self, params, *args, **kwargs):
            scales.append(self.lr_scale)
            return super().__call__(params, *args, **kwargs)

    monkeypatch.setattr(pyro_svae.train, "MultiTensorClippedAdam", Recording)
    pyro_svae.fit(make_screen(), **{**FAST, "max_epochs": 4}, early_stopping=False, warm_start=None, lr_decay=0.1)
    n = len(scales)
    assert n > 8 and scales[0] == 1.0 and np.all(np.diff(scales) < 0)
    assert scales[-1] == pytest.approx(0.1 ** ((n - 1) / n))
    with pytest.raises(ValueError, match=r"Expected lr_decay in \(0, 1\], but got 0"):
        pyro_svae.fit(make_screen(), **FAST, lr_decay=0)


def test_weight_decay_reaches_the_networks_only(monkeypatch):
    decays = {}

    class Recording(pyro_svae.train.MultiTensorClippedAdam):
        def __call__(self, params, *args, **kwargs):
            store = pyro.get_param_store()
            decays.update({store.param_name(p): self._args(store.param_name(p))["weight_decay"] for p in params})
            return super().__call__(params, *args, **kwargs)

    monkeypatch.setattr(pyro_svae.train, "MultiTensorClippedAdam", Recording)
    model = pyro_svae.fit(make_screen(), **{**FAST, "max_epochs": 2}, warm_start=None, weight_decay=3.0)
    nets = model.components.nets
    matrices = {f"{prefix}$$${name}" for prefix, module in (("encoder", nets.encoder), ("decoder", nets.decoder))
                for name, value in module.named_parameters() if value.dim() == 2}
    assert len(matrices) == 5  # one hidden layer each, the encoder's two heads and the decoder's one
    assert {decays[name] for name in matrices} == {3.0}
    others = set(decays) - matrices
    assert {decays[name] for name in others} == {0.0}
    assert {"dispersion", "decoder$$$logits.bias", "decoder$$$body.1.weight"} <= others  # baseline, LayerNorm gain
    from pyro_svae.report import _model_section

    assert "weight decay 3," in "\n".join(_model_section(model, "cpu"))
    # a frozen matrix stays as it was (SVAE.transfer freezes parameters), the others decay
    import torch

    from pyro_svae.data import read_screen
    from pyro_svae.factory import SVAEConfig, build, layout_of
    from pyro_svae.train import TrainConfig, train

    data = read_screen(make_screen())
    components, params = build(SVAEConfig(n_latent=3, n_hidden=16, n_layers=1), layout_of(data)), {}
    config = TrainConfig(batch_size=64, max_epochs=1, validation_fraction=0.0, early_stopping=False, weight_decay=50.0)
    train(data, components, config=config, params=params, device=torch.device("cpu"), progress=False)
    before = {name: value.detach().clone() for name, value in params["params"].items()}
    frozen, free = "decoder$$$logits.weight", "decoder$$$body.0.weight"
    train(data, components, config=config, params=params, device=torch.device("cpu"), progress=False, frozen={frozen: True})
    assert torch.equal(params["params"][frozen], before[frozen])
    assert not torch.equal(params["params"][free], before[free])
    for bad in (-1, float("inf")):
        with pytest.raises(ValueError, match=rf"Expected weight_decay to be finite and >= 0, but got {bad}"):
            pyro_svae.fit(make_screen(), **FAST, weight_decay=bad)


def test_checkpoints_from_before_lr_decay_encoder_and_weight_decay_resume_as_their_defaults():
    from pyro_svae.checkpoint import check_resumable

    check_resumable({"lr": 1e-3}, {"lr": 1e-3, "lr_decay": 1.0, "encoder": "counts", "weight_decay": 0.0})  # written before the setting existed
    with pytest.raises(ValueError, match="lr_decay was 1.0 in the checkpoint but is 0.5 now"):
        check_resumable({"lr": 1e-3}, {"lr": 1e-3, "lr_decay": 0.5, "encoder": "counts", "weight_decay": 0.0})
    check_resumable({"lr": 1e-3}, {"lr": 1e-3, "lr_decay": 1.0, "encoder": "counts", "weight_decay": 0.0})  # and before fit(encoder=)
    with pytest.raises(ValueError, match="encoder was 'counts' in the checkpoint but is 'full' now"):
        check_resumable({"lr": 1e-3}, {"lr": 1e-3, "lr_decay": 1.0, "encoder": "full", "weight_decay": 0.0})
    with pytest.raises(ValueError, match="weight_decay was 0.0 in the checkpoint but is 1.0 now"):  # and before weight_decay
        check_resumable({"lr": 1e-3}, {"lr": 1e-3, "lr_decay": 1.0, "encoder": "counts", "weight_decay": 1.0})


def test_keyboard_interrupt_returns_the_model_so_far():
    calls = {"n": 0}

    def interrupting(n_perturbations, n_latent):
        calls["n"] += 1
        if calls["n"] == 40:
            raise KeyboardInterrupt
        with plates(n_perturbations, n_latent):
            return pyro.sample("shift", dist.Normal(0.0, 1.0))  # [P, K]

    model = pyro_svae.fit(make_screen(), prior=interrupting, **{**FAST, "max_epochs": 50})
    assert 1 <= len(model.history) < 50
    assert np.isfinite(model.get_latent()).all()


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda a: a.X.__setitem__(slice(0, 5), 0), id="cells-with-zero-counts"),
        pytest.param(lambda a: a.X.__setitem__((slice(None), slice(0, 3)), 0), id="genes-zero-everywhere"),
        pytest.param(lambda a: _relabel(a, {0: "lonely"}), id="perturbation-with-one-cell"),
        pytest.param(lambda a: _only(a, {"control", "p0"}), id="single-perturbation"),
    ],
)
def test_awkward_but_valid_data_trains_to_finite_results(edit):
    adata = make_screen()
    adata = edit(adata) or adata
    model = pyro_svae.fit(adata, **FAST)
    assert np.isfinite(model.get_latent()).all()
    assert np.isfinite(model.history[["train_elbo", "validation_elbo"]].to_numpy()).all()
    assert np.isfinite(model.intervention_targets(num_samples=5).to_numpy()).all()


@pytest.mark.parametrize("kind", ["int64", "float32-csr", "float64-csc"])
def test_count_types_give_the_same_model(kind):
    adata = make_screen()
    reference = pyro_svae.fit(adata, **FAST).get_latent()
    counts = adata.X
    adata.X = {"int64": counts.astype(np.int64), "float32-csr": sp.csr_matrix(counts.astype(np.float32)),
               "float64-csc": sp.csc_matrix(counts.astype(np.float64))}[kind]
    assert np.allclose(pyro_svae.fit(adata, **FAST).get_latent(), reference, atol=1e-5)


def test_no_control_cells_with_control_none():
    adata = _only(make_screen(), {"p0", "p1", "p2"})
    with pytest.raises(ValueError, match="control='control' is not a label"):
        pyro_svae.fit(adata, **FAST)
    model = pyro_svae.fit(adata, control=None, **FAST)
    assert list(model.perturbation_names) == ["p0", "p1", "p2"]


def test_prior_of_the_wrong_shape_is_refused_by_fit():
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        pyro_svae.fit(make_screen(), prior=lambda p, k: pyro.sample("s", dist.Normal(0, 1).expand([p])), **FAST)


def test_load_warns_on_a_newer_package_version(fitted, tmp_path):
    import json

    model, _ = fitted
    model.save(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    document = json.loads(config.read_text())
    document["version"] = "99.0.0"
    config.write_text(json.dumps(document))
    with pytest.warns(UserWarning, match="newer"):
        pyro_svae.load(tmp_path / "m")


DOCUMENTED_ERRORS = (ValueError, KeyError, TypeError)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(
    n_cells=st.integers(8, 60),
    n_genes=st.integers(1, 12),
    n_labels=st.integers(1, 4),
    density=st.floats(0.0, 1.0),
    sparse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_fit_succeeds_or_raises_a_documented_error(n_cells, n_genes, n_labels, density, sparse, seed):
    import anndata
    import pandas as pd

    rng = np.random.default_rng(seed)
    counts = rng.poisson(5, size=(n_cells, n_genes)) * (rng.random((n_cells, n_genes)) < density)
    labels = rng.choice(["control"] + [f"g{i}" for i in range(n_labels)], size=n_cells)
    adata = anndata.AnnData(X=sp.csr_matrix(counts.astype(np.float32)) if sparse else counts.astype(np.float32),
                            obs=pd.DataFrame({"perturbation": labels}, index=[f"c{i}" for i in range(n_cells)]))
    try:
        model = pyro_svae.fit(adata, n_latent=2, n_hidden=8, n_layers=1, batch_size=4, max_epochs=1, progress=False)
    except DOCUMENTED_ERRORS:
        return
    assert np.isfinite(model.get_latent()).all()
    assert np.isfinite(model.history["train_elbo"]).all()


def _relabel(adata, rows: dict):
    labels = adata.obs["perturbation"].astype(str).to_numpy().copy()
    for row, label in rows.items():
        labels[row] = label
    adata.obs["perturbation"] = labels


def _only(adata, keep: set):
    return adata[adata.obs["perturbation"].astype(str).isin(keep).to_numpy()].copy()


def test_fit_leaves_the_process_floating_point_mode_alone():
    import torch

    from pyro_svae.runtime import _flushing_denormals

    assert not _flushing_denormals()
    pyro_svae.fit(make_screen(), **FAST)
    assert not _flushing_denormals()
    assert (torch.tensor([1e-38]) / 1e3).item() > 0


def test_divergence_names_the_step_and_hands_back_the_best_model():
    calls = {"n": 0}

    def diverging(n_perturbations, n_latent):
        calls["n"] += 1
        with plates(n_perturbations, n_latent):
            shift = pyro.sample("shift", dist.Normal(0.0, 1.0))  # [P, K]
        return shift * (float("nan") if calls["n"] > 60 else 1.0)

    with pytest.raises(FloatingPointError, match=r"at step \d+ \(epoch \d+\); the best parameters") as info:
        pyro_svae.fit(make_screen(), prior=diverging, **{**FAST, "max_epochs": 50, "kl_warmup_epochs": 1})
    model = info.value.model
    assert model is not None and len(model.history) >= 1
    assert np.isfinite(model.get_latent()).all()
