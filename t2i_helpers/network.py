"""Is the internet there? Answered quickly, so that nothing waits on a network that is absent.

The project works offline by default; downloads (COCO, BERT, the Inception weights) first ask
:func:`offline` (the user said so) and :func:`reachable` (a TCP connection within a few seconds).
"""
from __future__ import annotations

import socket
import threading

from t2i_helpers.config import env_flag

OFFLINE_FLAGS = ("T2I_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline() -> bool:
    """True when one of :data:`OFFLINE_FLAGS` is on (read at call time, not at import)."""
    return any(env_flag(name) for name in OFFLINE_FLAGS)


def reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Can a TCP connection to ``host:port`` be opened within ``timeout`` seconds?

    The attempt runs in a thread because a DNS lookup ignores socket timeouts and can block for a
    long time on a machine without a network; we would rather say "offline" quickly.
    """
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def online(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Not :func:`offline`, and ``host`` :func:`reachable`."""
    return not offline() and reachable(host, port, timeout)
