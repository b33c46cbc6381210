"""`v4coder serve --ep/--tp` (rank 0 serves, followers run its forwards in step) and `--offload`
(serve, engine, embedded backend): the same greedy text as one resident process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from agent.backends.base import BackendError, CompletionRequest, Sampling
from agent.backends.embedded import EmbeddedBackend
from agent.backends.factory import make_backend
from agent.backends.openai import OpenAIBackend
from app.serve import serve_main, start_server
from model.engine import Engine
from model.offload import OffloadTransform, offloaded
from model.sampling import SamplingParams
from model.serve_ranks import parse_bytes

PROMPTS = ["hello world", "def main():\n    return 42"]
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hi"}]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_serve(toy_ckpt, *flags: str) -> tuple[subprocess.Popen, str]:
    """`v4coder serve` on the toy in a subprocess, once it answers /v1/models."""
    port = _free_port()
    cmd = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())",
           "serve", "--checkpoint", str(toy_ckpt), "--port", str(port), "--dtype", "float32",
           *flags]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 120
    while True:
        try:
            httpx.get(f"{base}/models").raise_for_status()
            return proc, base
        except httpx.TransportError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(f"server did not come up: {proc.stderr.read()}") from None
            time.sleep(0.3)


def _completion(base: str, prompt: str, n: int = 6) -> dict:
    r = httpx.post(f"{base}/completions", timeout=120,
                   json={"prompt": prompt, "max_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def _chat(base: str) -> str:
    backend = OpenAIBackend(base, max_retries=0)
    done = list(backend.stream(CompletionRequest(CHAT, [], Sampling(temperature=0.0,
                                                                    max_tokens=5))))[-1]
    backend.close()
    return done.content


@pytest.fixture
def reference(make_engine):
    """Greedy replies of a single resident process (the `--ep 1` server, in-process)."""
    srv = start_server(make_engine(prefix_cache=False), port=0, model_name="toy")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    host, port = srv.server_address[:2]
    base = f"http://{host}:{port}/v1"
    try:
        yield {"completions": [_completion(base, p)["choices"][0]["text"] for p in PROMPTS],
               "chat": _chat(base)}
    finally:
        srv.shutdown()
        thread.join(timeout=30)
        srv.server_close()


@pytest.mark.parametrize("flags", [["--ep", "2"], ["--tp", "2"], ["--offload", "6000"],
                                   ["--ep", "2", "--mtp"]],
                         ids=["ep2", "tp2", "offload", "ep2-mtp"])
def test_serve_ranks_and_offload_match_one_resident_process(toy_ckpt, reference, flags):
    proc, base = _start_serve(toy_ckpt, "--no-prefix-cache", *flags)
    try:
        got = [_completion(base, p) for p in PROMPTS]
        assert [g["choices"][0]["text"] for g in got] == reference["completions"]
        assert all(g["usage"]["completion_tokens"] == 6 for g in got)
        assert _chat(base) == reference["chat"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0       # followers stopped and joined cleanly
        err = proc.stderr.read()
        assert "stopped" in err and ("2 ranks" in err or "--offload" in flags)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_serve_ep2_batches_concurrent_clients(toy_ckpt, reference):
    """Concurrent requests share forwards across ranks (BATCH steps; each finished sequence is
    released on every rank) and still get one process's greedy text."""
    proc, base = _start_serve(toy_ckpt, "--no-prefix-cache", "--ep", "2")
    try:
        prompts = PROMPTS * 3
        with ThreadPoolExecutor(len(prompts)) as pool:
            got = list(pool.map(lambda p: _completion(base, p), prompts))
        assert [g["choices"][0]["text"] for g in got] == reference["completions"] * 3
        stats = httpx.get(base.removesuffix("/v1") + "/stats").json()
        assert stats["batching"]["max_batch_seen"] > 1
        assert _completion(base, PROMPTS[1])["choices"][0]["text"] == reference["completions"][1]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_engine_with_offload_gives_the_same_greedy_tokens(toy_ckpt, make_engine):
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    prompt = make_engine().encode(PROMPTS[1])
    ref = make_engine(prefix_cache=False).generate(prompt, params)
    ref_tokens = [e.token_id for e in ref]
    engine = Engine.from_checkpoint(toy_ckpt, prefix_cache=False,
                                    transforms=[OffloadTransform(budget_bytes=6000)])
    got = engine.generate(prompt, params)
    assert [e.token_id for e in got] == ref_tokens
    cache = offloaded(engine.lm.model)
    assert cache is not None and cache.used_bytes <= 6000 and cache.stats.evictions > 0


def test_embedded_backend_offload_spec_matches_resident(toy_ckpt):
    request = CompletionRequest(CHAT, [], Sampling(temperature=0.0, max_tokens=6))
    resident = list(EmbeddedBackend(toy_ckpt, progress=False).stream(request))[-1]
    backend = make_backend(f"embedded:{toy_ckpt}?offload=6000")
    assert offloaded(backend.engine.lm.model).budget_bytes == 6000
    assert list(backend.stream(request))[-1].content == resident.content
    with pytest.raises(BackendError, match="unknown embedded backend option"):
        make_backend(f"embedded:{toy_ckpt}?nope=1")
    with pytest.raises(BackendError, match="byte count"):
        make_backend(f"embedded:{toy_ckpt}?offload=lots")
    with pytest.raises(BackendError, match="graphs=: expected on or off"):
        make_backend(f"embedded:{toy_ckpt}?graphs=yes")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="graphs=on needs a CUDA device"):
            make_backend(f"embedded:{toy_ckpt}?graphs=on")


def test_parse_bytes_and_bad_serve_flags(toy_ckpt, capsys):
    assert parse_bytes("5000") == 5000 and parse_bytes("2GB") == 2 << 30
    assert parse_bytes("1.5m") == 3 << 19 and parse_bytes("512MiB") == 512 << 20
    assert serve_main(["--checkpoint", str(toy_ckpt), "--offload", "lots"]) == 2
    assert serve_main(["--checkpoint", str(toy_ckpt), "--tp", "3"]) == 1
    assert serve_main(["--checkpoint", str(toy_ckpt), "--ep", "2", "--offload", "1GB"]) == 1
    err = capsys.readouterr().err
    assert "byte count" in err and "--tp 3 must divide" in err and "cannot be combined" in err


def test_serve_ep2_reuses_prefixes_and_matches_one_process(toy_ckpt, make_engine, tmp_path):
    """Rank 0's prefix cache restores a long prompt's prefix and sends the cache to rank 1: the
    reply is the single-process greedy reply, and usage reports the cached tokens."""
    from model.serve_ranks import cache_from_bytes, cache_to_bytes

    engine = make_engine(prefix_cache=False)
    prompt = "def fib(n):\n" + "    # a long comment line for the prefix cache\n" * 40
    ids = engine.tokenizer.encode(prompt, add_special_tokens=False).ids
    assert len(ids) > 400
    srv = start_server(engine, port=0, model_name="toy")
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = srv.server_address[:2]
        want = _completion(f"http://{host}:{port}/v1", prompt)["choices"][0]["text"]
    finally:
        srv.shutdown()
        thread.join(timeout=30)
        srv.server_close()
    # the wire format round-trips a real cache exactly
    seq, _ = engine.prefill(ids[:200])
    back = cache_from_bytes(cache_to_bytes(seq.cache))
    assert back.length == 200
    for a, b in zip(seq.cache.layers, back.layers, strict=True):
        assert (a.window is None and b.window is None) or bool((a.window == b.window).all())

    proc, base = _start_serve(toy_ckpt, "--cache-dir", str(tmp_path), "--ep", "2",
                              "--warm-up", "on")  # followers run the warm-up steps too
    try:
        first = _completion(base, prompt)
        second = _completion(base, prompt)
        assert first["choices"][0]["text"] == second["choices"][0]["text"] == want
        assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
        cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= 256 and cached % 128 == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert "warmed up in" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
