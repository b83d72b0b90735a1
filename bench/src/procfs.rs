//! What the kernel says about a process: resident memory and CPU time, read from
//! `/proc/PID/status` and `/proc/PID/stat`, and the machine's load.

use std::sync::OnceLock;

use anyhow::{Context, Result};

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default)]
pub struct Status {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the most ever resident (the peak over the process's life).
    pub hwm_kib: u64,
}

pub fn status(pid: u32) -> Result<Status> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: no {name}"))
    };
    Ok(Status {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// utime + stime of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    Ok(stat(pid)?.own)
}

/// CPU of a server that forks a process per connection (Postgres): the
/// parent's own and reaped children's time, plus its live children's.
pub fn tree_cpu_seconds(root: u32) -> Result<f64> {
    let mut total = stat(root)?;
    total.own += total.reaped;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // A process may end between the listing and the read.
        if let Ok(s) = stat(pid) {
            if s.ppid == root {
                total.own += s.own;
            }
        }
    }
    Ok(total.own)
}

struct Stat {
    ppid: u32,
    /// utime + stime, seconds.
    own: f64,
    /// cutime + cstime (children waited for), seconds.
    reaped: f64,
}

/// utime + stime of the calling thread, in seconds.
pub fn thread_cpu_seconds() -> Result<f64> {
    Ok(stat_at("/proc/thread-self/stat")?.own)
}

fn stat(pid: u32) -> Result<Stat> {
    stat_at(&format!("/proc/{pid}/stat"))
}

fn stat_at(path: &str) -> Result<Stat> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {path}"))?;
    // The command name (field 2) may hold spaces; fields after it start at `state` (field 3).
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{path}: no field {n}"))
    };
    Ok(Stat {
        ppid: u32::try_from(ticks(4)?).unwrap_or(0),
        own: (ticks(14)? + ticks(15)?) as f64 / clock_ticks(),
        reaped: (ticks(16)? + ticks(17)?) as f64 / clock_ticks(),
    })
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` once (100 on Linux in practice).
fn clock_ticks() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The 1-minute load average.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
