"""The per-sequence cache: any split of a sequence into chunks gives the full-prefill logits."""

import pytest
import torch
from model_helpers import token_ids

from model.cache import window_capacity
from model.layers.attention import window_indices


@pytest.fixture(scope="module")
def reference(tiny_model):
    ids = token_ids(150, seed=7)
    return ids, tiny_model.logits(ids)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_token_by_token_decode_equals_prefill(tiny_model, reference):
    ids, full = reference
    cache = tiny_model.new_cache()
    out = torch.cat([tiny_model.logits([t], cache) for t in ids])
    assert rel(out, full) < 1e-5 and cache.length == len(ids)


@pytest.mark.parametrize("splits", [(1, 3, 4, 17, 33), (64,), (5, 6, 7, 8, 9, 10, 11, 12)])
def test_chunked_prefill_equals_prefill(tiny_model, reference, splits):
    ids, full = reference
    cache, parts, start = tiny_model.new_cache(), [], 0
    for size in list(splits) + [len(ids)]:
        chunk = ids[start:start + size]
        if chunk:
            parts.append(tiny_model.logits(chunk, cache))
        start += size
    assert rel(torch.cat(parts), full) < 1e-5


def test_cache_state_is_bounded(tiny_model, reference):
    ids, _ = reference
    cfg = tiny_model.config
    cache = tiny_model.new_cache()
    tiny_model.logits(ids, cache)
    for i, layer in enumerate(cache.layers):
        assert layer.window.shape[1] == cfg.window_size - 1
        ratio = cfg.compress_ratios[i]
        if ratio:
            assert layer.compressor.num_rows() == len(ids) // ratio
            assert layer.compressor.pending_kv.shape[1] == len(ids) % ratio
        if cfg.layer_kind(i) == "csa":
            assert layer.indexer.num_rows() == len(ids) // 4
            assert layer.compressor.prev_kv.shape[1] == 4
        # and so is the memory behind them: no view keeps a whole prefill's projections alive
        # (the overlap block's kv and gate logits may share one storage: exactly theirs)
        for st in (layer.compressor, layer.indexer):
            held: dict[int, list[torch.Tensor]] = {}
            for t in (st.pending, st.prev_kv, st.prev_score):
                if t is not None:
                    held.setdefault(t.untyped_storage().data_ptr(), []).append(t)
            for views in held.values():
                assert views[0].untyped_storage().nbytes() == sum(
                    t.numel() * t.element_size() for t in views)
        window, store = layer.window, layer.window_store   # the window's rows and room past them
        assert store.shape[1] == window_capacity(cfg.window_size)
        assert window.untyped_storage().data_ptr() == store.untyped_storage().data_ptr()
        assert window.untyped_storage().nbytes() == store.numel() * store.element_size()


def test_a_decode_step_writes_its_window_row_in_place(tiny_model, reference):
    """The window's rows stay where they are while its store has room: a decode step copies its
    one new row after them (the window is a view moving along the store), and the kept rows go
    to a fresh store once every window // 2 steps — not the whole window every step."""
    ids, full = reference
    w = tiny_model.config.window_size
    cache = tiny_model.new_cache()
    tiny_model.logits(ids[:w + 3], cache)
    layer = cache.layers[0]
    stores, firsts = [], []
    for t in ids[w + 3:w + 3 + w]:
        tiny_model.logits([t], cache)
        stores.append(layer.window_store.data_ptr())
        firsts.append(layer.window.data_ptr())
        assert layer.window.shape[1] == w - 1
    fresh = sum(a != b for a, b in zip(stores, stores[1:], strict=False))
    assert 1 <= fresh <= -(-w // (w // 2))   # a fresh store once every window // 2 steps
    steps = list(zip(stores, firsts, strict=True))
    moved = [b - a for (s, a), (t, b) in zip(steps, steps[1:], strict=False) if s == t]
    assert moved and set(moved) == {layer.window[0, 0].numel() * layer.window.element_size()}


def test_window_indices_depend_on_the_start_only_within_the_first_window(tiny_model):
    """What lets every decode step of every sequence share one window-index table
    (model/layers/attention.py keys it by min(start, window − 1) and keeps the short ones)."""
    w = tiny_model.model.layers[0].attn.window
    cpu = torch.device("cpu")
    for start in range(3 * w):
        n_past = min(start, w - 1)
        for s in (1, 3, w + 5):
            got = window_indices(w, start, s, n_past, cpu)
            assert torch.equal(got, window_indices(w, min(start, w - 1), s, n_past, cpu))
    assert not torch.equal(window_indices(w, 5, 1, 5, cpu),   # within it
                           window_indices(w, 6, 1, 6, cpu))


def test_a_decode_step_adds_one_row_to_the_open_block_in_place(tiny_model, reference):
    """A compressor's open block grows in its store, a row a decode step (the past rows stay
    where they are: no copy of them per step); the next block starts a fresh store, so the
    closed block's rows (the overlap's ``prev``) are never written over."""
    ids, _ = reference
    cfg = tiny_model.config
    i = max(range(cfg.n_layers), key=lambda j: cfg.compress_ratios[j])   # an HCA layer
    ratio = cfg.compress_ratios[i]
    cache = tiny_model.new_cache()
    tiny_model.logits(ids[:2 * ratio], cache)            # the block boundary: nothing open
    state = cache.layers[i].compressor
    stores, firsts = [], []
    for t in ids[2 * ratio:3 * ratio + 1]:
        tiny_model.logits([t], cache)
        if state.pending.shape[1]:
            stores.append(state.pending_store.data_ptr())
            firsts.append(state.pending.data_ptr())
    assert len(stores) == ratio                          # rows 1..ratio−1, then 1 of the next
    assert len(set(stores[:ratio - 1])) == 1 and stores[-1] != stores[0]
    assert len(set(firsts[:ratio - 1])) == 1             # the block's first row never moved
