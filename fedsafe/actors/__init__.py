"""The actors: plain classes that ``fedsafe.cluster`` makes remote (trainer, coordinator, generator)."""

from __future__ import annotations

import os


def placement() -> dict:
    """Where Ray put the calling actor: its node's IP and ID, the IDs of the GPUs Ray gave it on that node, and
    what ``CUDA_VISIBLE_DEVICES`` shows it (an actor without a GPU sees none: ``fedsafe.cluster.runtime.actor_env``)."""
    import ray

    return {"node": ray.util.get_node_ip_address(), "node_id": ray.get_runtime_context().get_node_id(),
            "gpus": [str(i) for i in ray.get_gpu_ids()], "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}
