"""`gpgrid demo`: a synthetic grid with gaps, filled end to end on an embedded Ray, then scored."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import ray
import xarray as xr

from jobs.plots import quicklook
from jobs.run import run_job
from jobs.spec import JobSpec, parse_spec
from pipeline.cluster import ensure_ray
from pipeline.runner import RunSummary
from pipeline.scores import score_gap_cells
from pipeline.synthetic import DIMS, SyntheticGrid, write_synthetic

DEMO_GRID = SyntheticGrid()  # 20 x 100 x 100 = 200,000 cells, 30% gaps


@dataclass
class DemoResult:
    summary: RunSummary
    scores: dict[str, float]
    input_path: Path
    spec_path: Path
    png_path: Path


# Tile cores per model: the structured model takes whole 20 x 100 x 50 windows (every
# observed cell enters its solve); the dense one needs small tiles to stay fast.
DEMO_TILES = {
    "kiss": {"time": 20, "lat": 100, "lon": 50},
    "exact": {"time": 5, "lat": 20, "lon": 20},
}


def demo_spec(input_path: Path, output_path: Path, variable: str, model: str = "kiss") -> JobSpec:
    """The demo's job spec: Matérn 3/2 per axis, a 2 x 6 x 6 halo, tiles sized for the model."""
    return parse_spec(
        {
            "input": {
                "path": str(input_path),
                "variables": [variable],
                "dims": list(DIMS),
            },
            "model": {"type": model, "kernel": dict.fromkeys(DIMS, "matern32")},
            "tiling": {"tile": DEMO_TILES[model], "halo": {"time": 2, "lat": 6, "lon": 6}},
            "output": {"path": str(output_path), "overwrite": True},
        }
    )


def run_demo(
    output_path: Path,
    recipe: SyntheticGrid = DEMO_GRID,
    progress: bool = True,
    model: str = "kiss",
) -> DemoResult:
    """Write the synthetic input beside `output_path`, run the job, score the gaps, plot."""
    output_path = output_path.resolve()
    folder = output_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    stem = output_path.name.removesuffix(".zarr")
    input_path = folder / f"{stem}_input.zarr"
    spec_path = folder / f"{stem}.yaml"
    # Drawn on a Ray worker, which has the solvers imported already; the driver stays torch-free.
    ensure_ray()
    draw = ray.remote(num_cpus=1)(write_synthetic)
    source = ray.get(draw.remote(str(input_path), recipe, chunks=(10, 50, 50)))
    spec = demo_spec(input_path, output_path, recipe.variable, model)
    spec_text = spec.to_yaml()
    spec_path.write_text(spec_text)
    summary = run_job(spec, spec_text, progress=progress)
    output = xr.open_zarr(str(output_path))
    scores = score_gap_cells(output, source, recipe.variable)
    png = quicklook(
        source,
        output,
        recipe.variable,
        folder / f"{stem}.png",
        time_index=recipe.shape[0] // 2,
    )
    return DemoResult(summary, scores, input_path, spec_path, png)
