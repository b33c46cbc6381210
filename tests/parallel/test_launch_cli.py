"""``v4coder model score --ep N --tp M --offload BYTES`` against the single-process command."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from model.cli import main

IDS = [0, 5, 17, 99, 123, 4000, 77, 12, 9, 31000, 64, 8]


def _score(tmp_path, ckpt, name, *extra):
    ids = tmp_path / "ids.json"
    ids.write_text(json.dumps(IDS))
    out = tmp_path / f"{name}.safetensors"
    argv = ["score", "--checkpoint", str(ckpt), "--ids-file", str(ids), "--out", str(out), *extra]
    assert main(argv) == 0
    return load_file(str(out))["logits"]


def test_score_with_ep2_and_offload_match_one_rank(toy_ckpt, tmp_path, capsys):
    ref = _score(tmp_path, toy_ckpt, "ref")
    ep = _score(tmp_path, toy_ckpt, "ep2", "--ep", "2", "--mode", "decode")
    off = _score(tmp_path, toy_ckpt, "off", "--offload", "5000")
    torch.testing.assert_close(ep, ref, atol=1e-4, rtol=1e-4)
    assert torch.equal(off, ref)
    assert "tp=1 ep=2" in capsys.readouterr().out


def test_impossible_split_is_one_line(toy_ckpt, tmp_path, capsys):
    ids = tmp_path / "ids.json"
    ids.write_text("[0, 1]")
    argv = ["score", "--checkpoint", str(toy_ckpt), "--ids-file", str(ids),
            "--out", str(tmp_path / "o"), "--tp", "3"]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "--tp 3 must divide" in err and len(err.splitlines()) == 1
