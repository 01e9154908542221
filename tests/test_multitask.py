"""Multitask (ICM) GPs against dense algebra, independent GPs, and on a correlated draw."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gpkernels import LMCSVGP, ExactGP, GaussianLikelihood, Matern, MultitaskExactGP, Scale
from tests.conftest import DEVICES


def inputs(n: int = 60, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, generator=gen, dtype=torch.float64) * 10


def with_gaps(y: torch.Tensor, seed: int = 1, keep: float = 0.8) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(y.shape, generator=gen) < keep, y, float("nan"))


def test_likelihood_matches_a_dense_gaussian_over_observed_entries() -> None:
    x = inputs()
    y = with_gaps(torch.stack([torch.sin(x[:, 0]), torch.cos(x[:, 0])], 1))
    model = MultitaskExactGP(Matern(1.5, 1.3), num_tasks=2, rank=1)
    lml = float(model.log_marginal_likelihood(x, y).detach())
    # The oracle: the ICM covariance written out entry by entry, in the data's units.
    rows, tasks = torch.nonzero(torch.isfinite(y), as_tuple=True)
    b = model.tasks.matrix.detach()
    k = model.kernel(x, x).detach()
    scale, noise = model.y_scale, model.noise.value.detach()
    cov = torch.empty(len(rows), len(rows), dtype=torch.float64)
    for i, (ri, ti) in enumerate(zip(rows, tasks, strict=True)):
        for j, (rj, tj) in enumerate(zip(rows, tasks, strict=True)):
            cov[i, j] = (
                scale[ti] * scale[tj] * (b[ti, tj] * k[ri, rj] + (noise[ti] if i == j else 0))
            )
    values = y[rows, tasks] - model.y_mean[tasks]
    dense = torch.distributions.MultivariateNormal(torch.zeros(len(rows)), cov).log_prob(values)
    assert lml == pytest.approx(float(dense), rel=1e-9)


def test_identity_task_covariance_equals_independent_gps() -> None:
    x = inputs(50)
    y = with_gaps(torch.stack([torch.sin(x[:, 0]), 3 + 2 * torch.cos(x[:, 0] / 2)], 1))
    model = MultitaskExactGP(Matern(2.5, 1.1), num_tasks=2, rank=1)
    with torch.no_grad():
        model.tasks.mixing.zero_()
        model.tasks.diagonal.set(torch.ones(2))
        model.noise.set(torch.tensor([0.05, 0.2]))
    model.condition(x, y)
    x_test = torch.linspace(0, 10, 40, dtype=torch.float64)[:, None]
    mean, var = model.predict(x_test)
    for t, noise in enumerate((0.05, 0.2)):
        kept = torch.isfinite(y[:, t])
        single = ExactGP(Scale(Matern(2.5, 1.1), 1.0), GaussianLikelihood(noise))
        m, v = single.condition(x[kept], y[kept, t]).predict(x_test)
        assert torch.allclose(mean[:, t], m, rtol=1e-9, atol=1e-9)
        assert torch.allclose(var[:, t], v, rtol=1e-6, atol=1e-12)  # 1e-8 seen


@pytest.mark.parametrize("device", DEVICES)
def test_a_correlated_variable_fills_a_block_the_other_misses(device: str) -> None:
    """ICM draw, correlation 0.9: the block where task 0 is missing but task 1 observed."""
    gen = torch.Generator().manual_seed(3)
    x = torch.linspace(0, 20, 160, dtype=torch.float64)[:, None]
    k = Matern(2.5, 1.5)(x, x).detach()
    b = torch.tensor([[1.0, 0.9], [0.9, 1.0]], dtype=torch.float64)
    cov = torch.kron(b, k) + 1e-8 * torch.eye(320, dtype=torch.float64)
    f = torch.linalg.cholesky(cov) @ torch.randn(320, generator=gen, dtype=torch.float64)
    f = f.reshape(2, 160).T
    y = f + 0.1 * torch.randn(160, 2, generator=gen, dtype=torch.float64)
    block = (x[:, 0] > 8) & (x[:, 0] < 12)
    y[block, 0] = float("nan")
    x, y, f, block = x.to(device), y.to(device), f.to(device), block.to(device)
    joint = MultitaskExactGP(Matern(2.5, 1.0), num_tasks=2, rank=1)
    joint.fit(x, y)
    single = ExactGP(Scale(Matern(2.5, 1.0)))
    single.fit(x[~block], y[~block, 0])
    rmse_joint = math.sqrt(float(((joint.predict(x[block])[0][:, 0] - f[block, 0]) ** 2).mean()))
    rmse_single = math.sqrt(float(((single.predict(x[block])[0] - f[block, 0]) ** 2).mean()))
    assert rmse_joint < 0.7 * rmse_single
    assert joint.hyperparameters()["task_correlation"][0][1] > 0.6


def test_bad_shapes_are_refused_with_the_expected_shape() -> None:
    model = MultitaskExactGP(Matern(1.5), num_tasks=3)
    x = inputs(10)
    with pytest.raises(ValueError, match=r"y \(n, 3\)"):
        model.fit(x, torch.zeros(10, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="rank must be"):
        MultitaskExactGP(Matern(1.5), num_tasks=2, rank=3)


def lmc_data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(80, 1, generator=gen, dtype=torch.float64) * 10
    f = torch.stack([torch.sin(x[:, 0]), 0.5 * torch.sin(x[:, 0]) + 0.1], 1)
    y = f + 0.05 * torch.randn(80, 2, generator=gen, dtype=torch.float64)
    y[torch.rand(80, generator=gen) < 0.3, 0] = float("nan")  # any subset observed per point
    y[torch.rand(80, generator=gen) < 0.3, 1] = float("nan")
    return x, y


def paired_models(mixing: torch.Tensor, diagonal: torch.Tensor, latents: int, x: torch.Tensor):
    icm = MultitaskExactGP(Matern(1.5, 0.8), num_tasks=2, rank=1)
    lmc = LMCSVGP(Matern(1.5, 0.8), num_outputs=2, num_latents=latents, inducing=x, batch_size=32)
    w = torch.tensor([[1.0], [0.6]], dtype=torch.float64)
    with torch.no_grad():
        icm.tasks.mixing.copy_(w)
        icm.tasks.diagonal.set(diagonal)
        lmc.mixing.copy_(mixing)
        for model in (icm, lmc):
            model.noise.set(torch.tensor([0.02, 0.05]))
    return icm, lmc


def test_lmc_at_the_inputs_equals_icm_rank_one_plus_diagonal() -> None:
    """B = w w^T + diag(v) is LMC with one shared latent and one latent per output."""
    x, y = lmc_data()
    v = torch.tensor([0.3, 0.2], dtype=torch.float64)
    w = torch.tensor([[1.0], [0.6]], dtype=torch.float64)
    icm, lmc = paired_models(torch.cat([w, torch.diag(v.sqrt())], 1), v, 3, x)
    icm.condition(x, y)
    lmc.condition(x, y)
    x_test = torch.linspace(0, 10, 50, dtype=torch.float64)[:, None]
    mean_i, var_i = icm.predict(x_test)
    mean_l, var_l = lmc.predict(x_test)
    assert torch.allclose(mean_l, mean_i, rtol=1e-8, atol=1e-10)
    assert float(((var_l - var_i).abs() / var_i).max()) < 1e-8
    lml = float(icm.log_marginal_likelihood(x, y).detach())
    assert lmc.elbo() == pytest.approx(lml, rel=1e-9)


def test_lmc_with_one_latent_matches_icm_of_rank_one() -> None:
    """ICM's task diagonal cannot go below its 1e-6 floor, hence the looser variance match."""
    x, y = lmc_data()
    w = torch.tensor([[1.0], [0.6]], dtype=torch.float64)
    icm, lmc = paired_models(w, torch.full((2,), 1.0001e-6, dtype=torch.float64), 1, x)
    icm.condition(x, y)
    lmc.condition(x, y)
    x_test = torch.linspace(0, 10, 50, dtype=torch.float64)[:, None]
    mean_i, var_i = icm.predict(x_test)
    mean_l, var_l = lmc.predict(x_test)
    assert float((mean_l - mean_i).abs().max() / mean_i.abs().max()) < 1e-4
    assert float(((var_l - var_i).abs() / var_i).max()) < 5e-3
    assert lmc.elbo() <= float(icm.log_marginal_likelihood(x, y).detach())


@pytest.mark.parametrize("device", DEVICES)
def test_lmc_fit_on_partly_observed_outputs(device: str) -> None:
    x, y = (t.to(device) for t in lmc_data(1))
    model = LMCSVGP(Matern(1.5, 1.0), num_outputs=2, num_latents=2, num_inducing=40, batch_size=32)
    start = model.condition(x, y).elbo()
    report = model.fit(x, y, epochs=100).fit_report
    assert report.iterations == 100 * math.ceil(80 / 32)  # every batch of every epoch
    assert model.elbo() > start
    x_test = torch.linspace(0.5, 9.5, 40, dtype=torch.float64, device=device)[:, None]
    mean, var = model.predict(x_test)
    truth = torch.sin(x_test[:, 0])
    assert float(torch.sqrt(torch.mean((mean[:, 0] - truth) ** 2))) < 0.2
    # The fitted model's predictions are the optimal q's, as the dense formula gives them
    # for its own Z and hyperparameters (float64 rounding, no jitter on K_ZZ: 1e-9 seen).
    mean_o, var_o = dense_lmc_optimum(model, x, y, x_test)
    assert float((mean - mean_o).abs().max() / mean_o.abs().max()) < 1e-7
    assert float(((var - var_o).abs() / var_o).max()) < 1e-7


def dense_lmc_optimum(model: LMCSVGP, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor):
    """Titsias' optimal q for LMC, unwhitened and dense in float64: u stacks every latent's
    values at Z, Sigma = (K_uu + K_uf N^-1 K_fu)^-1, mean K_*u Sigma K_uf N^-1 y and
    variance k_** - K_*u K_uu^-1 K_u* + K_*u Sigma K_u*, per output, in y's units."""
    z = (y - model.y_mean) / model.y_scale
    rows, outputs = torch.nonzero(torch.isfinite(z), as_tuple=True)
    w, noise = model.mixing.detach(), model.noise.value.detach()
    k_uu = torch.block_diag(*[k(model.z, model.z).detach() for k in model.kernels])
    k_fu = torch.cat(
        [w[outputs, q, None] * k(x[rows], model.z).detach() for q, k in enumerate(model.kernels)],
        1,
    )
    sigma = torch.linalg.inv(k_uu + k_fu.T @ (k_fu / noise[outputs, None]))
    weights = sigma @ (k_fu.T @ (z[rows, outputs] / noise[outputs]))
    means, variances = [], []
    for t in range(model.num_outputs):
        k_su = torch.cat(
            [w[t, q] * k(x_test, model.z).detach() for q, k in enumerate(model.kernels)], 1
        )
        prior = sum(w[t, q] ** 2 * k.diag(x_test).detach() for q, k in enumerate(model.kernels))
        explained = (k_su * torch.linalg.solve(k_uu, k_su.T).T).sum(1)
        means.append(k_su @ weights)
        variances.append(prior - explained + (k_su * (k_su @ sigma)).sum(1))
    scale = model.y_scale
    return torch.stack(means, 1) * scale + model.y_mean, torch.stack(variances, 1) * scale**2


class GraphRecordingLMC(LMCSVGP):
    """LMCSVGP noting, at each call of `_features`, whether autograd was recording."""

    def _features(self, whiteners, xb):  # noqa: ANN001, ANN202
        self.graph_built.append(torch.is_grad_enabled())
        return super()._features(whiteners, xb)


def test_lmc_fit_builds_autograd_graphs_only_for_the_batches_that_step() -> None:
    x, y = lmc_data(1)
    model = GraphRecordingLMC(Matern(1.5, 1.0), num_outputs=2, num_latents=2, batch_size=16)
    model.graph_built = []
    model.fit(x, y, epochs=3, every=4)  # 5 batches an epoch, 15 in all; steps at 1, 5, 9, 13
    steps = [(batch - 1) % 4 == 0 for batch in range(1, 16)]
    assert model.graph_built == steps + [False] * 5  # then conditioning, batch by batch


def test_lmc_fit_factorises_each_k_zz_once_per_hyperparameter_change() -> None:
    """Counted in torch's own profiler: the (M, M) Cholesky factorisations of a fit. A step
    batch factorises each K_ZZ with a graph, the batches after it share one factorisation
    without, and conditioning does one: Q (4 + 4 + 1) for 15 batches, 4 of them steps
    (it was 2 Q per batch: a jitter probe and then the factor)."""
    from torch.profiler import ProfilerActivity, profile

    x, y = lmc_data(1)
    model = LMCSVGP(Matern(1.5, 1.0), 2, num_latents=2, num_inducing=20, batch_size=16)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        model.fit(x, y, epochs=3, every=4)
    k_zz_factorisations = [
        e
        for e in prof.events()
        if e.name == "aten::linalg_cholesky_ex" and list(e.input_shapes[0]) == [20, 20]
    ]
    assert len(k_zz_factorisations) == 2 * (4 + 4 + 1)


def test_lmc_fit_gives_the_numbers_it_gave_with_two_factorisations_per_batch() -> None:
    """Predictions recorded from the fit before K_ZZ was factorised once (commit 7cac02a);
    sharing factorisations and dropping unused graphs changes nothing but the time."""
    x, y = lmc_data(1)
    model = LMCSVGP(Matern(1.5, 1.0), 2, num_latents=2, num_inducing=20, batch_size=16)
    model.fit(x, y, epochs=3)
    mean, var = model.predict(torch.tensor([[0.5], [2.5], [4.5], [7.5], [9.5]]).double())
    old_mean = [
        [0.5221577052048557, 0.35180524930710033],
        [0.5705990496797393, 0.3782561041668254],
        [-0.974850358705505, -0.38686949049831165],
        [0.8832939868675631, 0.5272912831420978],
        [-0.12841773752871827, 0.022632024157412722],
    ]
    old_var = [
        [0.0691504344989805, 0.017520328648647117],
        [0.010201176598881324, 0.0022837791187101547],
        [0.01076589024518548, 0.0023266014463950674],
        [0.09084008976591547, 0.02223251434291559],
        [0.03368516817775461, 0.00753069917167121],
    ]
    assert torch.allclose(mean, torch.tensor(old_mean, dtype=torch.float64), rtol=1e-10, atol=1e-12)
    assert torch.allclose(var, torch.tensor(old_var, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    assert model.elbo() == pytest.approx(52.31435550352972, rel=1e-10)


def test_real_weather_fills_held_out_days_of_temperature_from_dew_point_and_humidity() -> None:
    """JFK, 1-14 March 2013: temperature removed on three whole days; dew point and humidity
    (kept) carry the information in, so the joint model beats temperature alone."""
    import pandas as pd

    table = pd.read_csv(Path(__file__).parent / "data" / "nyc_weather_2013.csv.gz")
    table["t"] = pd.to_datetime(table["time_hour"]).dt.tz_localize(None)
    window = table[(table["origin"] == "JFK") & (table["t"] >= "2013-03-01")]
    window = window[window["t"] < "2013-03-15"].dropna(subset=["temp", "dewp", "humid"])
    hours = (window["t"] - window["t"].iloc[0]).dt.total_seconds().to_numpy() / 3600
    x = torch.tensor(hours, dtype=torch.float64)[:, None]
    y = torch.tensor(window[["temp", "dewp", "humid"]].to_numpy(), dtype=torch.float64)
    held = torch.zeros(len(x), dtype=torch.bool)
    for day in (2, 6, 10):
        held |= (x[:, 0] >= 24 * day) & (x[:, 0] < 24 * (day + 1))
    gappy = y.clone()
    gappy[held, 0] = float("nan")
    joint = MultitaskExactGP(Matern(2.5, 6.0), num_tasks=3, rank=2)
    joint.fit(x, gappy)
    alone = ExactGP(Scale(Matern(2.5, 6.0)))
    alone.fit(x[~held], y[~held, 0])
    rmse_joint = float(((joint.predict(x[held])[0][:, 0] - y[held, 0]) ** 2).mean().sqrt())
    rmse_alone = float(((alone.predict(x[held])[0] - y[held, 0]) ** 2).mean().sqrt())
    assert rmse_joint < 0.5 * rmse_alone  # measured: 1.0 vs 4.4 degrees F
