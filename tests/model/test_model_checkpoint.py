"""The toy checkpoint is in the official format; every loader failure is one clear error."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.checkpoint import Checkpoint, CheckpointError, load_weights
from model.generate import load_model
from model.toy import write_toy_checkpoint
from model.transformer import Transformer


def header(ckpt, name):
    ck = Checkpoint.open(ckpt)
    entry = ck.shard(ck.weight_map[name]).entries[name]
    return entry.dtype, list(entry.shape)


def test_toy_files_and_official_tensor_formats(tiny_ckpt):
    names = {p.name for p in tiny_ckpt.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "model.safetensors.index.json"} <= names
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert len(shards) == 7 and shards[0] == "model-00001-of-00007.safetensors"
    cfg = json.loads((tiny_ckpt / "config.json").read_text())
    assert cfg["model_type"] == "deepseek_v4" and cfg["quantization_config"]["scale_fmt"] == "ue8m0"
    # FP8 linear, partial 128×128 scale blocks: [64 → 64] has a [1, 1] scale
    assert header(tiny_ckpt, "layers.0.attn.wq_a.weight") == ("F8_E4M3", [64, 64])
    assert header(tiny_ckpt, "layers.0.attn.wq_a.scale") == ("F8_E8M0", [1, 1])
    assert header(tiny_ckpt, "layers.0.attn.wq_b.scale") == ("F8_E8M0", [4, 1])
    # FP4 experts: two codes per int8 along K, one scale per 32
    assert header(tiny_ckpt, "layers.2.ffn.experts.3.w1.weight") == ("I8", [32, 32])
    assert header(tiny_ckpt, "layers.2.ffn.experts.3.w1.scale") == ("F8_E8M0", [32, 2])
    assert header(tiny_ckpt, "layers.2.ffn.experts.3.w2.weight") == ("I8", [64, 16])
    assert header(tiny_ckpt, "layers.0.ffn.gate.tid2eid") == ("I64", [129280, 2])
    assert header(tiny_ckpt, "layers.2.ffn.gate.bias") == ("F32", [8])
    assert header(tiny_ckpt, "layers.1.attn.compressor.ape") == ("F32", [4, 256])
    assert header(tiny_ckpt, "layers.2.attn.compressor.ape") == ("F32", [16, 128])
    assert header(tiny_ckpt, "layers.1.attn.indexer.compressor.wkv.weight") == ("BF16", [256, 64])
    assert header(tiny_ckpt, "layers.1.hc_attn_fn") == ("F32", [24, 256])
    assert header(tiny_ckpt, "hc_head_fn") == ("F32", [4, 256])
    assert header(tiny_ckpt, "mtp.0.e_proj.weight") == ("F8_E4M3", [64, 64])
    assert header(tiny_ckpt, "embed.weight") == ("BF16", [129280, 64])
    assert header(tiny_ckpt, "layers.0.attn_norm.weight") == ("BF16", [64])


def test_init_toy_is_deterministic(tmp_path, tiny_ckpt):
    again = write_toy_checkpoint(tmp_path / "again", seed=0, preset="tiny")
    for shard in sorted(tiny_ckpt.glob("*.safetensors")):
        assert (again / shard.name).read_bytes() == shard.read_bytes()


def test_experts_stay_quantised_and_mapped(tiny_model):
    expert = tiny_model.model.layers[2].ffn.experts[0]
    assert expert.w1.weight.dtype == torch.int8 and expert.w1.dense is None


@pytest.fixture
def broken(tmp_path, tiny_ckpt):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_ckpt, dst)
    return dst


def load(path):
    ck = Checkpoint.open(path)
    load_weights(Transformer(ck.config), ck, progress=False)


def test_truncated_shard(broken):
    shard = broken / "model-00003-of-00007.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model-00003-of-00007.safetensors: truncated"):
        load(broken)


def test_corrupt_header(broken):
    shard = broken / "model-00004-of-00007.safetensors"
    data = bytearray(shard.read_bytes())
    data[8:20] = b"garbage!!!!!"
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model-00004-of-00007.safetensors: corrupt"):
        load(broken)


def test_missing_tensor_in_index(broken):
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    del index["weight_map"]["layers.1.attn.indexer.wq_b.scale"]
    (broken / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"tensor layers.1.attn.indexer.wq_b.scale is missing"):
        load(broken)


def _rewrite(shard, name, tensor):
    with safe_open(str(shard), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors[name] = tensor
    save_file(tensors, str(shard), metadata={"format": "pt"})


def test_missing_tensor_in_shard(broken):
    shard = broken / "model-00002-of-00007.safetensors"
    with safe_open(str(shard), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys() if k != "layers.0.attn.attn_sink"}
    save_file(tensors, str(shard), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"layers.0.attn.attn_sink is missing from .*00002"):
        load(broken)


def test_shape_mismatch(broken):
    _rewrite(broken / "model-00002-of-00007.safetensors", "layers.0.attn.attn_sink", torch.zeros(5))
    with pytest.raises(CheckpointError, match=r"layers.0.attn.attn_sink in .*00002.* shape \[5\], expected \[4\]"):
        load(broken)


def test_dtype_mismatch(broken):
    _rewrite(broken / "model-00002-of-00007.safetensors", "layers.0.attn.wkv.weight",
             torch.zeros(128, 64, dtype=torch.bfloat16))
    with pytest.raises(CheckpointError, match=r"layers.0.attn.wkv.weight in .* dtype BF16, expected F8_E4M3"):
        load(broken)


def test_missing_shard_and_index(broken):
    (broken / "model-00005-of-00007.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"00005-of-00007.safetensors: shard listed"):
        load(broken)
    (broken / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"index.json: missing"):
        load_model(broken, progress=False)


def test_alternate_dtypes_are_cast(broken):
    """ape may be BF16 and tid2eid I32 in some dumps (fact sheet §7.5)."""
    shard = broken / "model-00002-of-00007.safetensors"
    with safe_open(str(shard), "pt") as f:
        tid = f.get_tensor("layers.0.ffn.gate.tid2eid")
    _rewrite(shard, "layers.0.ffn.gate.tid2eid", tid.to(torch.int32))
    lm = load_model(broken, progress=False)
    assert torch.equal(lm.model.layers[0].ffn.gate.tid2eid, tid)
