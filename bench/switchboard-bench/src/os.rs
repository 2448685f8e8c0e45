//! What the load generator reads from the operating system: its own file limit and CPU
//! time (libc), another process's CPU time and resident memory, and one core's busy time
//! (/proc). `load` and `idle` sample these before and after they measure.

use crate::Res;

/// Raises the soft file limit to the hard one, and the hard one too when `needed` is above it
/// and the process may. Errors when the result is still below `needed`.
pub fn raise_nofile(needed: u64) -> Res<()> {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err("getrlimit(RLIMIT_NOFILE) failed".into());
        }
        if lim.rlim_max < needed as libc::rlim_t {
            let want = libc::rlimit {
                rlim_cur: needed as libc::rlim_t,
                rlim_max: needed as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
        if lim.rlim_cur < needed as libc::rlim_t {
            return Err(format!(
                "need {needed} file descriptors but RLIMIT_NOFILE is {} (hard {}); raise it (ulimit -Hn / -n) and retry",
                lim.rlim_cur, lim.rlim_max
            )
            .into());
        }
    }
    Ok(())
}

/// CPU seconds (user + system) used by this process so far.
pub fn self_cpu() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct passed by pointer.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut ru) != 0 {
            return 0.0;
        }
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

#[derive(Clone, Copy)]
pub struct ProcSample {
    pub cpu_s: f64,
    pub rss_kib: u64,
}

/// CPU seconds (utime + stime) and VmRSS of another process.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // fields[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())?;
    Some(ProcSample {
        cpu_s: (utime + stime) as f64 / tck,
        rss_kib,
    })
}

/// Busy and total seconds of one CPU so far, from /proc/stat.
pub fn core_times(cpu: usize) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let name = format!("cpu{cpu}");
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory effects.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let tck = if tck > 0 { tck as f64 } else { 100.0 };
    Some(((total - idle) as f64 / tck, total as f64 / tck))
}

/// Share of the server's core (percent of the interval) used by anything but the server.
pub fn other_load(
    before: Option<(f64, f64)>,
    after: Option<(f64, f64)>,
    server_cpu_s: Option<f64>,
) -> Option<f64> {
    let ((b0, t0), (b1, t1)) = (before?, after?);
    let span = t1 - t0;
    if span <= 0.0 {
        return None;
    }
    Some((100.0 * (b1 - b0 - server_cpu_s?) / span).max(0.0))
}

pub fn sample_server(pid: Option<u32>) -> Res<Option<ProcSample>> {
    match pid {
        None => Ok(None),
        Some(p) => proc_sample(p).map(Some).ok_or_else(|| {
            format!("cannot read /proc/{p}/stat and status (is the server running?)").into()
        }),
    }
}
