"""The whole sampling loop as one CUDA graph: all S model calls and updates, replayed at once.

A CUDA graph records the kernels of a piece of GPU work once and replays them with one launch,
so a small model at a small batch, whose step is mostly kernel-launch overhead, runs at the
speed of its kernels. :class:`LoopGraphs` captures the loop of a sampling call (model calls,
NaN probes, the solver's updates, the final probe) over static buffers:

- ``x``: x_T is copied in before every replay;
- ``noise``: every step's noise is drawn ahead, on the host, from the call's generators by
  the same :class:`~ddim.sampling.noise.NoiseSource` the eager loop uses, in the same order, so
  per-sample generators give exactly the eager loop's numbers (and stay batch-independent);
- the probes and the result, read after the replay (the call's one host sync).

One graph per setup: batch shape, dtype, device, the grid and its coefficients, prediction
type, x̂0 processing and class labels (the key of :meth:`LoopGraphs.key`). A plan that
cannot be graphed (a callback to run between steps, keyword conditioning tensors, another
device than CUDA, a capture that fails) is run by the eager loop instead, with a
``RuntimeWarning`` saying why, once per reason.

:class:`StaticLoop` is the loop over those buffers without the capture, so its logic runs
(and is tested) on any device.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import torch

from ..sampling.model_contract import OutputProbe
from ..sampling.plan import Plan
from ..sampling.sampler import loop


class StaticLoop:
    """One plan's sampling loop over static buffers (see the module docstring)."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan  # kept alive: a graph reads its t grid and conditioning
        x = plan.x
        self.x = torch.empty_like(x)
        self.draws = sum(1 for c in plan.table.coefficients if c.noise_scale > 0)
        self.noise = x.new_empty((self.draws, *x.shape)) if self.draws else None
        self.probe = OutputProbe(plan.grid, x.device, x.dtype)
        self.out: torch.Tensor | None = None

    def fill(self, plan: Plan) -> None:
        """Copy ``plan``'s x_T in and draw its noise ahead, as the eager loop would draw it."""
        self.x.copy_(plan.x)
        if self.draws:
            source = plan.noise_source()
            for k in range(self.draws):
                self.noise[k].copy_(source())

    def body(self) -> None:
        """The sampler's loop (:func:`ddim.sampling.sampler.loop`) over the static buffers,
        with the noise drawn ahead; kernels only (capturable: no host sync)."""
        plan = replace(self.plan, x=self.x)
        draws = iter(self.noise) if self.draws else None
        stepper = plan.stepper(noise=(lambda: next(draws)) if draws is not None else None)
        x = self.x
        for step in loop(plan, False, guard=False, stepper=stepper, probe=self.probe,
                         check=False):
            x = step.sample
        self.probe.record(len(plan.grid), x)
        self.out = x

    def result(self) -> torch.Tensor:
        """The sample of the last run (a copy), after checking the probes (one host sync)."""
        self.probe.check()
        return self.out.clone()


class LoopGraphs:
    """Captured whole-loop CUDA graphs of one model, one per setup (see the module docstring).

    ``run(plan)`` returns the plan's final sample, or None when the plan cannot be graphed
    (the caller then runs the eager loop). ``fallbacks`` lists the reasons given.
    """

    def __init__(self) -> None:
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, StaticLoop]] = {}
        self.fallbacks: list[str] = []

    @staticmethod
    def key(plan: Plan) -> tuple:
        """The setup a graph is valid for."""
        o, x = plan.options, plan.x
        labels = None
        if plan.conditioning is not None:
            labels = tuple(plan.conditioning.cond["class_labels"].tolist())
        return (tuple(x.shape), x.dtype, x.device, plan.schedule, plan.table,
                plan.prediction_type, o.solver, o.clip_sample, o.dynamic_threshold,
                o.dynamic_threshold_max, o.rederive_eps, labels,
                plan.conditioning.guidance_scale if plan.conditioning else None)

    def run(self, plan: Plan) -> torch.Tensor | None:
        """The final sample of ``plan`` from its graph (captured on first use), or None."""
        reason = self._unsupported(plan)
        if reason is not None:
            self._fall_back(reason)
            return None
        key = self.key(plan)
        entry = self._graphs.get(key)
        if entry is None:
            try:
                entry = self._graphs[key] = self._capture(plan)
            except Exception as exc:  # any failure to capture: say so, run eagerly
                text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                self._fall_back(f"the capture failed: {text}")
                return None
        graph, static = entry
        static.fill(plan)
        graph.replay()
        return static.result()

    @staticmethod
    def _unsupported(plan: Plan) -> str | None:
        if plan.x.device.type != "cuda":
            return "CUDA graphs need a CUDA device"
        if plan.options.callback is not None or plan.options.progress:
            return "a callback or progress bar runs between the steps"
        cond = plan.conditioning
        if cond is not None and set(cond.cond) != {"class_labels"}:
            return "conditioning tensors other than class labels"
        return None

    @staticmethod
    def _capture(plan: Plan) -> tuple[torch.cuda.CUDAGraph, StaticLoop]:
        static = StaticLoop(plan)
        static.fill(plan)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            static.body()  # warm up outside the graph: cuDNN autotuning, lazy allocations
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static.body()
        return graph, static

    def _fall_back(self, reason: str) -> None:
        if reason not in self.fallbacks:
            self.fallbacks.append(reason)
            warnings.warn(f"ddim.accelerate: graph_loop is not used ({reason}); running the "
                          "sampling loop step by step", RuntimeWarning, stacklevel=4)

