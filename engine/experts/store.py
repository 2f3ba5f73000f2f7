"""The expert store: every routed expert's weights in host memory, one contiguous row per expert.

Layout: for MoE layer `l`, `buffers[l]` is a `[E, numel]` tensor (pinned when a GPU is used); row
`e` holds all weights of expert `e` back to back (gate_up, down, biases), in the order of
`ExpertLayout.params`. A cache slot on the device has the same flat layout, so loading an expert
is one contiguous host-to-device copy. The store never holds an expert twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.experts.pinned import page_locked_empty


@dataclass(frozen=True)
class ParamSpec:
    name: str  # attribute of the experts module, e.g. "gate_up_proj"
    shape: tuple[int, ...]  # per-expert shape
    offset: int  # element offset inside an expert's flat row

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass(frozen=True)
class ExpertLayout:
    params: tuple[ParamSpec, ...]
    dtype: torch.dtype
    num_experts: int

    @property
    def numel(self) -> int:
        last = self.params[-1]
        return last.offset + last.numel

    @property
    def nbytes(self) -> int:
        return self.numel * torch.empty((), dtype=self.dtype).element_size()

    @staticmethod
    def from_shapes(shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, num_experts: int) -> ExpertLayout:
        specs, off = [], 0
        for name, shape in shapes.items():
            spec = ParamSpec(name, tuple(shape), off)
            specs.append(spec)
            off += spec.numel
        return ExpertLayout(tuple(specs), dtype, num_experts)

    def views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Typed views of a `[S, numel]` buffer: name -> `[S, *shape]` (no copy)."""
        return {
            p.name: flat[:, p.offset : p.offset + p.numel].view(flat.shape[0], *p.shape) for p in self.params
        }


class ExpertStore:
    """Host-side home of all routed experts. `pin` decides page-locked memory (needed for async copies)."""

    def __init__(self, layout: ExpertLayout, num_layers: int, pin: bool) -> None:
        self.layout = layout
        self.num_layers = num_layers
        self.pinned = pin
        self.buffers: list[torch.Tensor | None] = [None] * num_layers
        self._views: dict[int, dict[str, torch.Tensor]] = {}  # layer_views, made once per buffer
        self._rows: dict[int, tuple[torch.Tensor, ...]] = {}  # each layer's rows, made once per buffer
        # every expert's lossless code (`engine.experts.coded.CodedStore`): when set, the caches made from
        # now on copy codes and decode them on the device (`engine.model.coding.attach_coded`)
        self.coded = None

    def allocate(self, layer: int) -> torch.Tensor:
        shape = (self.layout.num_experts, self.layout.numel)
        buf = (
            page_locked_empty(shape, self.layout.dtype)
            if self.pinned
            else torch.empty(shape, dtype=self.layout.dtype)
        )
        self.buffers[layer] = buf
        self._views.pop(layer, None)
        self._rows.pop(layer, None)
        return buf

    def fill_from_module(self, layer: int, experts: torch.nn.Module) -> None:
        """Copy the 3-D weights of one experts module into the store, one parameter at a time."""
        buf = self.buffers[layer] if self.buffers[layer] is not None else self.allocate(layer)
        views = self.layout.views(buf)
        with torch.no_grad():
            for spec in self.layout.params:
                src = getattr(experts, spec.name)
                views[spec.name].copy_(src.detach().reshape(self.layout.num_experts, *spec.shape))

    def _filled(self, layer: int) -> torch.Tensor:
        buf = self.buffers[layer]
        if buf is None:
            raise RuntimeError(f"expert store: layer {layer} was never filled")
        return buf

    def row(self, layer: int, expert: int) -> torch.Tensor:
        rows = self._rows.get(layer)
        if rows is None:  # views made once per buffer (`allocate` forgets them): no indexing per copy
            rows = self._rows[layer] = self._filled(layer).unbind(0)
        return rows[expert]

    def layer_views(self, layer: int) -> dict[str, torch.Tensor]:
        """name -> [E, *shape] views of a layer's experts (what kernels reading host memory are given)."""
        views = self._views.get(layer)
        if views is None:
            views = self._views[layer] = self.layout.views(self._filled(layer))
        return views

    def expert_tensors(self, layer: int, expert: int) -> dict[str, torch.Tensor]:
        """One expert's weights as views of the store (for tests and reference checks)."""
        row = self.row(layer, expert).unsqueeze(0)
        return {k: v[0] for k, v in self.layout.views(row).items()}

    @property
    def total_experts(self) -> int:
        return self.num_layers * self.layout.num_experts

    @property
    def nbytes(self) -> int:
        return self.total_experts * self.layout.nbytes
