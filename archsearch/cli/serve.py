"""``archsearch device-serve``: the device server, started on the target device."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from ..errors import ConfigError
from ._app import _command, _default


def _serve_args(p: argparse.ArgumentParser) -> None:
    from ..serve.server import ServeOptions

    p.add_argument("--host", default=_default(ServeOptions, "host"),
                   help="address to bind (default %(default)s: this machine only; 0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=_default(ServeOptions, "port"), help="default %(default)s; 0 picks a free one")
    p.add_argument("--max-model-mb", type=float, default=_default(ServeOptions, "max_model_mb"),
                   help="largest ONNX model accepted (default %(default)s)")
    p.add_argument("--timeout-s", type=float, default=_default(ServeOptions, "timeout_s"),
                   help="wall-clock limit of one job (default %(default)s)")
    p.add_argument("--max-memory-mb", type=int, default=_default(ServeOptions, "max_memory_mb"),
                   help="memory limit of one job's process (default %(default)s)")
    p.add_argument("--queue", type=int, default=_default(ServeOptions, "queue"),
                   help="jobs that may wait while one runs; more are refused with 503 (default %(default)s)")
    p.add_argument("--token-file", type=Path, help="read the bearer token from this file (else $ARCHSEARCH_DEVICE_TOKEN, "
                                                  "else a new one is printed once)")
    p.add_argument("--log", type=Path, help="job log, JSON lines (default $ARCHSEARCH_CACHE_DIR/device-serve/jobs.jsonl)")


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """(token, generated here)."""
    from ..serve.protocol import TOKEN_ENV

    if args.token_file is not None:
        try:
            text = args.token_file.read_text(encoding="utf-8", errors="strict")[:4096]
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError("--token-file", f"cannot read {args.token_file} ({type(e).__name__})") from None
        token = text.strip().splitlines()[0].strip() if text.strip() else ""
        if not token:
            raise ConfigError("--token-file", f"{args.token_file} is empty")
        return token, False
    if os.environ.get(TOKEN_ENV, "").strip():
        return os.environ[TOKEN_ENV].strip(), False
    return secrets.token_urlsafe(32), True


@_command("device-serve", "time ONNX models on this device for searches elsewhere (HTTP, token, ONNX only)", _serve_args)
def _device_serve(args: argparse.Namespace) -> int:
    from ..serve.protocol import TOKEN_ENV
    from ..serve.server import DeviceServer, ServeOptions

    options = ServeOptions(host=args.host, port=args.port, max_model_mb=args.max_model_mb, timeout_s=args.timeout_s,
                           max_memory_mb=args.max_memory_mb, queue=args.queue, log=args.log)
    token, generated = _token(args)
    try:
        server = DeviceServer(options, token, announce=lambda line: print(line, file=sys.stderr, flush=True))
    except OSError as e:
        raise ConfigError("--port", f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    print(f"device-serve: listening on {server.url} as {server.fingerprint} ({server.facts['name']}, "
          f"{server.facts['logical_cpus']} CPUs, onnxruntime {server.facts['onnxruntime']}); job log {options.log_path}",
          flush=True)
    if generated:
        print(f"device-serve: token (shown once; on the searching machine: export {TOKEN_ENV}=...): {token}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("device-serve: stopped", file=sys.stderr)
    return 0
