"""How a structured solve went, as values: one solve's report, and a solver path's diagnostics.

Solvers return these instead of writing into a shared dict; a model keeps the latest one.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class SolveReport:
    """One linear solve: CG iterations (all rounds), the final relative residual (worst
    right-hand side), whether it met its tolerance, and residual-correction rounds (where
    the solver refines)."""

    iterations: int
    relative_residual: float
    converged: bool
    refinements: int | None = None


@dataclass(frozen=True)
class SolverDiagnostics:
    """What a KissGP solver path reports: which path and grid, the preconditioner, jitter,
    the latest solve (and its probe solves, where the log-determinant's gradient has them),
    how log-determinants and variances were computed, the variance calibration, and the CG
    work of a fit (column-matmuls over all its solves, where the path counts them). Fields
    that do not apply to a path are None (and left out of `as_dict`)."""

    path: str
    grid_shape: tuple[int, ...]
    preconditioner: str | None = None
    jitter: float = 0.0
    solve: SolveReport | None = None
    probe_solve: SolveReport | None = None
    log_det_gaps: str | None = None
    logdet_method: str | None = None
    variance: str | None = None
    variance_last_quarter_change: float | None = None
    variance_calibration: str | None = None
    cg_work: int | None = None

    def with_solve(self, report: SolveReport) -> SolverDiagnostics:
        return replace(self, solve=report)

    def as_dict(self) -> dict:
        """A plain JSON-able dict: today's keys (`cg_iterations`, `cg_relative_residual`,
        `cg_converged`, `cg_refinements` for the solve; the same with `probe_` before them for
        the probe solves), only those that apply."""
        out: dict = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if value is None:
                continue
            if isinstance(value, SolveReport):
                prefix = "probe_cg_" if item.name == "probe_solve" else "cg_"
                out[prefix + "iterations"] = value.iterations
                out[prefix + "converged"] = value.converged
                out[prefix + "relative_residual"] = value.relative_residual
                if value.refinements is not None:
                    out[prefix + "refinements"] = value.refinements
            elif isinstance(value, tuple):
                out[item.name] = list(value)
            else:
                out[item.name] = value
        return out
