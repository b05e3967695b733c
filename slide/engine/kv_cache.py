"""A KV cache for decoding without a copy of the whole cache per token.

transformers' DynamicLayer appends each token's keys and values with `torch.cat`, which copies the layer's
whole cache every decode step: O(length^2) bytes per sequence, ~18% of a decode step's time for the 25M
benchmark model (8x8x128, bf16). `GrowingLayer` keeps keys and values in buffers with spare room (sized by
`capacity` up front, doubled when full) and hands attention views of the filled part; everything else
(masks, `get_seq_length`, `crop`, `batch_select_indices`) is DynamicLayer's, which sees only those views.

    cache = growing_cache(capacity=prompt_len + max_new_tokens)
"""
from __future__ import annotations

from functools import partial

import torch
from transformers.cache_utils import Cache, DynamicLayer


class GrowingLayer(DynamicLayer):
    def __init__(self, capacity: int = 128):
        super().__init__()
        self.capacity = capacity
        self._k: torch.Tensor | None = None  # backing buffers [b, h, capacity, d]; keys/values are views of them
        self._v: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
        n, m = (self.keys.shape[-2] if self.keys.numel() else 0), key_states.shape[-2]
        # DynamicLayer's own methods replace keys with new tensors (batch_select_indices) or shorter views (crop):
        # the buffers are reused only while keys is still a prefix view of them
        if self._k is None or self.keys.data_ptr() != self._k.data_ptr() or n + m > self._k.shape[-2]:
            room = max(self.capacity, 2 * (n + m)) if self._k is not None else max(self.capacity, n + m)
            self._k = key_states.new_empty((*key_states.shape[:2], room, key_states.shape[-1]))
            self._v = value_states.new_empty((*value_states.shape[:2], room, value_states.shape[-1]))
            if n:
                self._k[..., :n, :] = self.keys
                self._v[..., :n, :] = self.values
        self._k[..., n:n + m, :] = key_states
        self._v[..., n:n + m, :] = value_states
        self.keys, self.values = self._k[..., :n + m, :], self._v[..., :n + m, :]
        return self.keys, self.values


def growing_cache(capacity: int) -> Cache:
    """A cache whose layers are GrowingLayers with room for `capacity` tokens per sequence."""
    return Cache(layer_class_to_replicate=partial(GrowingLayer, capacity))
