//! CPU time and resident memory of processes, read from /proc: what the
//! reports' CPU per request and peak memory are made of.

/// CPU time so far (µs) of the engine's processes, Kafka, Redis's
/// processes and the load generator (with its children), in the order
/// [`CpuPerRequest::between`](super::CpuPerRequest::between) takes; a
/// process missing: `None`.
pub fn cpu_readings(
    engine: &[u32],
    kafka: &[u32],
    redis: &[u32],
    generator: Option<u32>,
) -> [Option<u64>; 4] {
    [
        cpu_time_sum_us(engine),
        cpu_time_sum_us(kafka),
        cpu_time_sum_us(redis),
        cpu_time_with_children_us(generator),
    ]
}

/// User + system CPU time of a process so far, in microseconds; `None` if
/// there is no such process (never started, or gone).
pub fn cpu_time_us(pid: Option<u32>) -> Option<u64> {
    process_cpu_us(pid, false)
}

/// The CPU time of several processes together (every node of a Redis
/// Cluster); `None` when there are none or one is gone.
pub fn cpu_time_sum_us(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|pid| cpu_time_us(Some(*pid))).sum()
}

/// As [`cpu_time_us`], plus the children it has waited for (a finished wrk).
pub fn cpu_time_with_children_us(pid: Option<u32>) -> Option<u64> {
    process_cpu_us(pid, true)
}

/// The one /proc read behind both CPU times: user + system ticks (and
/// its waited-for children's with `with_children`), in microseconds.
fn process_cpu_us(pid: Option<u32>, with_children: bool) -> Option<u64> {
    let stat = procfs::process::Process::new(pid? as i32)
        .ok()?
        .stat()
        .ok()?;
    let mut ticks = stat.utime + stat.stime;
    if with_children {
        ticks += u64::try_from(stat.cutime + stat.cstime).ok()?;
    }
    Some(ticks * 1_000_000 / procfs::ticks_per_second())
}

/// Resident memory of a process now, and at its peak (KiB); `None` if gone.
pub fn rss_kib(pid: u32) -> Option<(u64, u64)> {
    let status = procfs::process::Process::new(pid as i32)
        .ok()?
        .status()
        .ok()?;
    Some((status.vmrss?, status.vmhwm?))
}
