"""`v4coder serve` as a real process: it answers, then SIGTERM lets an in-flight request finish
and the process exits 0; bad flags or a missing checkpoint give one line and exit 1."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())", *args]


def test_serve_process_and_graceful_shutdown(toy_ckpt, tmp_path):
    port = _free_port()
    proc = subprocess.Popen(
        _cli("serve", "--checkpoint", str(toy_ckpt), "--port", str(port), "--dtype", "float32",
             "--cache-dir", str(tmp_path / "kv")),
        stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                assert httpx.get(f"{base}/models").json()["data"][0]["id"] == toy_ckpt.name
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.3)
        result: dict = {}

        def slow_request() -> None:
            result["r"] = httpx.post(f"{base}/completions", timeout=120,
                                     json={"prompt": "hello", "max_tokens": 12, "temperature": 0})

        worker = threading.Thread(target=slow_request)
        worker.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        worker.join(timeout=120)
        assert result["r"].status_code == 200
        assert result["r"].json()["usage"]["completion_tokens"] == 12
        assert proc.wait(timeout=60) == 0
        assert "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_bad_checkpoint_is_one_line(tmp_path):
    run = subprocess.run(_cli("serve", "--checkpoint", str(tmp_path / "missing")),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stderr.strip().count("\n") == 0 and "v4coder serve:" in run.stderr


def test_serve_cuda_graphs_without_cuda_is_one_line(toy_ckpt):
    run = subprocess.run(_cli("serve", "--checkpoint", str(toy_ckpt), "--cuda-graphs"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == ("v4coder serve: --cuda-graphs needs a CUDA device "
                                  "(--device cuda)")


def test_serve_autotune_without_cuda_is_one_line(toy_ckpt):
    run = subprocess.run(_cli("serve", "--checkpoint", str(toy_ckpt), "--autotune"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "v4coder serve: --autotune needs a CUDA device (--device cuda)"
    run = subprocess.run(_cli("serve", "--checkpoint", str(toy_ckpt), "--device", "cuda",
                              "--autotune", "--tp", "2"),
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "v4coder serve: --autotune cannot be combined with --ep/--tp yet"
