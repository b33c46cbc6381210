"""Parity with transformers' DeepseekV4ForCausalLM (the oracle) in float32, prefill and decode,
on toy checkpoints screened so that no indexer / router top-k decision is a near-tie."""

import pytest
import torch
from hf_oracle import load_hf_model
from model_helpers import screened_checkpoint, token_ids

CASES = {  # preset, sequence length, seeds to screen, decode steps checked
    "tiny-a": ("tiny", 200, range(0, 8), 200),
    "tiny-b": ("tiny", 131, range(20, 28), 131),
    "small": ("small", 300, range(0, 6), 24),
}


@pytest.fixture(scope="module", params=list(CASES))
def case(request, tmp_path_factory):
    preset, n, seeds, decode_steps = CASES[request.param]
    ids = token_ids(n, seed=n)
    path, lm, seed = screened_checkpoint(tmp_path_factory.mktemp(preset), preset, seeds, ids)
    hf = load_hf_model(path)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0]
    return lm, ids, ref, decode_steps


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_prefill_matches_transformers(case):
    lm, ids, ref, _ = case
    ours = lm.logits(ids)
    assert rel_err(ours, ref) < 1e-4
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean().item() == 1.0


def test_decode_matches_transformers(case):
    lm, ids, ref, steps = case
    cache = lm.new_cache()
    start = len(ids) - steps
    parts = [lm.logits(ids[:start], cache)] if start else []
    parts += [lm.logits([t], cache) for t in ids[start:]]
    ours = torch.cat(parts)
    assert rel_err(ours, ref) < 1e-4
    assert (ours.argmax(-1) == ref.argmax(-1)).float().mean().item() == 1.0


def test_sparse_paths_really_engage(case):
    lm, ids, _, _ = case
    cfg = lm.config
    cache = lm.new_cache()
    lm.logits(ids, cache)
    csa = [i for i in range(cfg.n_layers) if cfg.layer_kind(i) == "csa"]
    hca = [i for i in range(cfg.n_layers) if cfg.layer_kind(i) == "hca"]
    assert csa and hca
    assert all(cache.layers[i].indexer.num_rows() > 2 * cfg.index_topk for i in csa)
    assert all(cache.layers[i].compressor.num_rows() >= 2 for i in hca)
    assert len(ids) > 2 * cfg.window_size
