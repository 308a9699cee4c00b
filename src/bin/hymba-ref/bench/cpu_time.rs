//! CPU time the process used, as the kernel counts it (Linux `/proc/self/stat`), for telling
//! apart the two ways a parallel phase can fail to speed up: threads that wait (a serial part,
//! an imbalance: CPU busy well below the thread count) and threads that are busy but slow
//! (memory bandwidth, shared cores: CPU busy near it), and for seeing time spent in the kernel
//! (page faults of fresh allocations: system time, minor faults).
//!
//! On other systems every reading is `None` and the benchmark reports no CPU figures.

use serde_json::{json, Value};
use std::ops::{Add, Sub};

/// `/proc` reports CPU time in clock ticks of `USER_HZ`, 100 a second on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds in user and system mode, and minor page faults, summed over the process's threads.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    pub user: f64,
    pub system: f64,
    pub minor_faults: u64,
}

impl CpuTime {
    /// The process's totals so far.
    pub fn now() -> Option<CpuTime> {
        parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// As JSON, for a span of `wall` seconds on `threads` threads: `threads_busy` is the CPU
    /// time over `wall · threads` (1 when every thread computed all the time).
    pub fn json(&self, wall: f64, threads: usize) -> Value {
        json!({
            "user_seconds": self.user,
            "system_seconds": self.system,
            "minor_page_faults": self.minor_faults,
            "threads_busy": (self.user + self.system) / (wall * threads as f64),
        })
    }
}

impl Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            system: self.system - earlier.system,
            minor_faults: self.minor_faults.saturating_sub(earlier.minor_faults),
        }
    }
}

impl Add for CpuTime {
    type Output = CpuTime;
    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime { user: self.user + other.user, system: self.system + other.system, minor_faults: self.minor_faults + other.minor_faults }
    }
}

/// Fields 10 (minflt), 14 (utime) and 15 (stime) of a `/proc/<pid>/stat` line. They are counted
/// after the command name, which is in parentheses and may itself hold spaces and parentheses.
fn parse_stat(stat: &str) -> Option<CpuTime> {
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect(); // from field 3 on
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(CpuTime {
        minor_faults: field(10)?,
        user: field(14)? as f64 / TICKS_PER_SECOND,
        system: field(15)? as f64 / TICKS_PER_SECOND,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (hymba (ref) x) R 1 4242 4242 0 -1 4194304 1234 0 7 0 250 31 0 0 20 0 3 0 100 0 0";
        let cpu = parse_stat(stat).expect("a well-formed line");
        assert_eq!(cpu, CpuTime { user: 2.5, system: 0.31, minor_faults: 1234 });
        assert_eq!(parse_stat("4242 (cut short) R 1"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        let later = CpuTime { user: 3.0, system: 0.5, minor_faults: 1300 };
        let span = later - cpu;
        assert!((span.user - 0.5).abs() < 1e-9 && (span.system - 0.19).abs() < 1e-9 && span.minor_faults == 66);
        assert_eq!(span.json(0.5, 2)["threads_busy"].as_f64().map(|b| (b * 100.0).round()), Some(69.0));
    }

    #[test]
    fn this_process_has_used_some_cpu() {
        if let Some(cpu) = CpuTime::now() {
            assert!(cpu.user + cpu.system >= 0.0 && cpu.minor_faults > 0, "{cpu:?}");
        }
    }
}
