//! What the host must allow for the configuration: file descriptors, locked memory for io_uring, and the listen
//! backlog. Checked once at start-up; each problem is one log line with the fix. The arithmetic is pure; reading
//! the limits is at the edge.

use crate::config::Config;

/// The limits that matter, as read from the host.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// RLIMIT_NOFILE soft limit, after raising it to the hard limit.
    pub open_files: u64,
    /// RLIMIT_MEMLOCK soft limit in bytes.
    pub locked_bytes: u64,
    /// net.core.somaxconn, if readable.
    pub somaxconn: Option<u64>,
}

/// File descriptors beyond clients and servers: listeners, io_uring rings, eventfds, log and spare.
const SPARE_FDS: u64 = 64;
/// glommio refuses to start below 512 KiB of locked memory per process; each shard's rings want more.
const LOCKED_BYTES_BASE: u64 = 512 << 10;
const LOCKED_BYTES_PER_SHARD: u64 = 256 << 10;

/// One line per limit the configuration would run into, with the fix.
pub fn problems(config: &Config, shards: usize, limits: Limits) -> Vec<String> {
    let mut out = Vec::new();
    let servers: u64 = config
        .databases
        .iter()
        .map(|d| u64::from(d.pool_size))
        .sum::<u64>()
        * config.users.len() as u64;
    let fds = u64::from(config.max_client_conn) + servers + SPARE_FDS;
    if limits.open_files < fds {
        out.push(format!(
            "open file limit is {}, but max_client_conn {} + up to {servers} server connections need {fds}: \
             raise it (LimitNOFILE={fds} in the systemd unit, or ulimit -n {fds}) or lower max_client_conn",
            limits.open_files, config.max_client_conn
        ));
    }
    let locked = LOCKED_BYTES_BASE + LOCKED_BYTES_PER_SHARD * shards as u64;
    if limits.locked_bytes < locked {
        let kib = locked.div_ceil(1024);
        out.push(format!(
            "locked memory limit is {} KiB, io_uring for {shards} shard(s) needs {kib} KiB: \
             LimitMEMLOCK={kib}K in the systemd unit, or ulimit -l {kib}",
            limits.locked_bytes / 1024
        ));
    }
    if let Some(somaxconn) = limits.somaxconn {
        if somaxconn < u64::from(config.listen_backlog) {
            out.push(format!(
                "net.core.somaxconn is {somaxconn}, below listen_backlog {}: connection bursts beyond it are \
                 dropped; sysctl -w net.core.somaxconn={}",
                config.listen_backlog, config.listen_backlog
            ));
        }
    }
    out
}

/// Reads the host's limits, first raising the open-file soft limit to the hard limit as servers do.
pub fn read() -> Limits {
    let mut files = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let mut locked = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid pointers to local structs.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut files) == 0 && files.rlim_cur < files.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: files.rlim_max,
                rlim_max: files.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                files = raised;
            }
        }
        libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut locked);
    }
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok());
    Limits {
        open_files: files.rlim_cur,
        locked_bytes: locked.rlim_cur,
        somaxconn,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(max_client_conn: u32, backlog: u32) -> Config {
        Config::parse(&format!(
            "max_client_conn = {max_client_conn}\nlisten_backlog = {backlog}\n\
             [databases.a]\npool_size = 20\n[databases.b]\npool_size = 30\n[users.u]\npassword = \"p\"\n\
             [users.v]\npassword = \"p\"\n"
        ))
        .unwrap()
    }

    const ROOMY: Limits = Limits {
        open_files: 1 << 20,
        locked_bytes: 64 << 20,
        somaxconn: Some(65535),
    };

    #[test]
    fn a_roomy_host_has_no_problems() {
        assert!(problems(&config(100_000, 4096), 16, ROOMY).is_empty());
    }

    #[test]
    fn each_short_limit_is_one_line_with_its_fix() {
        // 10,000 clients + (20 + 30) x 2 servers + 64 spare.
        let p = problems(
            &config(10_000, 4096),
            2,
            Limits {
                open_files: 1024,
                ..ROOMY
            },
        );
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("need 10164") && p[0].contains("LimitNOFILE=10164"),
            "{}",
            p[0]
        );
        let p = problems(
            &config(10, 4096),
            4,
            Limits {
                locked_bytes: 64 << 10,
                ..ROOMY
            },
        );
        assert_eq!(p.len(), 1);
        assert!(
            p[0].contains("1536 KiB") && p[0].contains("ulimit -l 1536"),
            "{}",
            p[0]
        );
        let p = problems(
            &config(10, 4096),
            1,
            Limits {
                somaxconn: Some(128),
                ..ROOMY
            },
        );
        assert!(
            p[0].contains("sysctl -w net.core.somaxconn=4096"),
            "{}",
            p[0]
        );
        assert!(problems(
            &config(10, 4096),
            1,
            Limits {
                somaxconn: None,
                ..ROOMY
            }
        )
        .is_empty());
    }
}
