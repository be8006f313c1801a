"""System metrics on the sweep's parent run: CPU, memory, disk and network, and GPU
utilisation and memory where `pynvml` finds a GPU, as `system/...` metrics.

MLflow's own monitor (the one `mlflow.start_run(log_system_metrics=True)` starts)
samples them in a background thread; a sweep's parent run is made with the client,
not `start_run`, so the monitor is started here. It samples every 5 seconds, often
enough for sweeps of minutes (`MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL` overrides).
"""

from __future__ import annotations

import os

from pipeline.errors import TrackingUnavailable

SAMPLING_SECONDS = 5.0


def start(run_id):
    """Starts sampling onto run `run_id`; returns the monitor (call `finish()`)."""
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    seconds = float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL",
                                   SAMPLING_SECONDS))
    monitor = SystemMetricsMonitor(run_id, sampling_interval=seconds,
                                   samples_before_logging=1, resume_logging=True)
    monitor.start()
    return monitor


def finish(monitor):
    """Stops the monitor and writes its last samples; once the sweep is stopping, only
    within the time left to calls to the store (MLflow's `finish` waits unbounded)."""
    from pipeline.tracking import server

    try:
        server.within_stop_budget(monitor.finish)
    except TrackingUnavailable:
        pass  # The process is stopping; its last samples are not worth the wait.
