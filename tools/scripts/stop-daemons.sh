# Sourced by the bench scripts: stop_daemons PID... sends each daemon
# SIGTERM, then waits for all of them (a daemon finishes its in-flight I/O
# before it exits).
stop_daemons() {
    local pid
    for pid in "$@"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "$@"; do
        wait "$pid" 2>/dev/null || true
    done
}
