"""Counting what a run actually computed, with forward hooks: network calls and the block work that ran.

A diffusers cache hook skips work *inside* the network (whole blocks for
FirstBlockCache and MagCache, attention or feed-forward layers for TaylorSeer,
PAB and FasterCache), so the engine's NFE cannot see it, and a forward hook on
a skipped block still fires (the hook replaces the block's ``forward``, the
block is still called). What is counted instead is each linear layer inside
the network's repeated blocks: a layer that runs on R rows adds R x its weight
count. ``blocks_frac`` is that sum over a run divided by the same sum of the
uncached sequential run: the fraction of the transformer blocks' work (their
matmuls) that ran. Where a network has no repeated block lists (a UNet), every
linear and convolution layer of the network counts.
"""

from __future__ import annotations

import torch

#: names of a network's repeated block lists (diffusers' transformers)
BLOCK_LISTS = ("transformer_blocks", "single_transformer_blocks", "blocks", "layers", "joint_transformer_blocks")


def counted_layers(network: torch.nn.Module) -> list[torch.nn.Module]:
    """The layers whose runs are counted: the linears of the repeated blocks, else every linear/conv layer."""
    blocks = [block for name, child in network.named_children() if name in BLOCK_LISTS and
              isinstance(child, torch.nn.ModuleList) for block in child]
    roots = blocks or [network]
    kinds = (torch.nn.Linear,) if blocks else (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv1d)
    return [m for root in roots for m in root.modules() if isinstance(m, kinds)]


class WorkCounter:
    """Forward hooks on a network (``with`` keeps them on): calls, rows and block work of what ran inside.

    ``calls``: network calls; ``rows``: the batch rows those calls carried (one row = one sample evaluated
    once); ``work``: sum of rows x weights over the counted layers that ran; ``full``: the work of one row
    through every counted layer; ``timestep``: the last call's timestep on the 0..1000 scale (diffusers
    pipelines pass ``t / 1000``), for the hooks that skip by timestep range.
    """

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.layers = counted_layers(network)
        self.full = sum(m.weight.numel() for m in self.layers)
        self.calls = self.rows = self.work = 0
        self.timestep = None
        self._handles: list = []

    def __enter__(self) -> "WorkCounter":
        def on_call(module, args, kwargs):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            self.calls += 1
            self.rows += int(hidden.shape[0]) if torch.is_tensor(hidden) else 1
            t = kwargs.get("timestep", args[3] if len(args) > 3 else None)
            if torch.is_tensor(t):
                self.timestep = 1000 * float(t.flatten()[0])

        def on_layer(module, args, output):
            x = args[0] if args else None
            self.work += module.weight.numel() * (int(x.shape[0]) if torch.is_tensor(x) and x.dim() > 1 else 1)

        self._handles = [self.network.register_forward_pre_hook(on_call, with_kwargs=True)]
        self._handles += [m.register_forward_hook(on_layer) for m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self) -> None:
        self.calls = self.rows = self.work = 0

    def snapshot(self) -> dict:
        return {"calls": self.calls, "rows": self.rows, "work": self.work}


def diffusers_hooks_left(network: torch.nn.Module) -> int:
    """diffusers hooks still registered anywhere in ``network`` (0 after ``disable_cache``): the leak check."""
    left = 0
    for module in network.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None:
            left += len(getattr(registry, "hooks", {}))
    return left + (getattr(network, "_cache_config", None) is not None)
