"""A static key/value cache: preallocated once, filled in place, so decoding allocates nothing."""

from __future__ import annotations

import torch


class KVCache:
    """Keys and values of every layer for `batch` rows and up to `max_len` positions.

    All rows share the write position (prompts are left-padded to a common length), so one integer
    says where the next keys go. An encoder-decoder's cross-attention keys/values, fixed for the whole
    decode, are kept in `cross` by layer once the first step has computed them.
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
    ) -> None:
        shape = (batch, n_kv_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.max_len = max_len
        self.length = 0  # positions filled so far, advanced by `advance` after each forward
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions, asked to write up to {end}")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def advance(self, n: int) -> None:
        self.length += n

    def relative_slots(self, T: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The cache slots of the next T queries and of every key they read (for a relative position bias:
        within a left-padded row, slot distances are position distances)."""
        device = positions.device
        return torch.arange(self.length, self.length + T, device=device), torch.arange(self.length + T, device=device)


class SlotCache:
    """Keys and values for continuous batching: one slot (row) per running sequence, each with its own length,
    so sequences join and leave between decoding steps. The caller says what the next forward writes:
    `prefill(slot)` (prompts from position 0, into `slot` and the slots after it when there are several
    rows) or `decode(rows, positions, read)` (one new token for each of the first `rows` slots, written at
    its own position, reading the first `read` positions with a mask the caller builds). Its tensors never
    change, so one compiled decoding step serves every call. It answers the attention layers as `KVCache` does."""

    def __init__(self, n_layer: int, slots: int, n_kv_head: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device | str) -> None:  # fmt: skip
        shape = (slots, n_kv_head, max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.slots, self.max_len = slots, max_len
        self.length = 0  # unused: the caller always passes positions
        self.cross: dict[int, tuple[torch.Tensor, torch.Tensor]] | SlotCross = {}
        self._mode: tuple = ("prefill", 0, 0)

    def with_cross(self, n_layer: int, max_source: int) -> SlotCache:
        """Room for an encoder-decoder's cross-attention keys/values, one slot per sequence (`SlotCross`)."""
        k = self.keys[0]
        self.cross = SlotCross(self, n_layer, max_source, k.shape[1], k.shape[3], k.dtype, k.device)
        return self

    def prefill(self, slot: int, start: int = 0) -> None:
        """The next forward writes its rows' prompts from position `start` (the positions before it already
        hold the prompt's first tokens: a shared prefix), the first row into `slot`."""
        self._mode = ("prefill", slot, start)

    def copy_prefix(self, source: int, target: int, length: int) -> None:
        """Slot `target`'s first `length` positions become slot `source`'s (a prompt prefix they share)."""
        for cached in (*self.keys, *self.values):
            cached[target, :, :length] = cached[source, :, :length]

    def decode(self, rows: int, positions: torch.Tensor, read: int) -> None:
        self._mode = ("decode", torch.arange(rows, device=positions.device), positions, read)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._mode[0] == "prefill":
            _, slot, start = self._mode
            rows, end = slice(slot, slot + k.shape[0]), start + k.shape[2]
            if end > self.max_len:
                raise ValueError(f"KV slot holds {self.max_len} positions, asked to write up to {end}")
            self.keys[layer][rows, :, start:end] = k
            self.values[layer][rows, :, start:end] = v
            return self.keys[layer][rows, :, :end], self.values[layer][rows, :, :end]
        _, index, positions, read = self._mode
        keys, values = self.keys[layer], self.values[layer]  # under autocast k/v may be bf16 in an fp32 cache
        keys[index, :, positions] = k[:, :, 0].to(keys.dtype)
        values[index, :, positions] = v[:, :, 0].to(values.dtype)
        rows = k.shape[0]
        return self.keys[layer][:rows, :, :read], self.values[layer][:rows, :, :read]

    def advance(self, n: int) -> None:
        """Lengths are the caller's (one per slot)."""

    def relative_slots(self, T: int, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """As `KVCache.relative_slots`: a sequence's slot positions are its positions, so a decoding step's
        queries are at (rows, 1) positions of their own and read the first `read` keys."""
        device = positions.device
        if self._mode[0] == "prefill":
            start = self._mode[2]
            return torch.arange(start, start + T, device=device), torch.arange(start + T, device=device)
        return positions, torch.arange(self._mode[3], device=device)


class SlotCross:
    """An encoder-decoder's cross-attention keys/values for continuous batching: each slot keeps its own
    sequence's (projected from its encoder output once, at its prefill) and its source length. It answers
    the cross-attention layers as `KVCache.cross` does: in a prefill the layer computes its keys from the
    encoder output and stores them here; in a decoding step it reads every row's, behind `mask(rows)`."""

    def __init__(self, cache: SlotCache, n_layer: int, max_source: int, n_kv_head: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:  # fmt: skip
        shape = (cache.slots, n_kv_head, max_source, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layer)]
        self.lengths = torch.ones(cache.slots, dtype=torch.long, device=device)  # >= 1: no row reads nothing
        self.cache, self.max_source = cache, max_source

    def __contains__(self, layer: int) -> bool:
        return self.cache._mode[0] == "decode"

    def __getitem__(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.cache._mode[1].shape[0]
        read = int(self.lengths[:rows].max())
        return self.keys[layer][:rows, :, :read], self.values[layer][:rows, :, :read]

    def __setitem__(self, layer: int, kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        k, v = kv
        start, S = self.cache._mode[1], k.shape[2]
        if S > self.max_source:
            raise ValueError(f"cross-attention slot holds {self.max_source} positions, asked to write {S}")
        rows = slice(start, start + k.shape[0])
        self.keys[layer][rows, :, :S] = k
        self.values[layer][rows, :, :S] = v
        self.lengths[rows] = S

    def mask(self, rows: int) -> torch.Tensor:
        """(rows, 1, 1, S): the source positions each row's queries may read (its own sequence's)."""
        lengths = self.lengths[:rows]
        return (torch.arange(int(lengths.max()), device=lengths.device)[None, :] < lengths[:, None])[:, None, None]
