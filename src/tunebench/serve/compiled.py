"""torch.compile for the batched engine's decode step (issue 20): fewer, fused kernels per layer.

A decode step of a 3B model at one row is mostly small kernels: per layer two layer norms, rotary's muls, adds
and `cat`s (rotate_half), the residual adds, GELU, the KV write — ~15 launches beside four GEMMs and attention,
each a few microseconds even inside a CUDA graph. Inductor fuses these. The compiled code is still captured
in the runner's own CUDA graphs (inductor's default mode launches plain Triton kernels, so no cudagraph
trees: `DecodeRunner.capture` stays the one capture). Prefill graphs run the same compiled layers on CUDA
(TUNEBENCH_PREFILL_COMPILE, default 1 there; `tunebench.serve.graphs` has the numbers).

TUNEBENCH_DECODE_COMPILE picks how much is compiled:
- `off`: eager (the default off CUDA; CPU tests compare against it).
- `layers`: regional compilation: the decoder layer's forward is compiled once and serves every layer
  (transformers' layers share one class, and torch treats a module's parameters as inputs), so compile time
  is one layer's, a few seconds. The KV write (`SlotCache.update`) runs eagerly between the layer's two
  compiled halves, and the layer index it takes is handed over as a 0-d tensor (`_tensor_indices`): an int
  that crosses the graph break is guarded on, so the attention frame compiled once per layer (on the H200,
  3B: 175 graphs and an 85-89 s warm-up; with the tensor 20 graphs and 31.8 s, 2026-12-03 lead-20). The
  registered attention function is traced inside the second half (or run between graphs if it cannot be).
- `model`: the whole decode forward (model, logits, greedy choice) as one graph: the KV write, the residual
  adds and the next layer norms fuse too; compile time is the whole model's.
Shapes are dynamic after the first recompile, so a few compiles serve every row and width bucket. A failure to
compile or to run the compiled code is logged and the runner decodes eagerly from then on (`error` says why).
Inductor caches what it builds under TORCHINDUCTOR_CACHE_DIR (default /tmp/torchinductor_<user>), so a
second start of the same model compiles faster.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from tunebench.errors import SettingError

log = logging.getLogger("tunebench.serve")
MODES = ("off", "layers", "model")
ENV = "TUNEBENCH_DECODE_COMPILE"
RECOMPILE_LIMIT = 64  # row and width buckets, adapters, attention kinds: more than dynamo's default of 8
# Compiled entries per decoder layer that one code object may need, a guard against falling back to eager code.
# The attention module's forward is a frame of its own (the untraced KV write breaks the layer's graph there);
# while the layer index it hands the write was an int, dynamo guarded on it: one entry per layer and shape class
# (1 row static, more rows dynamic, decode and prefill, mask dtypes). With prefills compiled too a 32-layer
# model passed 64, and the layers past the limit ran that frame eagerly: on the H200 the 1-row decode step took
# 3.51 ms instead of 2.78 (2026-12-03, benchmarks/prefill_profile.py). (allow_unspec_int_on_nn_module does not
# help: the int still crosses the graph break.) The index is a tensor now (`_tensor_indices`), so the entries
# no longer grow with the layers; the limit stays this generous for attention code that keeps an int.
ENTRIES_PER_LAYER = 8


def compile_mode(device_type: str) -> str:
    """TUNEBENCH_DECODE_COMPILE, or the default: `layers` on CUDA (H200, RedPajama-3B, 2026-12-03: a 1-row
    step 3.85 -> 2.74 ms, the served single stream's inter-token p50 3.8 -> 2.7 ms, 7 s of compiling at the
    first requests), `off` elsewhere."""
    mode = os.environ.get(ENV, "layers" if device_type == "cuda" else "off").strip() or "off"
    if mode not in MODES:
        raise SettingError(f"{ENV}={mode!r}; allowed: {', '.join(MODES)}")
    return mode


def decoder_layers(model: Any) -> list[Any]:
    """The model's decoder layers: the ModuleList of config.num_hidden_layers modules of one class."""
    import torch

    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    for module in model.modules():
        if (isinstance(module, torch.nn.ModuleList) and count and len(module) == count
                and len({type(layer) for layer in module}) == 1):
            return list(module)
    raise ValueError(f"no ModuleList of {count} decoder layers in {type(model).__name__}")


class DecodeCompiler:
    """Wraps a runner's decode step body (`run`: tokens, positions, width, extra, mask -> StepOutput)."""

    def __init__(self, model: Any, cache: Any, mode: str, backend: str | None = None) -> None:
        import torch

        # TUNEBENCH_DECODE_COMPILE_BACKEND: torch.compile's backend; tests use "eager" or "aot_eager" (dynamo's
        # tracing and graph breaks without inductor's C++/Triton build, which takes a minute on a small CPU).
        backend = backend or os.environ.get("TUNEBENCH_DECODE_COMPILE_BACKEND", "inductor")

        if mode not in MODES:
            raise SettingError(f"{ENV}={mode!r}; allowed: {', '.join(MODES)}")
        self.model, self.cache, self.mode, self.backend = model, cache, mode, backend
        self.errors: dict[str, str] = {}  # step kind ("*": all) -> why it decodes eagerly
        self.first_s: dict[str, float] = {}  # per step kind: the first compiled call (tracing and compiling)
        self.calls: dict[str, int] = {}  # per step kind: calls that ran the compiled code (not fallen back)
        self.compile_s = 0.0  # host seconds of the calls in which torch (re)compiled something
        self.compiles = 0  # graphs dynamo built (graph breaks make several per layer)
        self._compiled_run: Any = None
        self._layer_forward: Any = None
        self._layers: list[Any] = []
        self._opaque: dict[Any, Any] = {}  # attention function -> the same, never traced
        self._limits: dict[str, int] = {}  # dynamo's recompile limits while compiled code runs
        self._indexed: list[tuple[Any, int, Any]] = []  # (module, int layer_idx, its 0-d tensor)
        if mode == "off":
            return
        self._layers = decoder_layers(model) if mode == "layers" else []
        limit = max(RECOMPILE_LIMIT, ENTRIES_PER_LAYER * len(self._layers))
        # Applied around every compiled call (`run`), in the thread that compiles: torch 2.13 keeps config
        # changes per thread, so limits set where the engine is built did not reach its thread.
        config = torch._dynamo.config
        names = (("recompile_limit", "accumulated_recompile_limit") if hasattr(config, "recompile_limit")
                 else ("cache_size_limit", "accumulated_cache_size_limit"))  # torch before 2.6 names them so
        self._limits = {name: max(getattr(config, name), value)
                        for name, value in zip(names, (limit, 4 * limit), strict=True) if hasattr(config, name)}
        if mode == "layers":
            self._layer_forward = torch.compile(type(self._layers[0]).forward, backend=backend)
            self._indexed = self._tensor_indices()

    @property
    def error(self) -> str | None:
        """The first reason a step kind decodes eagerly, if any (for reports)."""
        return next(iter(self.errors.values()), None)

    def active(self, key: str = "*") -> bool:
        return self.mode != "off" and "*" not in self.errors and key not in self.errors

    def run(self, plain: Any, key: str, *args: Any, **kwargs: Any) -> Any:
        """`plain(*args, **kwargs)` compiled as the mode says; eagerly once compiling `key` (the step kind:
        "decode" over SDPA, "decode-flex" ...) has failed."""
        if not self.active(key):
            return plain(*args, **kwargs)
        import torch
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        try:
            with torch._dynamo.config.patch(**self._limits):
                out = self._compiled(plain, *args, **kwargs)
        except Exception as err:
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise  # a failed capture: the runner's capture handler calls give_up, then captures again
            self.give_up(err, key)
            return plain(*args, **kwargs)
        self.calls[key] = self.calls.get(key, 0) + 1
        built = counters["stats"]["unique_graphs"] - graphs
        if built:
            seconds = time.perf_counter() - started
            self.compile_s += seconds
            self.compiles += built
            self.first_s.setdefault(key, round(seconds, 2))
            log.info("compiled decode (%s, %s): %d graphs in %.1f s (%.1f s so far)", self.mode, key, built,
                     seconds, self.compile_s)
        return out

    def _compiled(self, plain: Any, *args: Any, **kwargs: Any) -> Any:
        import torch

        if self.mode == "model":
            if self._compiled_run is None:
                self._compiled_run = torch.compile(plain, backend=self.backend)
            return self._compiled_run(*args, **kwargs)
        with self._layers_compiled():
            return plain(*args, **kwargs)

    def _tensor_indices(self) -> list[tuple[Any, int, Any]]:
        """(module, its int `layer_idx`, a 0-d CPU tensor holding it) for every module under the decoder layers
        that has one, found once: compiled calls swap in the tensor and put the int back. dynamo guards on an
        int that untraced code (the KV write) receives, so the attention frame compiled once per layer; a tensor
        is a graph input, guarded on its shape and dtype only, so one entry serves every layer."""
        import torch

        return [(module, module.layer_idx, torch.tensor(module.layer_idx))
                for layer in self._layers for module in layer.modules()
                if isinstance(getattr(module, "layer_idx", None), int) and not isinstance(module.layer_idx, bool)]

    def give_up(self, err: BaseException, key: str = "*") -> None:
        """Steps of kind `key` ("*": every kind) decode eagerly from now on."""
        log.warning("compiled decode unavailable for %s steps (%s: %s); decoding them eagerly", key,
                    type(err).__name__, err)
        self.errors[key] = f"{type(err).__name__}: {err}"[:300]

    @contextlib.contextmanager
    def _layers_compiled(self) -> Iterator[None]:
        """Every decoder layer runs the one compiled forward, and the KV write stays outside the graphs. So
        does attention other than SDPA (the engine's registered decode attention): inductor could not lower
        FlexAttention's decode block mask under dynamic shapes on the H200 (2026-12-03), and a hand-written
        kernel is one launch either way; it runs eagerly between the compiled halves, inside the same CUDA
        graph."""
        import torch
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        impl = getattr(self.model.config, "_attn_implementation", "sdpa")
        shadowed = impl not in ("sdpa", "eager") and impl in ALL_ATTENTION_FUNCTIONS
        if shadowed:
            inner = ALL_ATTENTION_FUNCTIONS[impl]
            if inner not in self._opaque:
                self._opaque[inner] = torch.compiler.disable(inner)
            ALL_ATTENTION_FUNCTIONS[impl] = self._opaque[inner]  # the local mapping: shadows the registered one
        for layer in self._layers:
            layer.forward = functools.partial(self._layer_forward, layer)
        for module, _, tensor in self._indexed:
            module.layer_idx = tensor
        self.cache.opaque_update = True
        try:
            yield
        finally:
            self.cache.opaque_update = False
            for layer in self._layers:
                del layer.forward
            for module, index, _ in self._indexed:
                module.layer_idx = index
            if shadowed:
                del ALL_ATTENTION_FUNCTIONS[impl]
