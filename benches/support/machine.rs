//! What machine a bench ran on, for the first line of its report, and how much of it a
//! process used.

use std::time::Duration;

/// "N cores, M GiB memory, CPU model", read from the OS.
pub fn describe() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {memory_gib:.1} GiB memory, {model}")
}

/// CPU time (user and system, all threads) process `pid` has used so far, in seconds; `None`
/// where `/proc` does not say.
#[allow(dead_code)] // not every bench reports CPU time
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command (which may hold spaces) start after its closing ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |at: usize| fields.get(at)?.parse::<f64>().ok();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the command; in
    // USER_HZ, which Linux fixes at 100 for this interface.
    Some((ticks(11)? + ticks(12)?) / 100.0)
}

/// CPU use of some processes over a window inside a phase: sampled by a thread of its own
/// `skip` after it starts and again `window` later, so that a phase's start and its tail (a
/// load generator's late resends, its verification) are left out.
#[allow(dead_code)] // not every bench reports CPU time
pub struct CpuWindow {
    sampler: std::thread::JoinHandle<Vec<Option<f64>>>,
}

#[allow(dead_code)]
impl CpuWindow {
    /// Starts sampling the processes `pids`.
    pub fn start(pids: Vec<u32>, skip: Duration, window: Duration) -> Self {
        assert!(!window.is_zero(), "a CPU window must last");
        let sampler = std::thread::spawn(move || {
            std::thread::sleep(skip);
            let before: Vec<Option<f64>> =
                pids.iter().map(|&pid| process_cpu_seconds(pid)).collect();
            std::thread::sleep(window);
            pids.iter()
                .zip(before)
                .map(|(&pid, before)| {
                    let after = process_cpu_seconds(pid)?;
                    Some((after - before?) / window.as_secs_f64())
                })
                .collect()
        });
        Self { sampler }
    }

    /// The cores each process used over the window (CPU seconds per second), in the order of
    /// `pids`; waits for the window to end.
    pub fn cores(self) -> Vec<Option<f64>> {
        self.sampler.join().expect("the CPU sampler does not panic")
    }
}
