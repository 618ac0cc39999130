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
