"""Native numerics hold the indexer keys packed in the FP4 layout (68 B at index_head_dim 128) and
the indexer's top-k reads them as they are: the logits equal those of float keys of the same
values, bit for bit, in fp32 and bf16, for full prefill, chunked prefill and token-by-token
decode — with the torch reference and with the Triton indexer (interpreter)."""

from __future__ import annotations

import pytest
import torch
from model_helpers import run_chunks, token_ids

from model.cache import index_key_layout
from model.generate import LoadedModel, load_model
from model.kernels import indexer as indexer_kernels
from model.kernels import ops
from model.kernels.fp4_keys import unpack_index_keys
from model.layers.indexer import Indexer
from model.mtp import snapshot
from model.serve_ranks import cache_from_bytes, cache_to_bytes

IDS = token_ids(150, seed=7)  # 37 indexer keys per CSA layer (> top-8)


def set_packed(lm: LoadedModel, packed: bool) -> None:
    for module in lm.model.modules():
        if isinstance(module, Indexer):
            module.pack_keys = packed


def packed_and_float(lm: LoadedModel, sizes: list[int], ids: list[int] = IDS
                     ) -> tuple[tuple, tuple]:
    set_packed(lm, False)
    try:
        want = run_chunks(lm, ids, sizes)
    finally:
        set_packed(lm, True)
    return run_chunks(lm, ids, sizes), want


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def native(request, tiny_ckpt) -> LoadedModel:
    lm = load_model(tiny_ckpt, dtype=request.param, numerics="native", progress=False)
    yield lm
    set_packed(lm, True)


def csa_layers(lm: LoadedModel) -> list[int]:
    return [i for i in range(lm.config.n_layers) if lm.config.layer_kind(i) == "csa"]


def test_cache_holds_68_byte_fp4_keys(native):
    layout = index_key_layout(native.config)
    assert layout.row_bytes == 68  # the toy's index_head_dim is V4's 128: 64 B codes + 4 scales
    cache = native.new_cache()
    native.logits(IDS, cache)
    assert csa_layers(native)
    for i in csa_layers(native):
        rows = cache.layers[i].indexer.rows
        assert rows.dtype == torch.uint8 and rows.shape == (1, len(IDS) // 4, 68)


@pytest.mark.parametrize("sizes", [[150], [1, 3, 17, 33], [120] + [1] * 12])
def test_packed_key_logits_equal_float_key_logits(native, sizes):
    (got, packed_cache), (want, float_cache) = packed_and_float(native, sizes)
    assert torch.equal(got, want), (got - want).abs().max()
    layout, dtype = index_key_layout(native.config), native.model.numerics.dtype
    for i in csa_layers(native):
        fl, pk = float_cache.layers[i].indexer.rows, packed_cache.layers[i].indexer.rows
        assert fl.dtype == dtype and pk.dtype == torch.uint8
        assert torch.equal(unpack_index_keys(pk, layout).to(dtype), fl)
    assert packed_cache.nbytes() < float_cache.nbytes()


def test_triton_indexer_reads_packed_keys_in_the_model(native, monkeypatch):
    """The Triton indexer (interpreter; only the indexer op is switched) on a prefill chunk and
    on single-token decode steps: packed keys give the float keys' logits."""
    paths = []

    def triton_topk(q, weights, keys, visible, k, causal=True):
        paths.append(keys.dtype)
        return indexer_kernels.indexer_topk_triton(q, weights, keys, visible, k, causal=causal)

    monkeypatch.setattr(ops, "indexer_topk", triton_topk)
    (got, _), (want, _) = packed_and_float(native, [100, 1], IDS[:102])  # prefill, 2 decodes
    assert torch.equal(got, want)
    assert torch.uint8 in paths and native.model.numerics.dtype in paths
    assert len(paths) == 2 * 3 * len(csa_layers(native))  # 3 forwards × 2 formats


def test_a_cache_refuses_keys_of_the_other_format(native):
    cache = native.new_cache()
    native.logits(IDS[:20], cache)  # packed keys
    set_packed(native, False)
    try:
        with pytest.raises(ValueError, match="indexer keys in another format"):
            native.logits(IDS[20:21], cache)
    finally:
        set_packed(native, True)


def test_packed_keys_survive_rank_serialisation_and_mtp_snapshots(native):
    """The rank protocol's cache bytes and an MTP rollback snapshot carry the uint8 key rows:
    decoding on from either equals decoding on from the original cache."""
    cache = native.new_cache()
    native.logits(IDS[:120], cache)
    moved = cache_from_bytes(cache_to_bytes(cache))
    saved = snapshot(cache)
    want = native.logits(IDS[120:124], cache)  # the original moves on past the snapshot
    for i in csa_layers(native):
        assert moved.layers[i].indexer.rows.dtype == torch.uint8
        assert torch.equal(moved.layers[i].indexer.rows, saved.layers[i].indexer.rows)
    assert torch.equal(native.logits(IDS[120:124], saved), want)
    assert torch.equal(native.logits(IDS[120:124], moved), want)


def test_margin_diagnostics_read_packed_keys(native):
    """The margins path (``ops.indexer_scores``, the full score matrix) on packed keys gives the
    margins and logits of float keys."""
    indexers = [m for m in native.model.modules() if isinstance(m, Indexer)]
    results = []
    try:
        for packed in (False, True):
            set_packed(native, packed)
            for m in indexers:
                m.margins = []
            logits, _ = run_chunks(native, IDS, [100, 1])
            results.append((logits, [list(m.margins) for m in indexers]))
    finally:
        set_packed(native, True)
        for m in indexers:
            m.margins = None
    (want, want_margins), (got, got_margins) = results
    assert all(len(ms) == 3 for ms in got_margins)  # three forwards per indexer
    assert got_margins == want_margins and torch.equal(got, want)
