"""Opt-in model acceleration: the same network, compiled or captured, as a drop-in model.

    fast = ddim.accelerate(model, "trace")            # CPU: TorchScript trace + freeze
    fast = ddim.accelerate(model, "cuda_graph")       # CUDA: replay captured kernels
    x = ddim.sample(fast, steps=50)

``model`` is anything :func:`ddim.sample` accepts (a bundle keeps its schedule and shape).
Modes (combine several, applied in this order):

- ``channels_last``: NHWC memory format for the weights and the input (helps convolutions on
  some CPUs and on GPUs with tensor cores).
- ``autocast_bf16`` / ``autocast_fp16``: run the network under ``torch.autocast``; the
  sampler's own state stays float32.
- ``trace``: ``torch.jit.trace`` then ``torch.jit.freeze`` per input shape (weights folded
  into the graph): lower per-call overhead, the big win for small models on CPU.
- ``compile``: ``torch.compile(dynamic=False)``, one graph per input shape, created and
  warmed up outside any ``inference_mode`` so that later calls do not recompile.
- ``cuda_graph``: capture one forward per input shape into a CUDA graph with static buffers
  and replay it (CUDA only): removes kernel-launch overhead at small batches.
- ``graph_loop``: capture the whole sampling loop (all S forwards and updates, the noise
  drawn ahead) as one CUDA graph per setup and replay it (:mod:`ddim.acceleration.graph_loop`; CUDA
  only; not with ``cuda_graph``). The sampler hands such a model its whole plan.

Every mode is checked on its first call, on two probe inputs, against the eager network's
float32 answer (computed under :func:`ddim.acceleration.precision.strict_float32`); when it cannot
be built or its error exceeds ``rtol`` plus four times the eager network's own error under the
caller's backend flags (TF32 on GPUs; see :func:`tolerance`), a ``RuntimeWarning`` says so
and the eager network is used: never a silent fall-back.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ..sampling.model_contract import as_model_fn
from .graph_loop import LoopGraphs
from .precision import strict_float32

MODES = ("channels_last", "autocast_bf16", "autocast_fp16", "trace", "compile", "cuda_graph",
         "graph_loop")
_GRAPHED = ("trace", "compile", "cuda_graph")  # modes that replace the forward
# default agreement required of an accelerated forward, relative to max|eager output|
TOLERANCE = {"autocast_bf16": 5e-2, "autocast_fp16": 1e-2}


def accelerate(model: Any, *modes: str, rtol: float | None = None) -> Any:
    """``model`` with the given acceleration ``modes`` (see the module docstring).

    Args:
        model: a network ``model(x, t)``, a diffusers model or a :class:`ddim.Pretrained`.
        modes: one or more of :data:`MODES`.
        rtol: the largest accepted max|fast - eager| / max|eager| on the first call of each
            input shape (default 1e-4; 5e-2 with bf16 and 1e-2 with fp16 autocast).

    Returns:
        An object :func:`ddim.sample` accepts, computing the same function (a bundle stays a
        bundle with its schedule, shape and prediction type).

    Raises:
        ValueError: no mode, an unknown mode, or both ``graph_loop`` and ``cuda_graph``.
    """
    if not modes:
        raise ValueError(f"accelerate needs at least one mode from {MODES}")
    for m in modes:
        if m not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {m!r}")
    if "graph_loop" in modes and "cuda_graph" in modes:
        raise ValueError("modes 'graph_loop' and 'cuda_graph' exclude each other: graph_loop "
                         "captures the whole loop, forwards included")
    network = getattr(model, "model", model) if hasattr(model, "schedule") else model
    tol = rtol if rtol is not None else max([TOLERANCE.get(m, 1e-4) for m in modes])
    fast = Accelerated(network, tuple(modes), tol)
    return replace(model, model=fast) if hasattr(model, "schedule") else fast


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    """max |out - reference| / max |reference| (one host sync)."""
    return (out - reference).abs().max().item() / max(reference.abs().max().item(), 1e-12)


def tolerance(rtol: float, device_noise: float) -> float:
    """The largest error an accelerated forward may show against the float32 answer.

    ``device_noise`` is the eager network's own error on this device under the caller's
    backend flags (TF32 on an NVIDIA GPU: ~1e-3; 0 on a CPU): an accelerated graph is
    accepted when it is about as accurate as eager, rtol + 4·noise. A wrong graph errs by
    O(1) and is still refused.
    """
    return rtol + 4 * device_noise


class Accelerated:
    """A callable ``fn(x, t) -> Tensor`` running ``network`` through the chosen modes.

    Builds one accelerated forward per (shape, dtype, device) of x on first use and checks
    it against the eager network there. ``parameters()`` are the network's, so the sampler
    sees its device and dtype.
    """

    def __init__(self, network: Any, modes: tuple[str, ...], rtol: float) -> None:
        self.network, self.modes, self.rtol = network, modes, rtol
        self.noise = 0.0  # the eager network's own float32 error here, set by _build
        # the whole sampling loop as CUDA graphs, run by the sampler (ddim.acceleration.graph_loop)
        self.loop_graphs = LoopGraphs() if "graph_loop" in modes else None
        self._eager = as_model_fn(network)
        self._forwards: dict[tuple, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
        self.fallbacks: list[str] = []  # what fell back to eager, and why
        if "channels_last" in modes and isinstance(network, torch.nn.Module):
            # a converted copy: the caller's network is never changed behind their back
            self.network = copy.deepcopy(network).to(memory_format=torch.channels_last)
            self._eager = as_model_fn(self.network)

    def parameters(self):
        """The wrapped network's parameters."""
        params = getattr(self.network, "parameters", None)
        return params() if callable(params) else iter(())

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        key = (tuple(x.shape), x.dtype, x.device)
        fn = self._forwards.get(key)
        if fn is None:
            fn = self._forwards[key] = self._build(x, t)
        return fn(x, t)

    # -------------------------------------------------------------------- building
    def _build(self, x: torch.Tensor, t: torch.Tensor) -> Callable:
        fn = self._plain_forward()
        # two probes: the first input, and another input at another timestep, so that a
        # graph that froze something input-dependent (a trace of Python-side values) fails
        probes = [(x, t), (0.5 * x + 0.1, torch.where(t > 0, t // 2, t + 1))]
        with torch.no_grad():
            with strict_float32():  # the float32 answer, free of TF32 and autotuning
                reference = [self._eager(px, pt).float() for px, pt in probes]
            # the device's own noise: eager under the caller's flags against that answer
            self.noise = max(relative_error(self._eager(px, pt).float(), ref)
                             for (px, pt), ref in zip(probes, reference, strict=True))
        for mode, wrap in (("trace", self._trace), ("compile", self._compile),
                           ("cuda_graph", self._cuda_graph)):
            if mode in self.modes:
                fn = self._checked(mode, wrap, fn, probes, reference)
        base = [m for m in self.modes if m not in (*_GRAPHED, "graph_loop")]
        if base and not any(m in self.modes for m in _GRAPHED):
            fn = self._checked("+".join(base), lambda f, *_: f, fn, probes, reference)
        return fn

    def _plain_forward(self) -> Callable:
        eager, modes = self._eager, self.modes
        autocast = ("autocast_bf16" in modes and torch.bfloat16) or (
            "autocast_fp16" in modes and torch.float16)
        channels_last = "channels_last" in modes

        def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            if channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            ctx = (torch.autocast(x.device.type, dtype=autocast) if autocast
                   else contextlib.nullcontext())
            with ctx:
                out = eager(x, t)
            return out.float() if autocast else out

        return forward

    def _checked(self, mode: str, wrap: Callable, fn: Callable,
                 probes: list[tuple[torch.Tensor, torch.Tensor]],
                 reference: list[torch.Tensor]) -> Callable:
        x, t = probes[0]
        allowed = tolerance(self.rtol, self.noise)
        try:
            fast = wrap(fn, x, t)
            for (px, pt), ref in zip(probes, reference, strict=True):
                with torch.no_grad():
                    err = relative_error(fast(px, pt).float(), ref)
                if not err <= allowed:
                    raise RuntimeError(
                        f"output differs from the float32 model by {err:.2e} (relative), more "
                        f"than {allowed:.2e} (rtol={self.rtol:g}, plus 4x the eager model's "
                        f"own {self.noise:.1e} on this device)")
            return fast
        except Exception as exc:  # any failure to build or match: say so, run eager
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            self.fallbacks.append(f"{mode}: {reason}")
            warnings.warn(f"ddim.accelerate: {mode} is not used for input shape "
                          f"{tuple(x.shape)} ({reason}); running the model without it",
                          RuntimeWarning, stacklevel=4)
            return fn

    @staticmethod
    def _trace(fn: Callable, x: torch.Tensor, t: torch.Tensor) -> Callable:
        class Forward(torch.nn.Module):
            def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return fn(x, t)

        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # TorchScript is deprecated upstream in favour of torch.compile, yet on CPU it is
            # still the fastest option for small networks (see benchmarks/throughput.py)
            warnings.filterwarnings("ignore", message=".*is deprecated")
            traced = torch.jit.trace(Forward().eval(), (x, t), check_trace=False)
            frozen = torch.jit.freeze(traced)
        return lambda x, t: frozen(x, t)

    @staticmethod
    def _compile(fn: Callable, x: torch.Tensor, t: torch.Tensor) -> Callable:
        compiled = torch.compile(fn, dynamic=False)
        with torch.no_grad():
            compiled(x, t)  # compile now, under the grad mode the sampler uses
        return compiled

    @staticmethod
    def _cuda_graph(fn: Callable, x: torch.Tensor, t: torch.Tensor) -> Callable:
        if x.device.type != "cuda":
            raise RuntimeError("CUDA graphs need a CUDA device")
        static_x, static_t = x.clone(), t.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(3):  # warm up (cuDNN autotuning, lazy init) outside the graph
                fn(static_x, static_t)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(graph):
            static_out = fn(static_x, static_t)

        def replay(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            static_x.copy_(x)
            static_t.copy_(t)
            graph.replay()
            return static_out.clone()

        return replay

