//! `postgame chaos` stopped by a signal stops everything it started: its role processes
//! and its private cluster (before, SIGINT or SIGTERM killed it at once and left them
//! running).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::helpers::WAIT;

/// The `postgame serve` processes whose parent is `parent`.
fn role_children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid …: the comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(parent) && cmdline.split(|b| *b == 0).any(|a| a == b"serve") {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` still runs (a zombie waiting for its parent counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn postmaster(dir: &Path) -> Option<u32> {
    std::fs::read_to_string(dir.join("pgdata/postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

#[tokio::test]
async fn chaos_stopped_by_sigterm_leaves_no_process_or_cluster_behind() {
    let dir = std::env::temp_dir().join(format!("postgame-chaos-signal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut chaos = tokio::process::Command::new(env!("CARGO_BIN_EXE_postgame"))
        .args(["chaos", "--duration", "600", "--seed", "1", "--dir"])
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the postgame binary starts");
    let pid = chaos.id().unwrap();
    // Every role process (2 gateways, 3 workers, 2 tickers) and the cluster running.
    let deadline = Instant::now() + WAIT * 4;
    let (roles, pm) = loop {
        let roles = role_children(pid);
        if let (7, Some(pm)) = (roles.len(), postmaster(&dir)) {
            break (roles, pm);
        }
        assert!(
            Instant::now() < deadline,
            "chaos never started its processes: {roles:?}, postmaster {:?}",
            postmaster(&dir)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(alive(pm), "the private cluster runs");

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let status = tokio::time::timeout(WAIT * 2, chaos.wait())
        .await
        .expect("chaos exits after SIGTERM")
        .unwrap();
    assert!(!status.success(), "an interrupted run is not a pass");
    let deadline = Instant::now() + WAIT;
    while roles.iter().any(|p| alive(*p)) || alive(pm) {
        assert!(
            Instant::now() < deadline,
            "left behind: role processes {:?}, postmaster {}",
            roles.iter().filter(|p| alive(**p)).collect::<Vec<_>>(),
            if alive(pm) { "running" } else { "stopped" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
