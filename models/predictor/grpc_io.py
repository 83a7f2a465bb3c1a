"""Which I/O gRPC core uses in a process: EventEngine (gRPC's default since 1.80) or iomgr.

gRPC reads ``GRPC_EXPERIMENTS`` once, when ``grpc`` is first imported, so this module must not
import grpc: the server (``models.predictor.server``) and the load client
(``loadtest.grpc_loadgen``) both use it before they do.

>>> grpc_io_in_effect({"GRPC_EXPERIMENTS": ",".join(IOMGR_EXPERIMENTS)})
'iomgr'
>>> grpc_io_env("event-engine", {"PATH": "/bin", "GRPC_EXPERIMENTS": ",".join(IOMGR_EXPERIMENTS)})
{'PATH': '/bin'}
"""

from __future__ import annotations

import os

#: The ``GRPC_EXPERIMENTS`` that turn gRPC core (1.80+) back from EventEngine to its I/O manager
#: (client channels, listeners, every other endpoint, callback completion queues). A gRPC
#: release without these experiments logs "Unknown experiment" and keeps EventEngine.
IOMGR_EXPERIMENTS = ("-event_engine_client", "-event_engine_listener", "-event_engine_for_all_other_endpoints",
                     "-event_engine_callback_cq")


def grpc_io_in_effect(env=os.environ) -> str:
    """The I/O that ``GRPC_EXPERIMENTS`` in ``env`` asks gRPC core for: "iomgr" or "event-engine"."""
    given = {flag.strip() for flag in env.get("GRPC_EXPERIMENTS", "").split(",")}
    return "iomgr" if set(IOMGR_EXPERIMENTS) <= given else "event-engine"


def grpc_io_env(grpc_io: str, env=os.environ) -> dict[str, str]:
    """A copy of ``env`` whose ``GRPC_EXPERIMENTS`` asks for ``grpc_io`` (other experiments kept)."""
    flags = [f.strip() for f in env.get("GRPC_EXPERIMENTS", "").split(",")
             if f.strip() and f.strip() not in IOMGR_EXPERIMENTS]
    if grpc_io == "iomgr":
        flags += IOMGR_EXPERIMENTS
    out = {k: v for k, v in env.items() if k != "GRPC_EXPERIMENTS"}
    if flags:
        out["GRPC_EXPERIMENTS"] = ",".join(flags)
    return out
