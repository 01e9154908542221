"""Our optimisers against known minima and against torch.optim's Adam step for step."""

from __future__ import annotations

import pytest
import torch

from gpkernels.optim import Adam, AdamSteps, LBFGSSteps, adam_until_calm, lbfgs


def test_lbfgs_finds_the_rosenbrock_minimum() -> None:
    x = torch.tensor([-1.2, 1.0], dtype=torch.float64, requires_grad=True)

    def rosenbrock() -> torch.Tensor:
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    result = lbfgs(rosenbrock, [x], max_iter=200, grad_tol=1e-8, change_tol=0.0)
    assert result.converged, result.reason
    assert torch.allclose(x.detach(), torch.ones(2, dtype=torch.float64), atol=1e-5)


def test_lbfgs_solves_a_quadratic_over_several_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=gen, dtype=torch.float64)
    matrix = a @ a.T + 6 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=gen, dtype=torch.float64)
    head = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    tail = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)

    def quadratic() -> torch.Tensor:
        v = torch.cat([head, tail.reshape(-1)])
        return 0.5 * v @ matrix @ v - b @ v

    result = lbfgs(quadratic, [head, tail], max_iter=100, grad_tol=1e-10, change_tol=0.0)
    assert result.converged
    found = torch.cat([head.detach(), tail.detach().reshape(-1)])
    assert torch.allclose(found, torch.linalg.solve(matrix, b), atol=1e-8)


def test_a_failing_objective_makes_the_step_shorter() -> None:
    x = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)

    def guarded() -> torch.Tensor:  # undefined (a factorisation error) beyond |x| > 4
        if float(x.abs()) > 4:
            raise torch.linalg.LinAlgError("not positive definite")
        return (x**2).sum() * 10

    result = lbfgs(guarded, [x], max_iter=50)
    assert result.converged
    assert float(x.abs()) < 1e-4


def test_adam_matches_torch_adam_step_for_step() -> None:
    gen = torch.Generator().manual_seed(1)
    start = torch.randn(5, generator=gen, dtype=torch.float64)
    target = torch.randn(5, generator=gen, dtype=torch.float64)
    ours = start.clone().requires_grad_(True)
    theirs = start.clone().requires_grad_(True)
    mine, reference = Adam([ours], lr=0.1), torch.optim.Adam([theirs], lr=0.1)
    for _ in range(25):
        for p, opt in ((ours, mine), (theirs, reference)):
            opt.zero_grad()
            ((p - target) ** 4).sum().backward()
            opt.step()
    assert torch.allclose(ours.detach(), theirs.detach(), rtol=1e-10, atol=1e-12)


def test_lbfgs_steps_refuse_a_non_finite_start_as_adam_does() -> None:
    x = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)

    def broken() -> torch.Tensor:
        return (x * float("nan")).sum()

    for steps in (LBFGSSteps(), AdamSteps()):
        with pytest.raises(FloatingPointError, match="KissGP loss"):
            steps.minimise(broken, [x], "KissGP")


def test_fit_steps_run_their_optimiser_with_their_settings() -> None:
    """LBFGSSteps is `lbfgs` with its tolerances; AdamSteps is `adam_until_calm`."""
    target = torch.tensor([0.5, -2.0], dtype=torch.float64)
    found = []
    for run in (
        lambda loss, p: LBFGSSteps(max_iter=50, grad_tol=1e-9, change_tol=0.0).minimise(
            loss, p, "test"
        ),
        lambda loss, p: lbfgs(loss, p, max_iter=50, grad_tol=1e-9, change_tol=0.0),
        lambda loss, p: AdamSteps(max_iter=7, lr=0.05, tol=0.0).minimise(loss, p, "test"),
        lambda loss, p: adam_until_calm(loss, p, 7, 0.05, 0.0, "test"),
    ):
        x = torch.zeros(2, dtype=torch.float64, requires_grad=True)
        result = run(lambda x=x: ((x - target) ** 4).sum() + ((x - target) ** 2).sum(), [x])
        found.append((x.detach().clone(), result.iterations))
    assert torch.equal(found[0][0], found[1][0]) and found[0][1] == found[1][1]
    assert torch.equal(found[2][0], found[3][0]) and found[2][1] == found[3][1] == 7
    assert torch.allclose(found[0][0], target, atol=1e-4)
