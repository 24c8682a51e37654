# Sourced by the bench scripts: starting and stopping the daemons they run.

# wait_for_socket PID SOCKET LOG NAME: true once SOCKET exists, false (with
# the end of LOG on stderr) if the daemon exited or 10 s passed.
wait_for_socket() {
    local pid=$1 socket=$2 log=$3 name=$4 deadline=$((SECONDS + 10))
    while [[ ! -S $socket ]]; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$(basename "$0"): $name exited before creating $socket:" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "$(basename "$0"): $name did not create $socket within 10 s:" >&2
            tail -n 20 "$log" >&2 || true
            return 1
        fi
        sleep 0.05
    done
}

# stop_daemons PID...: sends each daemon SIGTERM, then waits for all of
# them (a daemon finishes its in-flight I/O before it exits).
stop_daemons() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null || true
    done
}
