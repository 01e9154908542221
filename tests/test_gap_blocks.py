"""The gap-block preconditioner (gpkernels/gap_blocks.py) against scipy's labelling and
dense float64 algebra: gaps found, blocks packed, probed entries, and the preconditioned
stochastic log-determinant of the gap block."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from gpkernels import Kernel, separable
from gpkernels.gap_blocks import GapPreconditioner, gap_labels, pack_blocks, probe_radius
from gpkernels.kiss_paths import KissSettings, axis_columns
from gpkernels.lattice import detect_lattice
from gpkernels.linalg import NumericalWarning
from gpkernels.ongrid import GapBlock, ObservedKronecker, preconditioned_gap_term
from gpkernels.solvers import pcg, rademacher
from gpkernels.structured import Kronecker
from tests.test_kiss_fit_speed import gappy_grid


def random_mask(shape: tuple[int, ...], fraction: float, seed: int) -> np.ndarray:
    gen = np.random.default_rng(seed)
    return gen.random(shape) < fraction


@pytest.mark.parametrize("shape", [(40,), (23, 31), (7, 9, 11)])
def test_gap_labels_match_scipy(shape: tuple[int, ...]) -> None:
    mask = random_mask(shape, 0.45, seed=len(shape))
    missing = torch.from_numpy(np.flatnonzero(mask))
    labels = gap_labels(shape, missing)
    theirs = ndimage.label(mask)[0].reshape(-1)[np.flatnonzero(mask)]
    # Same partition: a one-to-one map between our labels and scipy's.
    pairs = set(zip(labels.tolist(), theirs.tolist(), strict=True))
    assert len(pairs) == len(set(labels.tolist())) == len(set(theirs.tolist()))
    assert all(missing[labels == label].min() == label for label in set(labels.tolist()))


def test_blocks_hold_whole_gaps_and_respect_the_limits() -> None:
    labels = torch.tensor([0] * 9 + [20] * 2 + [30] * 3 + [40] * 1 + [50] * 4)
    blocks = pack_blocks(labels, limit=4, pack=3)
    sizes = [b.numel() for b in blocks]
    assert sorted(torch.cat(blocks).tolist()) == list(range(labels.numel()))
    # The 9-cell gap cut into 4 + 4 + 1, the 3- and 4-cell gaps alone (not under `pack`),
    # the 2- and 1-cell gaps packed together, whole.
    assert sizes == [4, 4, 1, 3, 4, 3]
    assert set(labels[blocks[-1]].tolist()) == {20, 40}
    assert labels[blocks[3]].unique().tolist() == [30]


def kronecker_case(n1: int = 30, n2: int = 34, seed: int = 2):  # noqa: ANN201
    """A separable Matern-3/2 grid operator with a third of its cells missing in blobs."""
    x, _ = gappy_grid(n1, n2, seed)
    lattice = detect_lattice(x)
    columns = axis_columns(separable_kernel(), lattice, torch.float64, x.device)
    observed = lattice.cell_index(x)
    op = ObservedKronecker(
        Kronecker(columns, torch.tensor(1.0, dtype=torch.float64)),
        observed,
        torch.tensor(0.003, dtype=torch.float64),
    )
    full = op.grid.matmul(torch.eye(op.grid.size, dtype=torch.float64)) + 0.003 * torch.eye(
        op.grid.size, dtype=torch.float64
    )
    dense_gap_block = torch.linalg.inv(full.detach())[op.missing][:, op.missing]
    return op, lattice, dense_gap_block


def separable_kernel() -> Kernel:
    kernel = separable(["matern32", "matern32"])
    for factor in kernel.base.factors:
        factor.lengthscale = 0.1
    return kernel


def block_matrix(preconditioner: GapPreconditioner, m: int) -> torch.Tensor:
    dense = torch.zeros(m, m, dtype=torch.float64)
    for b in preconditioner.blocks:
        dense[b.positions[:, None], b.positions[None, :]] = b.factor @ b.factor.T
    return dense


def test_blocks_are_the_gap_block_entries_within_the_probing_radius() -> None:
    op, lattice, dense = kronecker_case()
    gaps = op.gaps
    preconditioner = GapPreconditioner(gaps.eig, gaps.inverse, gaps.missing, budget=81)
    assert preconditioner.radius == probe_radius(lattice.shape, 81) == 4
    assert not preconditioner.exact and preconditioner.jitter == 0.0
    coords = torch.stack([gaps.missing // lattice.shape[1], gaps.missing % lattice.shape[1]], 1)
    near = ((coords[:, None, :] - coords[None, :, :]).abs() <= 4).all(-1)
    ours = block_matrix(preconditioner, gaps.size)
    block_of = torch.empty(gaps.size, dtype=torch.long)
    for i, b in enumerate(preconditioner.blocks):
        block_of[b.positions] = i
    same_block = block_of[:, None] == block_of[None, :]
    # Within a block and the radius: A's entry up to what other cells of that colour add
    # (M^-1 decays, so that is small); outside: zero.
    inside = near & same_block
    scale = float(dense.diagonal().mean())
    assert float((ours - dense)[inside].abs().max()) < 0.05 * scale
    assert float(ours[~(near & same_block)].abs().max()) < 1e-12 * scale
    assert preconditioner.logdet() == pytest.approx(float(torch.logdet(ours)), rel=1e-9)


def test_few_gaps_give_the_exact_blocks_and_one_step_cg() -> None:
    op, lattice, dense = kronecker_case(12, 14, seed=4)
    gaps = op.gaps
    assert gaps.size <= 289  # one colour per missing cell
    preconditioner = gaps.preconditioner
    assert preconditioner.exact
    ours = block_matrix(preconditioner, gaps.size)
    block_of = torch.empty(gaps.size, dtype=torch.long)
    for i, b in enumerate(preconditioner.blocks):
        block_of[b.positions] = i
    blocks = block_of[:, None] == block_of[None, :]
    assert relative_error(ours[blocks], dense[blocks]) < 1e-10
    rhs = rademacher(gaps.size, 3, torch.Generator().manual_seed(0), dense)
    cold = pcg(gaps.matmul, rhs, None, 1e-8, 500)
    warm = pcg(gaps.matmul, rhs, preconditioner.solve, 1e-8, 500)
    assert warm.iterations < cold.iterations / 3


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def test_preconditioned_gap_logdet_and_gradient_pairs_match_dense() -> None:
    """A coarse preconditioner (probed within 2 cells): log|P| alone is off, the stochastic
    correction from 16 probes recovers most of that, and the probe solves are exact."""
    op, lattice, dense = kronecker_case()
    coarse = GapPreconditioner(op.gaps.eig, op.gaps.inverse, op.gaps.missing, budget=25)
    gaps = GapBlock(op.gaps.full, op.gaps.missing, coarse)
    exact = float(torch.logdet(dense))
    coarse_error = abs(coarse.logdet() - exact)
    assert coarse_error > 1.0
    for count, shrink in ((16, 4), (256, 16)):  # unbiased: the error falls with the probes
        settings = KissSettings(count, 30, 1e-8, 1000, 0, 256, 0, 0, 0)
        probes = rademacher(gaps.size, count, torch.Generator().manual_seed(1), dense)
        term = preconditioned_gap_term(gaps, probes, settings)
        assert abs(float(term.logdet) - exact) < coarse_error / shrink
    solved = torch.linalg.solve(dense, coarse.sample(probes))
    assert relative_error(term.left, gaps.inverse_columns(solved)) < 1e-6
    assert term.probe_solve.converged


def land_case(shape: tuple[int, int, int] = (12, 9, 10)):  # noqa: ANN201
    """A 3-D Matern-3/2 grid with 'land' missing at every time (13 lat-lon cells) and 20%
    of the other cells missing at random."""
    gen = np.random.default_rng(5)
    missing = gen.random(shape) < 0.2
    missing[:, 2:5, 3:7] = True
    missing[:, 7, 0] = True
    cells = np.stack(np.meshgrid(*[np.arange(n) / (n - 1) for n in shape], indexing="ij"), -1)
    x = torch.from_numpy(cells[~missing])
    lattice = detect_lattice(x)
    kernel = separable(["matern32"] * 3)
    for factor in kernel.base.factors:
        factor.lengthscale = 0.3
    columns = axis_columns(kernel, lattice, torch.float64, x.device)
    grid = Kronecker(columns, torch.tensor(1.0, dtype=torch.float64))
    op = ObservedKronecker(grid, lattice.cell_index(x), torch.tensor(0.01, dtype=torch.float64))
    eye = torch.eye(grid.size, dtype=torch.float64)
    full = grid.matmul(eye) + 0.01 * eye
    return op, torch.linalg.inv(full.detach())[op.missing][:, op.missing]


def test_cells_missing_along_a_whole_axis_get_their_exact_block() -> None:
    """Land (missing at every time): P over those cells is exactly A's block there (solve,
    sample covariance and log-determinant), the other gaps get probed blocks."""
    op, dense = land_case()
    preconditioner = op.gaps.preconditioner
    lines = preconditioner.lines
    assert lines is not None and lines.axis == 0 and lines.positions.shape == (12, 13)
    land = lines.positions.reshape(-1)
    exact = dense[land][:, land]
    eye = torch.eye(op.gaps.size, dtype=torch.float64)
    solved = preconditioner.solve(eye[:, land])[land]
    assert relative_error(solved, torch.linalg.inv(exact)) < 1e-5  # float32 apply
    sampled = preconditioner.sample(eye[:, land])[land]
    assert relative_error(sampled @ sampled.T, exact) < 1e-12
    blocks = sum(2.0 * float(b.factor.diagonal().log().sum()) for b in preconditioner.blocks)
    assert preconditioner.logdet() - blocks == pytest.approx(float(torch.logdet(exact)), 1e-10)
    covered = torch.cat([land] + [b.positions for b in preconditioner.blocks])
    assert sorted(covered.tolist()) == list(range(op.gaps.size))
    rhs = rademacher(op.gaps.size, 3, torch.Generator().manual_seed(0), dense)
    cold = pcg(op.gaps.matmul, rhs, None, 1e-8, 500)
    warm = pcg(op.gaps.matmul, rhs, preconditioner.solve, 1e-8, 500)
    assert warm.iterations < cold.iterations / 3


@torch.no_grad()
def test_a_pass_stops_when_its_own_residual_is_met_which_is_the_gap_residual_mapped() -> None:
    """The residual of K a after a gap CG pass is M_om rho (rho: the gap CG's residual),
    checked against dense float64 after a deliberately short CG; and a pass asked for a
    residual stops once it has it, short of the inner floor, with the solve within tol."""
    op, _, dense_gap_block = kronecker_case(seed=5)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(op.observed.numel(), 1, generator=gen, dtype=torch.float64)
    gaps = op.gaps
    w = gaps.inverse_matmul(op.embed(z))
    with pytest.warns(NumericalWarning, match="did not converge"):  # stopped early on purpose
        short = pcg(gaps.matmul, w[op.missing], None, 1e-30, 15)
    rho = w[op.missing] - dense_gap_block @ short.solution
    alpha = w[op.observed] - gaps.inverse_columns(short.solution)[op.observed]
    full = op.grid.matmul(torch.eye(op.grid.size, dtype=torch.float64))
    k_observed = full[op.observed][:, op.observed] + 0.003 * torch.eye(op.observed.numel())
    mapped = full[op.observed][:, op.missing] @ rho
    assert relative_error(z - k_observed @ alpha, mapped) < 1e-9
    target = 1e-6 * float(z.norm())
    solved, report = op.complement_solve(z, target, 2000)
    assert float((z - k_observed @ solved).norm()) <= target
    floor = pcg(gaps.matmul, w[op.missing], None, 1e-13, 2000)
    assert report.converged and report.iterations < floor.iterations
    exact = torch.linalg.solve(k_observed, z)
    answer, solve_report = op.solve(z, None, 1e-6, 2000)
    assert solve_report.refinements == 1 and relative_error(answer, exact) < 1e-3
