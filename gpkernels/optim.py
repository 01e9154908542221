"""Small optimisers over lists of tensors: Adam, and L-BFGS with a backtracking line search;
`AdamSteps` / `LBFGSSteps` are a model fit's choice of either, passed in as a value.

Ours rather than torch.optim's: building any torch.optim optimiser imports torch._dynamo
(about 1.4 s and 70 MB per process), which every Ray worker would pay before its first tile.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

ARMIJO = 1e-4  # sufficient-decrease constant of the line search
MAX_HALVINGS = 30


class Adam:
    """Adam (Kingma & Ba) with bias correction, stepping tensors in place from their .grad."""

    def __init__(
        self,
        params: Sequence[torch.Tensor],
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.steps = 0
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        b1, b2 = self.betas
        for p, m, v in zip(self.params, self.first, self.second, strict=True):
            if p.grad is None:
                continue
            m.mul_(b1).add_(p.grad, alpha=1 - b1)
            v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
            m_hat = m / (1 - b1**self.steps)
            v_hat = v / (1 - b2**self.steps)
            p.sub_(self.lr * m_hat / (v_hat.sqrt() + self.eps))


@dataclass
class LBFGSResult:
    """How a minimisation ended: iterations taken, whether it met a tolerance, and why."""

    iterations: int
    converged: bool
    reason: str
    loss: float


def adam_until_calm(
    loss_fn: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    max_iter: int,
    lr: float,
    tol: float,
    label: str,
) -> LBFGSResult:
    """Minimise `loss_fn()` by Adam for up to `max_iter` steps, or until the loss changed by
    less than `tol` (relative) for five steps in a row. A non-finite loss raises
    FloatingPointError naming `label`, the step and the fix."""
    optimizer = Adam(list(params), lr=lr)
    previous, calm, value = None, 0, float("nan")
    for iteration in range(1, max_iter + 1):
        optimizer.zero_grad()
        loss = loss_fn()
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(
                f"{label} loss became {float(loss)} at iteration {iteration}: "
                "try float64 or a smaller lr"
            )
        loss.backward()
        optimizer.step()
        value = float(loss.detach())
        if previous is not None and abs(previous - value) <= tol * max(1.0, abs(value)):
            calm += 1
            if calm >= 5:
                reason = f"loss changed by < {tol:g} (relative) for 5 steps"
                return LBFGSResult(iteration, True, reason, value)
        else:
            calm = 0
        previous = value
    return LBFGSResult(max_iter, False, f"max_iter={max_iter} reached", value)


def lbfgs(
    objective: Callable[[], torch.Tensor],
    params: Sequence[torch.Tensor],
    max_iter: int = 100,
    history: int = 10,
    grad_tol: float = 1e-6,
    change_tol: float = 1e-9,
) -> LBFGSResult:
    """Minimise `objective()` (a scalar tensor computed from `params`) by L-BFGS.

    Each step backtracks from the quasi-Newton step until the loss decreases enough
    (Armijo); a step whose objective fails (a factorisation error) counts as too long.
    Stops when the largest gradient entry is below `grad_tol`, the loss changes by
    less than `change_tol`, no decreasing step is found, or after `max_iter` steps.
    """
    params = list(params)
    loss, grad = _evaluate(objective, params)
    memory: list[tuple[torch.Tensor, torch.Tensor]] = []
    for iteration in range(1, max_iter + 1):
        if float(grad.abs().max()) <= grad_tol:
            return LBFGSResult(iteration - 1, True, "gradient below tolerance", loss)
        direction = _two_loop(grad, memory)
        slope = float(direction @ grad)
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            memory.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0 if memory else min(1.0, 1.0 / float(grad.abs().sum()))
        start = _flatten(params)
        for _ in range(MAX_HALVINGS):
            _assign(params, start + step * direction)
            try:
                new_loss, new_grad = _evaluate(objective, params)
            except torch.linalg.LinAlgError:
                new_loss = float("inf")
            if new_loss <= loss + ARMIJO * step * slope:
                break
            step *= 0.5
        else:
            _assign(params, start)
            return LBFGSResult(iteration - 1, True, "no decreasing step along the line", loss)
        s, y = step * direction, new_grad - grad
        if float(s @ y) > 1e-12 * float(y @ y):
            memory = [*memory[-(history - 1) :], (s, y)] if history > 1 else [(s, y)]
        change = abs(new_loss - loss)
        loss, grad = new_loss, new_grad
        if change <= change_tol * max(1.0, abs(loss)):
            return LBFGSResult(iteration, True, "loss change below tolerance", loss)
    return LBFGSResult(max_iter, False, f"max_iter={max_iter} reached", loss)


def _evaluate(
    objective: Callable[[], torch.Tensor], params: list[torch.Tensor]
) -> tuple[float, torch.Tensor]:
    for p in params:
        p.grad = None
    loss = objective()
    loss.backward()
    grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
    return float(loss.detach()), torch.cat([g.reshape(-1) for g in grads]).detach()


def _two_loop(grad: torch.Tensor, memory: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """-H grad for the inverse-Hessian estimate built from the curvature pairs (s, y)."""
    q = grad.clone()
    coefficients = []
    for s, y in reversed(memory):
        rho = 1.0 / float(y @ s)
        a = rho * float(s @ q)
        q -= a * y
        coefficients.append((rho, a))
    if memory:
        s, y = memory[-1]
        q *= float(s @ y) / float(y @ y)
    for (s, y), (rho, a) in zip(memory, reversed(coefficients), strict=True):
        b = rho * float(y @ q)
        q += (a - b) * s
    return -q


def _flatten(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def _assign(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        p.copy_(flat[offset : offset + p.numel()].reshape(p.shape))
        offset += p.numel()


class FitSteps(ABC):
    """How a model refines its hyperparameters on a loss: an optimiser and its stopping rule."""

    name: ClassVar[str]
    max_iter: int

    @abstractmethod
    def minimise(
        self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], label: str
    ) -> LBFGSResult:
        """Minimise `loss_fn()` over `params` in place; a non-finite loss raises naming `label`."""


@dataclass(frozen=True)
class AdamSteps(FitSteps):
    """Adam at `lr` for up to `max_iter` steps, until the loss is calm to `tol` (relative)."""

    max_iter: int = 100
    lr: float = 0.1
    tol: float = 1e-4
    name: ClassVar[str] = "Adam"

    def minimise(
        self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], label: str
    ) -> LBFGSResult:
        return adam_until_calm(loss_fn, params, self.max_iter, self.lr, self.tol, label)


@dataclass(frozen=True)
class LBFGSSteps(FitSteps):
    """L-BFGS for up to `max_iter` steps, until the loss changes by less than `change_tol`
    (relative) or the gradient is below `grad_tol`: few evaluations where each is costly."""

    max_iter: int = 20
    change_tol: float = 1e-5
    grad_tol: float = 1e-5
    history: int = 10
    name: ClassVar[str] = "L-BFGS"

    def minimise(
        self, loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor], label: str
    ) -> LBFGSResult:
        evaluations = 0

        def checked() -> torch.Tensor:
            nonlocal evaluations
            loss = loss_fn()
            evaluations += 1
            if evaluations == 1 and not bool(torch.isfinite(loss)):
                raise FloatingPointError(
                    f"{label} loss was {float(loss)} at the starting point of L-BFGS: "
                    "try float64 or other initial hyperparameters"
                )
            return loss

        return lbfgs(checked, params, self.max_iter, self.history, self.grad_tol, self.change_tol)
