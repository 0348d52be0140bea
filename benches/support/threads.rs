//! Per-thread CPU time, read from `/proc` (Linux), for benchmarks that run a
//! server on one thread and its clients on another.
#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

/// The calling thread's id, to read its CPU time from another thread.
pub fn current_tid() -> String {
    std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_default()
}

/// CPU time a thread of this process has used (`schedstat`: nanoseconds).
pub fn cpu(tid: &str) -> Duration {
    let stat =
        std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).unwrap_or_default();
    let nanos = stat
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    Duration::from_nanos(nanos)
}
