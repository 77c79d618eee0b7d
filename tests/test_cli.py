"""The command line end to end on a tiny screen written to disk: ``fit`` writes every output and a
report that names its figures and calls; ``report`` rebuilds it from the saved model; bad input
exits non-zero with the API's message on stderr and no traceback; the input file never changes."""

import contextlib
import dataclasses
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import anndata
import numpy as np
import pandas as pd
import pytest

import pyro_svae
from pyro_svae import cli, pl
from pyro_svae.datasets import simulate

TINY = ["--max-epochs", "2", "--n-latent", "3", "--n-hidden", "16", "--n-layers", "1", "--batch-size", "64",
        "--threads", "1", "--device", "cpu", "--ppc-samples", "20"]
KEYS = ["--perturbation-key", "perturbation", "--control", "control"]
FIGURES = ["training.png", "targets.png", "ppc.png"] + [f"{name}.png" for name in ("shifts", "gene_programs")
                                                        if getattr(pl, name, None) is not None]
TABLES = ["targets.csv", "inclusion_probabilities.csv", "gene_programs.csv"]


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def screen_file(tmp_path_factory):
    adata = simulate(n_perturbations=4, n_latent=3, n_genes=30, n_cells_per_perturbation=40, n_control=60,
                     max_targets=2, n_hidden=8, seed=0)
    adata.uns["pyro_svae_filtering"] = {"source": "simulated", "min_cells": 20, "perturbations_dropped": ["p9"]}
    path = tmp_path_factory.mktemp("screen") / "screen.h5ad"
    adata.write_h5ad(path)
    return path


@pytest.fixture(scope="module")
def fitted_run(screen_file, tmp_path_factory):
    """One ``pyro-svae fit`` in process: ``(out, stdout, stderr, input digest before)``."""
    before = _digest(screen_file)
    out = tmp_path_factory.mktemp("run") / "results"
    stdout, stderr = io.StringIO(), io.StringIO()  # capsys is per test; this fit is shared by the module
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(["fit", str(screen_file), *KEYS, *TINY, "--restarts", "2", "--out", str(out)])
    assert code == 0, stderr.getvalue()
    return out, stdout.getvalue(), stderr.getvalue(), before


def test_fit_writes_every_output(fitted_run, screen_file):
    out, stdout, stderr, before = fitted_run
    for name in ["model", "results.h5ad", "report.md"] + TABLES + FIGURES:
        assert (out / name).exists(), name
        assert str(out / name) in stdout.splitlines(), f"{name} is not among the paths on stdout"
    assert "Fitting 220 cells x 30 genes" in stderr  # the log goes to stderr, the paths alone to stdout
    assert all(line.startswith(str(out)) for line in stdout.splitlines())
    assert _digest(screen_file) == before, "the input file changed"
    results = anndata.read_h5ad(out / "results.h5ad")
    assert results.obsm["X_svae"].shape == (220, 3) and "svae" in results.uns
    original = anndata.read_h5ad(screen_file)
    assert "X_svae" not in original.obsm and "svae" not in original.uns
    model = pyro_svae.load(out / "model", adata=original)
    assert model.config.n_latent == 3 and model.config.n_hidden == 16
    # --restarts 2: seeds 0 and 1 fitted, the kept one's table saved with the model
    assert list(model.restarts["seed"]) == [0, 1] and model.restarts["chosen"].sum() == 1
    assert model.train_config.seed == int(model.restarts.loc[model.restarts["chosen"], "seed"].item())


def test_report_names_figures_calls_and_filtering(fitted_run):
    out = fitted_run[0]
    report = (out / "report.md").read_text()
    for figure in FIGURES:
        assert f"]({figure})" in report, figure
    targets = np.loadtxt(out / "targets.csv", delimiter=",", skiprows=1, dtype=str, ndmin=1)
    assert f"{len(targets)} (perturbation, latent) pairs called at a Bayesian FDR of 0.1" in report
    if len(targets):
        assert "| perturbation | latent | pip |" in report
        assert "### Top genes of the targeted latents" in report and "| latent | targeted by |" in report
    assert "min_cells: 20" in report and "perturbations_dropped: 1: p9" in report
    assert "prior `spike_and_slab`" in report and "2 epochs run" in report
    assert "the highest ELBO per cell of 2 restarts (seed: ELBO; 0: " in report
    assert "| gene_mean |" in report and "| perturbation_shift |" in report  # the PPC coverage table


def test_report_states_a_decaying_learning_rate(fitted_run):
    from pyro_svae.report import _model_section

    model = pyro_svae.load(fitted_run[0] / "model")
    assert "(networks / prior), KL warm-up" in "\n".join(_model_section(model, "cpu"))
    model.train_config = dataclasses.replace(model.train_config, lr_decay=0.1)
    assert "(networks / prior, decaying to 0.1 of that), KL warm-up" in "\n".join(_model_section(model, "cpu"))
    assert "hidden units\n" in "\n".join(_model_section(model, "cpu"))
    model.components.config = dataclasses.replace(model.config, encoder="conjugate")
    assert "hidden units, encoder `conjugate`\n" in "\n".join(_model_section(model, "cpu"))


def test_report_states_the_mixed_latent_check_when_it_ran(fitted_run):
    from pyro_svae.report import _model_section

    model = pyro_svae.load(fitted_run[0] / "model")
    assert "Mixed-latent check" not in "\n".join(_model_section(model, "cpu"))  # 2 epochs: never checked
    history = model.history.assign(closeness=np.nan)
    history.loc[history.index[-1], "closeness"] = 0.96
    model.history = history
    below = f"rotated again below {pyro_svae.warm_start.REROTATE_BELOW}"
    assert f"axes 16 degrees from the model's (closeness 0.960; {below}): left as it was." in \
        "\n".join(_model_section(model, "cpu"))
    model.history = pd.concat([history, history.tail(1).assign(stage="re-rotated", closeness=np.nan)])
    assert f"(closeness 0.960; {below}): rotated again and its prior refitted." in \
        "\n".join(_model_section(model, "cpu"))


def test_report_command_rebuilds_the_report_and_refuses_a_full_folder(fitted_run, screen_file, tmp_path, capsys):
    out = fitted_run[0]
    args = ["report", str(out / "model"), str(screen_file), "--out", str(tmp_path), "--device", "cpu",
            "--ppc-samples", "10", "--quiet"]
    assert cli.main(args) == 0
    captured = capsys.readouterr()
    assert "INFO" not in captured.err  # --quiet
    assert str(tmp_path / "report.md") in captured.out.splitlines()
    for name in ["report.md"] + TABLES + FIGURES:
        assert (tmp_path / name).exists(), name
    assert (tmp_path / "targets.csv").read_text() == (out / "targets.csv").read_text()  # same seed, same calls
    assert "of 2 restarts" in (tmp_path / "report.md").read_text()  # the restarts table came back with the model
    assert cli.main(args) == 1
    assert "exists and is not empty; pass --overwrite" in capsys.readouterr().err
    assert cli.main(args + ["--overwrite"]) == 0


def _expected_message(screen_file, **kwargs) -> str:
    """The message the Python API gives for the same bad input."""
    with pytest.raises((KeyError, ValueError)) as error:
        pyro_svae.fit(anndata.read_h5ad(screen_file), progress=False, **kwargs)
    return str(error.value.args[0])


@pytest.mark.parametrize("case", ["missing file", "missing column", "wrong control", "bad prior option",
                                  "bad prior value", "existing out", "out holds the input"])
def test_bad_input_exits_1_with_the_message(case, screen_file, tmp_path, capsys):
    before = _digest(screen_file)
    source, args, expected = str(screen_file), list(KEYS), None
    out = tmp_path / "out"
    if case == "missing file":
        source, expected = str(tmp_path / "nope.h5ad"), "does not exist"
    elif case == "missing column":
        args[1] = "guide"
        expected = _expected_message(screen_file, perturbation_key="guide")
        assert "is not a column of adata.obs" in expected
    elif case == "wrong control":
        args[3] = "NT"
        expected = _expected_message(screen_file, control="NT")
        assert "is not a label" in expected
    elif case == "bad prior option":
        args += ["--prior-option", "nonsense=1"]
        expected = "does not take options ['nonsense']"
    elif case == "bad prior value":
        args += ["--prior-option", "prior_inclusion=2"]
        expected = "Expected prior_inclusion in (0, 1), but got 2."
    elif case == "existing out":
        out.mkdir()
        (out / "notes.txt").write_text("an earlier run")
        expected = "exists and is not empty; pass --overwrite"
    else:
        out.mkdir()
        (out / "results.h5ad").write_bytes(screen_file.read_bytes())
        source, expected = str(out / "results.h5ad"), "would overwrite the input"
        args.append("--overwrite")
    code = cli.main(["fit", source, *args, *TINY, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1
    assert expected in err and err.rstrip().endswith(".")
    assert "Traceback" not in err and "Trace Shapes" not in err
    assert _digest(screen_file) == before
    if case == "missing file":
        assert not out.exists(), "a failed run must not create --out"
    if case == "existing out":
        assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("bad", [["--perturbation-key", "perturbation"], ["--control", "control"],
                                 KEYS + ["--no-control"], KEYS + ["--max-epochs", "0"], KEYS + ["--prior", "dense"],
                                 KEYS + ["--prior-option", "min_shift"],
                                 KEYS + ["--prior-option", "min_shift=abc"], KEYS + ["--fdr", "1.5"],
                                 KEYS + ["--device", "gpu"], KEYS + ["--likelihood", "gaussian"]])
def test_usage_errors_exit_2(bad, screen_file, capsys):
    assert cli.main(["fit", str(screen_file), *bad]) == 2
    err = capsys.readouterr().err
    assert "usage: pyro-svae fit" in err and "error:" in err


def test_help_documents_every_option(capsys):
    assert cli.main(["fit", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ["--perturbation-key", "--control", "--no-control", "--batch-key", "--layer", "--n-latent",
                   "--prior", "--prior-option", "--likelihood", "--max-epochs", "--batch-size", "--seed", "--fdr",
                   "--device", "--out", "--overwrite", "--quiet", "--restarts"]:
        assert option in text, option
    assert "(default: 0.1)" in text and "(default: auto)" in text and "(default: spike_and_slab)" in text


def test_python_dash_m_help_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "pyro_svae", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: pyro-svae" in result.stdout and "fit" in result.stdout and "report" in result.stdout


def test_console_script_entry_point():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["pyro-svae"] == "pyro_svae.cli:main"
