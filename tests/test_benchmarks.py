"""The benchmark scripts that need hardware this machine may lack still run their code path
here, on small settings (their real figures come from their own runs, in the README)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


@pytest.mark.slow
def test_gpu_benchmark_runs_on_the_cpu(tmp_path):
    import gpu

    out = tmp_path / "gpu.md"
    assert gpu.main(["--device", "cpu", "--quick", "--out", str(out)]) == 0
    text = out.read_text()
    for row in ("bare UNet ×S", "DDIMPipeline", "ddim eager", "ddim graph_loop",
                "ddim bf16 + graph_loop", "bare forward", "ddim.sample, per step"):
        assert f"| {row} |" in text or f"| digits, b1 | {row} |" in text, row
    assert "graph_loop is not used (CUDA graphs need a CUDA device)" in text


def test_solver_benchmark_grids():
    import solvers

    import ddim

    s = ddim.NoiseSchedule.linear()
    for steps in (3, 6, 10):
        grid = solvers.logsnr_grid(s, steps)
        assert len(grid) == steps and grid[0] == 999 and grid[-1] == 0
        assert all(b < a for a, b in zip(grid, grid[1:], strict=False))
    # 3 seeds up to 10 calls, 1 above: 10 trailing + 5 time_quadratic (+ 5 logsnr up to 10)
    assert len(solvers.plan()) == 3 * 6 * 20 + 3 * 15


def test_paper_legacy_cells_are_complete_and_render_the_published_table():
    import paper

    results = Path(paper.__file__).parent / "results"
    done = paper.load(results)
    missing = [paper.key(c) for c in paper.plan(1000, "legacy") if paper.key(c) not in done]
    assert missing == []
    assert paper.render(done, 1000, "legacy") == (results / "paper.md").read_text()
    # the default rule tags the cells that draw noise, and only those
    cells = paper.plan(1000)
    assert {c.get("rule") for c in cells if c["kind"] in ("fd", "consistency")} == {"sample_seed"}
    assert all("rule" not in c for c in cells if c["kind"] == "inversion")
    legacy = paper.generators("legacy", 2, 5, 7)
    assert [g.initial_seed() for g in legacy] == [2_000_011, 2_000_012]
