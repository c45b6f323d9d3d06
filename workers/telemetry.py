"""Prometheus metrics of the processes that do work, and the HTTP endpoint each one serves.

Names follow DESIGN.md (base units, ``_total`` counters — prometheus_client appends the
suffix — and bounded labels: job, kind, encoder, rank, pool, reason; never a path).
"""
from __future__ import annotations

import threading

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from workers.energy import export_node_energy

TRAIN_LABELS = ("job", "kind", "encoder", "rank")
DECODE_LABELS = ("job", "pool")

TRAIN_SAMPLES = Counter("internvideo_train_samples", "Training samples consumed", TRAIN_LABELS)
TRAIN_STEPS = Counter("internvideo_train_steps", "Optimizer steps completed", TRAIN_LABELS)
TRAIN_STEP_SECONDS = Histogram(
    "internvideo_train_step_seconds", "Wall time of one optimizer step (data wait included)", TRAIN_LABELS,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
TRAIN_DATA_WAIT = Counter("internvideo_train_data_wait_seconds",
                          "Time a trainer waited for decoded clips", TRAIN_LABELS)
TRAIN_MODEL_FLOPS = Counter("internvideo_train_model_flops",
                            "Model FLOPs executed (forward + backward), for MFU", TRAIN_LABELS)

ENERGY = Counter("internvideo_energy_joules", "Energy of each worker's device, labelled with where the figure "
                 "comes from (nvml, nvml_power, rapl, estimate)", (*TRAIN_LABELS, "device", "source"))
PEAK_FLOPS = Gauge("internvideo_device_peak_flops", "Peak FLOP/s of the worker's device in the dtype it trains "
                   "in (absent where unknown)", TRAIN_LABELS)

DECODE_CLIPS = Counter("internvideo_decode_clips", "Clips decoded and transformed", DECODE_LABELS)
DECODE_FRAMES = Counter("internvideo_decode_frames", "Frames decoded", DECODE_LABELS)
DECODE_ERRORS = Counter("internvideo_decode_errors", "Videos that could not be decoded, by reason",
                        (*DECODE_LABELS, "reason"))
DECODE_SECONDS = Counter("internvideo_decode_seconds", "Time spent decoding and transforming", DECODE_LABELS)

def node_address() -> str:
    """The address Ray knows this process's node by (loopback on the embedded default)."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    return next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)


WILDCARDS = ("0.0.0.0", "::", "")


def reachable(host: str) -> str:
    """The address to give others for a server listening on ``host``: a wildcard listen address
    (every interface: a container's, a pod's) names no host, so its node's address stands for it."""
    return node_address() if host in WILDCARDS else host


_endpoint: str | None = None
_endpoint_lock = threading.Lock()


def serve_metrics(host: str) -> str:
    """Start this process's /metrics server once (on a free port, listening on ``host``), and its bid
    to export the node's RAPL energy; returns the ``host:port`` Prometheus scrapes."""
    global _endpoint
    with _endpoint_lock:
        if _endpoint is None:
            server, _ = start_http_server(0, addr=host)
            _endpoint = f"{reachable(host)}:{server.server_port}"
            export_node_energy(reachable(host))
        return _endpoint
