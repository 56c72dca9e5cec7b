"""The columns of points.csv. Later versions add columns; none is ever renamed."""

POINT_COLUMNS = [
    "run_id",
    "model",
    "workload",
    "connections",
    "payload",
    "repeat",
    "status",
    "reason",
    "requests",
    "errors",
    "duration_s",
    "rps",
    "mbps",
    "p50_us",
    "p90_us",
    "p99_us",
    "p999_us",
    "max_us",
    "server_cpu_user_s",
    "server_cpu_sys_s",
    "cpu_us_per_req",
    "server_rss_bytes",
    "client_cpu_pct",
    # Added beside the first set: how the point was run and what else it saw.
    "point_id",
    "started_at",
    "connected",
    "connect_s",
    "connect_errors",
    "error_kinds",
    "client_workers",
    "server_cpus",
    "client_cpus",
    "server_threads",
    "server_fds",
    "server_processes",
    "server_exit_s",
]

STATUS_OK = "ok"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"
