//! The test servers themselves (`procpool_tests::sshd`): what the remote
//! tests rely on, checked on real `sshd` and `ssh` processes.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use procpool_tests::sshd::{Sshd, sshd_or_skip};
use procpool_tests::{not_running, process_exists, process_state, wait_until, watchdog};

/// A bound on a hang of any one test, not a timing assertion.
const LIMIT: Duration = Duration::from_secs(120);

/// A bound on one awaited event (a client's exit, a process's end).
const CEILING: Duration = Duration::from_secs(30);

/// The command line of `pid`, its arguments joined by spaces.
fn cmdline(pid: u32) -> String {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&raw)
        .split('\0')
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The parent of `pid`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Starts `ssh ... sleep 1000` on `server` (with `extra` options) and
/// waits until the remote `sleep` runs; returns the client and the pid of
/// the remote `sleep`.
fn remote_sleep(server: &Sshd, extra: &[(&str, &str)]) -> (Child, u32) {
    let mut client = server
        .ssh_command_with(extra)
        .arg("sleep 1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ssh");
    let mut sleep = None;
    let found = wait_until(CEILING, || {
        sleep = server
            .descendants()
            .into_iter()
            .find(|&p| cmdline(p) == "sleep 1000");
        sleep.is_some() || matches!(client.try_wait(), Ok(Some(_)))
    });
    match sleep {
        Some(pid) if found => (client, pid),
        _ => {
            let _ = client.kill();
            let out = client.wait_with_output().expect("wait for ssh");
            panic!(
                "no remote `sleep 1000` seen: ssh {:?}, stderr {:?}; sshd's log: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                server.log()
            );
        }
    }
}

/// Waits (at most [`CEILING`]) for `child` to exit; returns its status and
/// its stderr.
fn exit_of(mut child: Child, what: &str) -> (ExitStatus, String) {
    let mut status = None;
    if !wait_until(CEILING, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    }) {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: ssh still running after {CEILING:?}");
    }
    let out = child.wait_with_output().expect("wait for ssh");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Asserts that none of `pids` runs any more (gone, or a zombie of a
/// parent that is gone).
fn assert_all_gone(pids: &[u32], what: &str) {
    let left: Vec<(u32, String)> = pids
        .iter()
        .filter(|&&p| !wait_until(CEILING, || not_running(p)))
        .map(|&p| (p, cmdline(p)))
        .collect();
    assert!(left.is_empty(), "{what}: still running: {left:?}");
}

#[test]
fn login_runs_a_command() {
    let _w = watchdog("login_runs_a_command", LIMIT);
    let Some(server) = sshd_or_skip() else { return };
    let out = server
        .ssh_command()
        .arg("echo hi")
        .output()
        .expect("run ssh");
    assert!(
        out.status.success(),
        "{out:?}; sshd's log: {}",
        server.log()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi\n");
    assert!(out.stderr.is_empty(), "{out:?}");
    assert_eq!(
        server.destination(),
        format!(
            "{}@{}",
            String::from_utf8_lossy(&Command::new("id").arg("-un").output().unwrap().stdout).trim(),
            server.address()
        )
    );
}

#[test]
fn two_servers_at_once_on_their_own_addresses() {
    let _w = watchdog("two_servers_at_once_on_their_own_addresses", LIMIT);
    let Some(a) = sshd_or_skip() else { return };
    let Some(b) = sshd_or_skip() else { return };
    assert_ne!(a.address(), b.address());
    assert_ne!(a.dir(), b.dir());
    for server in [&a, &b] {
        // `client-address client-port server-address server-port`.
        let out = server
            .ssh_command()
            .arg("echo $SSH_CONNECTION")
            .output()
            .expect("run ssh");
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        let fields: Vec<&str> = text.split_whitespace().collect();
        assert_eq!(
            fields[2..],
            [server.address().to_string(), server.port().to_string()],
            "{text}"
        );
    }
    // Each server has a key of its own and the check is strict: `b`
    // reached with `a`'s known_hosts entry (`HostKeyAlias` makes ssh look
    // `b` up under `a`'s name) is refused as a changed key.
    let out = b
        .ssh_command_with(&[
            (
                "UserKnownHostsFile",
                &a.known_hosts_file().to_string_lossy(),
            ),
            ("HostKeyAlias", &format!("[{}]:{}", a.address(), a.port())),
        ])
        .arg("true")
        .output()
        .expect("run ssh");
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{out:?}"
    );
}

#[test]
fn a_missing_sshd_is_named_with_the_package() {
    let _w = watchdog("a_missing_sshd_is_named_with_the_package", LIMIT);
    let why = Sshd::start_program(Path::new("/nonexistent/sbin/sshd")).expect_err("no sshd");
    assert!(why.contains("/nonexistent/sbin/sshd"), "{why}");
    assert!(why.contains("install openssh-server"), "{why}");
}

#[test]
fn kill_with_sessions_ends_a_running_session() {
    let _w = watchdog("kill_with_sessions_ends_a_running_session", LIMIT);
    let Some(server) = sshd_or_skip() else { return };
    let (client, sleep) = remote_sleep(&server, &[]);
    let mut tree = server.descendants();
    assert!(tree.contains(&sleep));
    tree.push(server.pid());
    server.kill_with_sessions();
    let (status, stderr) = exit_of(client, "after kill_with_sessions");
    assert_eq!(status.code(), Some(255), "{stderr}");
    assert_all_gone(&tree, "after kill_with_sessions");
    // The listener was reaped, not left a zombie.
    assert!(!process_exists(server.pid()));
    assert!(server.descendants().is_empty());
}

#[test]
fn stop_all_silences_the_host() {
    let _w = watchdog("stop_all_silences_the_host", LIMIT);
    let Some(server) = sshd_or_skip() else { return };
    let keepalive = [("ServerAliveInterval", "1"), ("ServerAliveCountMax", "2")];
    let (client, sleep) = remote_sleep(&server, &keepalive);
    server.stop_all();
    let mut tree = server.descendants();
    assert!(tree.contains(&sleep));
    tree.push(server.pid());
    for &p in &tree {
        assert!(
            matches!(process_state(p), Some('T' | 't')),
            "{p} ({}) not stopped: {:?}",
            cmdline(p),
            process_state(p)
        );
    }
    // The keepalives go unanswered: the client gives up (after about 3 s).
    let (status, stderr) = exit_of(client, "after stop_all");
    assert_eq!(status.code(), Some(255), "{stderr}");
    server.continue_all();
    for &p in &tree {
        assert!(
            wait_until(CEILING, || !matches!(process_state(p), Some('T' | 't'))),
            "{p} ({}) still stopped after continue_all",
            cmdline(p)
        );
    }
    // Dropped while stopped: nothing is left either.
    server.stop_all();
    let dir = server.dir().to_owned();
    drop(server);
    assert_all_gone(&tree, "after dropping a stopped server");
    assert!(!dir.exists());
}

#[test]
fn drop_leaves_nothing() {
    let _w = watchdog("drop_leaves_nothing", LIMIT);
    let Some(server) = sshd_or_skip() else { return };
    let (client, _) = remote_sleep(&server, &[]);
    let mut tree = server.descendants();
    let listener = server.pid();
    tree.push(listener);
    let dir = server.dir().to_owned();
    drop(server);
    assert_all_gone(&tree, "after drop");
    assert!(!process_exists(listener), "the listener was not reaped");
    assert!(!dir.exists(), "{} left", dir.display());
    let (status, stderr) = exit_of(client, "after drop");
    assert_eq!(status.code(), Some(255), "{stderr}");
}

/// `Master running (pid=N)` from `ssh -O check`: N, or the reason.
fn master_pid(server: &Sshd, mux: &[(&str, &str)]) -> Result<u32, String> {
    let out = Command::new("ssh")
        .args(server.ssh_args(mux))
        .args(["-O", "check"])
        .arg(server.destination())
        .stdin(Stdio::null())
        .output()
        .expect("run ssh -O check");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    match text.split_once("Master running (pid=") {
        Some((_, rest)) if out.status.success() => rest
            .split_once(')')
            .and_then(|(n, _)| n.parse().ok())
            .ok_or(text),
        _ => Err(format!("{}: {text}", out.status)),
    }
}

/// The server's connections: the listener's children.
fn connections(server: &Sshd) -> Vec<u32> {
    server
        .descendants()
        .into_iter()
        .filter(|&p| parent(p) == Some(server.pid()))
        .collect()
}

#[test]
fn connection_sharing_reuses_the_master_and_ends_with_the_host() {
    let _w = watchdog(
        "connection_sharing_reuses_the_master_and_ends_with_the_host",
        LIMIT,
    );
    let Some(server) = sshd_or_skip() else { return };
    let path = format!("{}/%C", server.dir().display());
    let mux = [
        ("ControlMaster", "auto"),
        ("ControlPath", path.as_str()),
        ("ControlPersist", "30"),
    ];
    // The first client starts the master in the background; `output()`
    // reads stdout and stderr to their end, so this also checks that the
    // background master keeps neither pipe open.
    let first = server
        .ssh_command_with(&mux)
        .arg("echo first")
        .output()
        .expect("run ssh");
    assert!(first.status.success(), "{first:?}");
    assert_eq!(String::from_utf8_lossy(&first.stdout), "first\n");
    let master = master_pid(&server, &mux).expect("a master after the first ssh");
    assert_eq!(connections(&server).len(), 1);

    let second = server
        .ssh_command_with(&mux)
        .arg("echo second")
        .output()
        .expect("run ssh");
    assert!(second.status.success(), "{second:?}");
    assert_eq!(String::from_utf8_lossy(&second.stdout), "second\n");
    assert_eq!(master_pid(&server, &mux), Ok(master), "the same master");
    assert_eq!(
        connections(&server).len(),
        1,
        "the second ssh went through the master, not a connection of its own"
    );

    server.kill_with_sessions();
    assert!(
        wait_until(CEILING, || not_running(master)),
        "the master {master} outlived its host"
    );
    let after = master_pid(&server, &mux);
    assert!(after.is_err(), "{after:?}");
    // The master removed its socket.
    let sockets: Vec<_> = std::fs::read_dir(server.dir())
        .expect("read the server's directory")
        .flatten()
        .filter(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type().is_ok_and(|t| t.is_socket())
        })
        .map(|e| e.path())
        .collect();
    assert!(sockets.is_empty(), "{sockets:?}");
}

#[test]
fn a_command_that_outlives_its_client_stays_in_the_tree() {
    let _w = watchdog(
        "a_command_that_outlives_its_client_stays_in_the_tree",
        LIMIT,
    );
    let Some(server) = sshd_or_skip() else { return };
    let (mut client, sleep) = remote_sleep(&server, &[]);
    let connection = connections(&server);
    assert_eq!(connection.len(), 1);
    // The client dies: its connection's sshd processes end, the remote
    // `sleep` does not (no terminal: it gets no SIGHUP).
    client.kill().expect("kill ssh");
    client.wait().expect("reap ssh");
    assert_all_gone(&connection, "the connection's sshd after its client died");
    assert!(
        !not_running(sleep),
        "the remote sleep ended with its client"
    );
    // Reparented to the listener (a subreaper), not to init: still found.
    assert_eq!(parent(sleep), Some(server.pid()));
    assert_eq!(server.descendants(), vec![sleep]);
    drop(server);
    assert_all_gone(&[sleep], "after drop");
}
