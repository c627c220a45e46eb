//! `--pin`: the server on one CPU of its own, lockbench on the others.
//!
//! On a machine with few cores an unpinned benchmark measures the scheduler as much as the
//! server: a single-threaded server shares its core with client threads whenever the
//! kernel puts them there. Pinning gives both servers under test the same, whole core, and
//! the client the rest, so that a comparison between them is a comparison of the servers.

use anyhow::bail;

/// Which CPUs the client and the server run on.
#[derive(Clone, Copy)]
pub struct Split {
    pub client: libc::cpu_set_t,
    pub server: libc::cpu_set_t,
    /// The server's CPU number, for the report.
    pub server_cpu: usize,
}

/// Splits the CPUs this process may use: the last one for the server, the rest for the
/// client. Needs at least two.
pub fn split() -> anyhow::Result<Split> {
    let cpus = current().map_err(|e| anyhow::anyhow!("cannot read this process's CPUs: {e}"))?;
    let Some((&server_cpu, client_cpus)) = cpus.split_last().filter(|(_, rest)| !rest.is_empty())
    else {
        bail!("--pin needs at least two CPUs; this process may use {cpus:?}");
    };
    // SAFETY: cpu_set_t is plain data, all-zero is the empty set; every index is below
    // CPU_SETSIZE.
    let (client, server) = unsafe {
        let mut client: libc::cpu_set_t = std::mem::zeroed();
        let mut server: libc::cpu_set_t = std::mem::zeroed();
        for &c in client_cpus {
            libc::CPU_SET(c, &mut client);
        }
        libc::CPU_SET(server_cpu, &mut server);
        (client, server)
    };
    Ok(Split {
        client,
        server,
        server_cpu,
    })
}

static SERVER: std::sync::OnceLock<Split> = std::sync::OnceLock::new();

/// Pins this process (the calling thread and every thread started after) to the client's
/// CPUs, and remembers the server's for [`server_set`]. Returns the server's CPU.
pub fn apply() -> anyhow::Result<usize> {
    let s = split()?;
    restrict(&s.client)?;
    let _ = SERVER.set(s);
    Ok(s.server_cpu)
}

/// The server's CPU set, when `--pin` was applied.
pub fn server_set() -> Option<&'static libc::cpu_set_t> {
    SERVER.get().map(|s| &s.server)
}

/// The server's CPU number, when `--pin` was applied.
pub fn server_cpu() -> Option<usize> {
    SERVER.get().map(|s| s.server_cpu)
}

/// Restricts the calling thread, and every thread it starts afterwards, to `set`.
/// Async-signal-safe (one system call), so a child may call it between fork and exec.
pub fn restrict(set: &libc::cpu_set_t) -> std::io::Result<()> {
    // SAFETY: the size passed is the size of the set we pass; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The CPUs the calling thread may run on.
fn current() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data (all-zero is the empty set); the size passed is the
    // size of the set passed; every index tested is below CPU_SETSIZE.
    unsafe {
        let mut s: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut s) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &s))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_gets_a_cpu_the_client_does_not() {
        let all = current().unwrap();
        let Ok(split) = split() else {
            assert!(all.len() < 2, "split failed with CPUs {all:?}");
            return;
        };
        // In a thread of its own, so the test harness's affinity is left alone.
        std::thread::spawn(move || {
            restrict(&split.client).unwrap();
            let client = current().unwrap();
            assert!(!client.contains(&split.server_cpu));
            assert_eq!(client.len(), all.len() - 1);
            restrict(&split.server).unwrap();
            assert_eq!(current().unwrap(), vec![split.server_cpu]);
        })
        .join()
        .unwrap();
    }
}
