"""``archsearch device-serve``: the device server, started on the target device."""
from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path

from ..errors import ConfigError
from ._app import _command, _given, _option_flags


#: device-serve's flags: fields of archsearch.serve.server.ServeOptions.
_SERVE_FLAGS = {
    "host": "address to bind (this machine only by default; 0.0.0.0 exposes it to the network)",
    "port": "0 picks a free one", "max_model_mb": "largest ONNX model accepted",
    "timeout_s": "wall-clock limit of one job", "max_memory_mb": "memory limit of one job's process",
    "queue": "jobs that may wait while one runs; more are refused with 503",
    "read_timeout_s": "a client silent this long is disconnected", "max_connections": "connections served at once",
    "log_max_mb": "the job log rotates past this size"}


def _serve_args(p: argparse.ArgumentParser) -> None:
    from ..serve.server import ServeOptions

    _option_flags(p, ServeOptions, _SERVE_FLAGS)
    p.add_argument("--token-file", type=Path, help="read the bearer token from this file (else $ARCHSEARCH_DEVICE_TOKEN, "
                                                  "else a new one is printed once)")
    p.add_argument("--log", type=Path, help="job log, JSON lines (default $ARCHSEARCH_CACHE_DIR/device-serve/jobs.jsonl)")


def _token(args: argparse.Namespace) -> tuple[str, bool]:
    """(token, generated here)."""
    from ..serve.protocol import TOKEN_ENV

    if args.token_file is not None:
        try:
            with open(args.token_file, "rb") as f:  # bounded: /dev/zero or a huge file must not be read whole
                raw = f.read(4097)
            if len(raw) > 4096:
                raise ConfigError("--token-file", f"{args.token_file} is larger than 4 KB: not a token file")
            text = raw.decode("utf-8", errors="strict")
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

    options = ServeOptions(**_given(args, _SERVE_FLAGS), log=args.log)
    token, generated = _token(args)
    try:
        server = DeviceServer(options, token, announce=lambda line: print(line, file=sys.stderr, flush=True))
    except OSError as e:
        raise ConfigError("--port", f"cannot listen on {options.host}:{options.port} ({e.strerror or e})") from None
    print(f"device-serve: listening on {server.url} as {server.fingerprint} ({server.facts['name']}, "
          f"{server.facts['logical_cpus']} CPUs, onnxruntime {server.facts['onnxruntime']}); job log {options.log_path}",
          flush=True)
    if generated:
        print(f"device-serve: token (shown once; on the searching machine: export {TOKEN_ENV}=...): {token}", flush=True)
    import signal

    def stop(signum, frame) -> None:  # noqa: ARG001 - signal's signature
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print(f"device-serve: stopped after {server.jobs} jobs", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
