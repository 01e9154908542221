"""ExactGP fit and predict times on every available device and dtype (same data, same seed).

Prints one row per (device, dtype): n, fit seconds, L-BFGS iterations, predict seconds
for 20,000 points, and the RMSE against the noise-free function, plus the speed-up of
each row over the first (CPU float64 where n is small enough to run it there).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.table import Column, Table  # noqa: E402
from gpkernels import ExactGP, separable  # noqa: E402

CPU_MAX_N = 1000
RESULTS = Table(
    (
        Column("device", 8, left=True),
        Column("dtype", 9, left=True),
        Column("fit s", 8, ".2f"),
        Column("iters", 7, "d"),
        Column("predict s", 11, ".3f"),
        Column("rmse", 8, ".4f"),
        Column("speed-up", 10, ".1f", suffix="x"),
    )
)


def data(n: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, generator=gen, dtype=torch.float64) * torch.tensor([20.0, 10.0, 10.0])
    f = lambda x: torch.sin(x[:, 0] / 3) + torch.cos(x[:, 1]) * torch.sin(x[:, 2] / 2)  # noqa: E731
    y = f(x) + 0.1 * torch.randn(n, generator=gen, dtype=torch.float64)
    x_test = torch.rand(20_000, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [20.0, 10.0, 10.0]
    )
    return x, y, x_test, f(x_test)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    gpu = ["cuda"] if torch.cuda.is_available() else []
    for n in (1000, 4000):
        x, y, x_test, f_test = data(n)
        rows = []
        for device in (["cpu"] if n <= CPU_MAX_N else []) + gpu:
            for dtype in (torch.float64, torch.float32):
                model = ExactGP(separable(["matern32"] * 3))
                args = [t.to(device, dtype) for t in (x, y, x_test)]
                sync(device)
                start = time.perf_counter()
                report = model.fit(args[0], args[1], max_iter=50).fit_report
                sync(device)
                fit_s = time.perf_counter() - start
                start = time.perf_counter()
                mean, _ = model.predict(args[2], block_size=4096)
                sync(device)
                pred_s = time.perf_counter() - start
                rmse = float(torch.sqrt(torch.mean((mean.double().cpu() - f_test) ** 2)))
                rows.append(
                    (
                        device,
                        str(dtype).removeprefix("torch."),
                        fit_s,
                        report.iterations,
                        pred_s,
                        rmse,
                    )
                )
        if rows:
            print_rows(n, rows)


def print_rows(n: int, rows: list[tuple]) -> None:
    """One table per n: each (device, dtype, fit s, iterations, predict s, rmse) row and its
    speed-up over the first row."""
    base = rows[0][2] + rows[0][4]
    print(f"\nExactGP, n={n}, 3-D separable Matern 3/2, 50 L-BFGS iterations at most")
    print(RESULTS.text([*row, base / (row[2] + row[4])] for row in rows))


if __name__ == "__main__":
    main()
