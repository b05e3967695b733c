"""`slide serve`: load a checkpoint, listen, serve the OpenAI API until Ctrl-C.

    slide serve runs/rl/checkpoints/step_000080/model --port 8000           # http://127.0.0.1:8000/v1
    slide serve path/to/hf-model --host 0.0.0.0 --port 8000 --device cuda --dtype bf16 --name my-model

The port is bound before the model loads, so a busy port (or a missing checkpoint) is one `error:` line at once.
Ctrl-C (SIGINT) or SIGTERM stops every generation in flight at its next decode step, lets the open responses end
and returns.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

import uvicorn

from slide.errors import UserError
from slide.model.load import load_with_tokenizer
from slide.serve.app import build_app
from slide.serve.backend import Backend


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one), or a UserError naming what is wrong."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: must be in 0..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        why = os.strerror(e.errno) if e.errno else str(e)
        raise UserError(f"--host {host} --port {port}: cannot listen there ({why}); is another server using the "
                        f"port? (--port 0 picks a free one)") from None


class Server(uvicorn.Server):
    """uvicorn's server, which on a stop signal first stops the generations in flight (open streams would otherwise
    keep it waiting for them to end)."""

    def __init__(self, config: uvicorn.Config, backend: Backend):
        super().__init__(config)
        self.backend = backend

    def handle_exit(self, sig, frame) -> None:
        self.backend.stop_all()
        super().handle_exit(sig, frame)


def serve(checkpoint: str, host: str, port: int, device, dtype, name: str | None = None,
          max_model_len: int | None = None, log_level: str = "warning") -> None:
    """Serve `checkpoint` (a local HF causal LM folder) on host:port until stopped."""
    if not Path(checkpoint).is_dir():  # before the port: the first thing wrong is the one reported
        raise UserError(f"checkpoint {checkpoint!r}: no such checkpoint folder")
    sock = listen(host, port)
    try:
        model, tok = load_with_tokenizer(checkpoint, "checkpoint", dtype, device)
        backend = Backend(model, tok, name or checkpoint, max_model_len)
    except BaseException:
        sock.close()
        raise
    server = Server(uvicorn.Config(build_app(backend), log_level=log_level, timeout_graceful_shutdown=10), backend)
    print(f"serving {backend.name!r} at http://{host}:{sock.getsockname()[1]}/v1 (Ctrl-C stops)", flush=True)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn raises the signal again once it has shut down: a normal stop here
        pass
    finally:
        backend.shutdown()
        sock.close()
    print("stopped", flush=True)
