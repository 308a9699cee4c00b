//! The memory available to a new allocation: Linux's `MemAvailable` (in `/proc/meminfo`, kB),
//! the kernel's estimate of what can be allocated without swapping. Elsewhere it is not known
//! (`None`), and what it would bound is not bounded.

/// Bytes of memory available to a new allocation, where the system says.
pub fn available_memory() -> Option<u64> {
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// `MemAvailable` in bytes from the text of `/proc/meminfo` (`MemAvailable:   16093452 kB`).
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line["MemAvailable:".len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_available_is_read_in_bytes_or_not_at_all() {
        let meminfo = "MemTotal:       32768000 kB\nMemFree:         1000 kB\nMemAvailable:   16093452 kB\n";
        assert_eq!(mem_available(meminfo), Some(16093452 * 1024));
        assert_eq!(mem_available("MemTotal:       32768000 kB\n"), None, "an old kernel has no MemAvailable");
        assert_eq!(mem_available("MemAvailable:   lots kB\n"), None);
    }
}
