"""``v4coder model …`` entry point and the generation helper."""

import json

import pytest
import torch
from model_helpers import token_ids
from safetensors.torch import load_file

from model.cli import main
from model.generate import generate, load_model


def test_init_toy_writes_a_loadable_checkpoint(tmp_path, capsys):
    assert main(["init-toy", "--out", str(tmp_path / "toy"), "--seed", "3"]) == 0
    assert "noise" in capsys.readouterr().out
    assert load_model(tmp_path / "toy", progress=False).config.dim == 64


@pytest.mark.parametrize("argv, message", [
    (["init-toy"], "--out"),
    (["init-toy", "--out", "X", "--preset", "huge"], "invalid choice"),
    (["score", "--checkpoint", "/nonexistent", "--ids-file", "i.json", "--out", "o"], "not a checkpoint"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_input_is_one_line_without_traceback(argv, message, capsys):
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_init_toy_refuses_a_non_empty_dir(tmp_path, capsys):
    (tmp_path / "file").write_text("keep me")
    assert main(["init-toy", "--out", str(tmp_path)]) == 2
    assert "not an empty directory" in capsys.readouterr().err
    assert (tmp_path / "file").read_text() == "keep me"


def test_score_prefill_and_decode_agree(tmp_path, tiny_ckpt, capsys):
    ids = token_ids(40, seed=11)
    (tmp_path / "ids.json").write_text(json.dumps(ids))
    for mode in ("prefill", "decode"):
        assert main(["score", "--checkpoint", str(tiny_ckpt), "--ids-file", str(tmp_path / "ids.json"),
                     "--out", str(tmp_path / f"{mode}.safetensors"), "--mode", mode]) == 0
    a = load_file(str(tmp_path / "prefill.safetensors"))["logits"]
    b = load_file(str(tmp_path / "decode.safetensors"))["logits"]
    assert a.shape == (40, 129280) and a.dtype == torch.float32
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5
    (tmp_path / "bad.json").write_text("[1, 2, 999999]")
    assert main(["score", "--checkpoint", str(tiny_ckpt), "--ids-file", str(tmp_path / "bad.json"),
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "outside the vocabulary" in capsys.readouterr().err


def test_generate_cli_streams_text(tiny_ckpt, capsys):
    assert main(["generate", "--checkpoint", str(tiny_ckpt), "--prompt", "def add(a, b):",
                 "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out.strip()


def test_generate_helper_is_deterministic_and_stops(tiny_model):
    prompt = [0] + token_ids(12, seed=2)
    greedy = list(generate(tiny_model, prompt, 8))
    assert len(greedy) == 8 and greedy == list(tiny_model.generate(prompt, 8))
    full = tiny_model.logits(prompt + greedy[:-1])
    assert full[len(prompt) - 1:].argmax(-1).tolist() == greedy
    sampled = list(tiny_model.generate(prompt, 8, temperature=1.0, seed=5))
    assert sampled == list(tiny_model.generate(prompt, 8, temperature=1.0, seed=5))
    stop = greedy[2]
    stopped = list(tiny_model.generate(prompt, 8, stop_ids=[stop]))
    assert stopped[-1] == stop and len(stopped) == greedy.index(stop) + 1
