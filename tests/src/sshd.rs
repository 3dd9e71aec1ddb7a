//! Real OpenSSH servers for tests of remote workers, on this machine.
//!
//! [`Sshd::start`] runs `sshd -D -e -f <config>` as a child of the test
//! process, listening on a loopback address of its own (`127.0.P.N`, see
//! [`Sshd::address`]) and a free port, with a host key and a user key pair
//! made for it in a fresh temporary directory. A client reaches it with
//! [`Sshd::ssh_command`], or with its own `ssh` given
//! [`Sshd::ssh_options`]: key authentication as the current user, and a
//! `known_hosts` file that holds the server's key, so
//! `StrictHostKeyChecking yes` holds.
//!
//! Faults of a remote host are simulated on the server's whole process
//! tree (the listener, its per-connection `sshd` processes and whatever
//! the sessions started):
//! - [`Sshd::kill_with_sessions`]: the host dies (SIGKILL); clients see
//!   their connections closed;
//! - [`Sshd::stop_all`] / [`Sshd::continue_all`]: the host goes silent
//!   (SIGSTOP): no FIN, no RST, connections just stop answering.
//!
//! The listener is a child subreaper: a session's command that outlives
//! its connection (`sshd` does not kill a command without a terminal when
//! the client goes: the command sees EOF on stdin and a broken stdout, no
//! signal) is reparented to it, so it stays in the tree, is listed by
//! [`Sshd::descendants`] and is killed with the rest.
//!
//! Dropping an [`Sshd`] kills its whole tree, reaps the listener and
//! removes the temporary directory. The listener also carries
//! `PR_SET_PDEATHSIG`, so it dies with the test process even when no
//! destructor runs (a watchdog's `_exit`); the rest of its tree does not:
//! its connections end when their clients do, and sessions' commands when
//! they notice.
//!
//! Sessions run with `HOME` set to a directory of the server's own, so no
//! startup file of the real user's runs in them, and a host's per-user
//! cache (a shipped worker binary) is the server's.
//!
//! When `sshd` is not installed, [`Sshd::start`] says so; tests use
//! [`sshd_or_skip`], which prints one `SKIPPED:` line and lets the test
//! return early, never passing silently.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// Where Debian's `openssh-server` installs the server. `sshd` re-executes
/// itself for every connection, so it must be started by absolute path.
pub const SSHD_PATH: &str = "/usr/sbin/sshd";

/// How long [`Sshd::start`] waits for the server to accept connections
/// and for a first `ssh ... true` to succeed: a bound on a hang (a start
/// takes well under a second on an idle machine), not a timing assertion.
pub const START_LIMIT: Duration = Duration::from_secs(20);

/// How many ports [`Sshd::start`] tries when the one it picked was taken
/// between its check and `sshd`'s own bind.
const PORT_ATTEMPTS: u32 = 5;

/// One OpenSSH server, a child process of the test, with its own loopback
/// address, port, keys and temporary directory. See the [module
/// docs](self).
#[derive(Debug)]
pub struct Sshd {
    /// The listener (`sshd -D`); `None` once reaped.
    child: Mutex<Option<Child>>,
    pid: u32,
    address: Ipv4Addr,
    port: u16,
    user: String,
    dir: PathBuf,
}

impl Sshd {
    /// Starts an `sshd` from [`SSHD_PATH`] and waits (at most
    /// [`START_LIMIT`]) until a client logs in and runs `true`.
    ///
    /// # Errors
    ///
    /// Why no server could be started: `sshd`, `ssh` or `ssh-keygen` not
    /// installed (the message names the path looked at and the package to
    /// install), or the server not answering in time (the message holds
    /// its log).
    pub fn start() -> Result<Sshd, String> {
        Sshd::start_program(Path::new(SSHD_PATH))
    }

    /// [`Sshd::start`] with the server binary at `sshd` (an absolute
    /// path).
    ///
    /// # Errors
    ///
    /// As [`Sshd::start`].
    pub fn start_program(sshd: &Path) -> Result<Sshd, String> {
        if !sshd.is_file() {
            return Err(format!(
                "no OpenSSH server at {} (install openssh-server)",
                sshd.display()
            ));
        }
        ensure_privsep_dir()?;
        let dir = make_temp_dir()?;
        // From here on, a failure removes the directory.
        let fail = |dir: &Path, why: String| {
            let _ = std::fs::remove_dir_all(dir);
            Err(why)
        };
        if let Err(why) = make_keys(&dir) {
            return fail(&dir, why);
        }
        let address = next_address();
        let user = current_user();
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = match free_port(address) {
                Ok(port) => port,
                Err(why) => return fail(&dir, why),
            };
            match Sshd::launch(sshd, &dir, address, port, &user) {
                Ok(Some(server)) => return server.wait_ready(),
                // The port was taken meanwhile: another one.
                Ok(None) => last = read_log(&dir),
                Err(why) => return fail(&dir, why),
            }
        }
        fail(
            &dir,
            format!("sshd found no free port in {PORT_ATTEMPTS} attempts; its log: {last}"),
        )
    }

    /// Writes the configuration and `known_hosts` for `port` and starts
    /// the listener. `Ok(None)` when `sshd` exited because the port was in
    /// use.
    fn launch(
        sshd: &Path,
        dir: &Path,
        address: Ipv4Addr,
        port: u16,
        user: &str,
    ) -> Result<Option<Sshd>, String> {
        let d = dir.display();
        let config = format!(
            "# Written by procpool-tests' Sshd: one test server.\n\
             ListenAddress {address}:{port}\n\
             HostKey {d}/host_key\n\
             AuthorizedKeysFile {d}/authorized_keys\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             PidFile none\n\
             PrintMotd no\n\
             MaxSessions 100\n\
             MaxStartups 100\n\
             SetEnv HOME={d}/home\n\
             LogLevel ERROR\n"
        );
        write_file(&dir.join("sshd_config"), &config)?;
        // A home of the server's own: the sessions' shells read no startup
        // file of the real user's (one that is slow, or that a killed
        // session left waiting on a lock, would stall every command), and
        // what a test leaves there (a shipped binary) goes with the server.
        std::fs::create_dir_all(dir.join("home"))
            .map_err(|e| format!("cannot create {d}/home: {e}"))?;
        let host_key = std::fs::read_to_string(dir.join("host_key.pub"))
            .map_err(|e| format!("cannot read {d}/host_key.pub: {e}"))?;
        // `[host]:port keytype base64`, the comment dropped.
        let key: Vec<&str> = host_key.split_whitespace().take(2).collect();
        write_file(
            &dir.join("known_hosts"),
            &format!("[{address}]:{port} {}\n", key.join(" ")),
        )?;
        let log = std::fs::File::create(dir.join("sshd.log"))
            .map_err(|e| format!("cannot create {d}/sshd.log: {e}"))?;
        let mut command = Command::new(sshd);
        command
            .args(["-D", "-e", "-f"])
            .arg(dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = spawn_tied(command).map_err(|e| {
            format!(
                "cannot start {}: {e} (install openssh-server)",
                sshd.display()
            )
        })?;
        let server = Sshd {
            pid: child.id(),
            child: Mutex::new(Some(child)),
            address,
            port,
            user: user.to_owned(),
            dir: dir.to_owned(),
        };
        // Wait until it listens, or exits.
        let deadline = Instant::now() + START_LIMIT;
        let target = SocketAddr::V4(SocketAddrV4::new(address, port));
        loop {
            if TcpStream::connect_timeout(&target, Duration::from_secs(1)).is_ok() {
                return Ok(Some(server));
            }
            if let Some(status) = server.try_reap() {
                let log = read_log(dir);
                // Not dropped as a server: the directory is the caller's.
                std::mem::forget(server);
                if log.contains("Address already in use") {
                    return Ok(None);
                }
                return Err(format!(
                    "sshd exited ({status}) before listening; its log: {log}"
                ));
            }
            if Instant::now() > deadline {
                let log = read_log(dir);
                server.kill_with_sessions();
                std::mem::forget(server);
                return Err(format!(
                    "sshd did not listen on {address}:{port} within {START_LIMIT:?}; its log: {log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for a first `ssh ... true` to succeed.
    fn wait_ready(self) -> Result<Sshd, String> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let why = match run_bounded(self.ssh_command().arg("true"), left) {
                Ok(()) => return Ok(self),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                // Dropping the server kills it and removes the directory.
                return Err(format!(
                    "no `ssh {} true` succeeded within {START_LIMIT:?}: {why}; sshd's log: {}",
                    self.destination(),
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `user@address`: the current user at this server's address.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.address)
    }

    /// The server's loopback address, of the form `127.0.P.N`: `P` from
    /// this process's pid, `N` from 2 up for each server this process
    /// starts (distinct within the process; across processes the ports
    /// differ anyway).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The listener's pid (the `sshd -D` process, a child of this one).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The temporary directory of this server (keys, configuration, log);
    /// removed on drop. A good place for a test's `ControlPath`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The client's private key.
    pub fn identity_file(&self) -> PathBuf {
        self.dir.join("user_key")
    }

    /// The `known_hosts` file that holds this server's host key for
    /// `[address]:port`.
    pub fn known_hosts_file(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// What the server wrote to its stderr so far (`LogLevel ERROR`).
    pub fn log(&self) -> String {
        read_log(&self.dir)
    }

    /// The `ssh -o` options a client needs for this server, as
    /// `(keyword, value)` pairs: `Port`, `IdentityFile`,
    /// `IdentitiesOnly yes`, `UserKnownHostsFile` (this server's key),
    /// `GlobalKnownHostsFile /dev/null`, `StrictHostKeyChecking yes`,
    /// `UpdateHostKeys no` and `BatchMode yes`. A client should also
    /// ignore the user's configuration (`-F /dev/null`), as
    /// [`Sshd::ssh_command`] does.
    pub fn ssh_options(&self) -> Vec<(String, String)> {
        let path = |p: PathBuf| p.to_string_lossy().into_owned();
        [
            ("Port", self.port.to_string()),
            ("IdentityFile", path(self.identity_file())),
            ("IdentitiesOnly", "yes".to_owned()),
            ("UserKnownHostsFile", path(self.known_hosts_file())),
            ("GlobalKnownHostsFile", "/dev/null".to_owned()),
            ("StrictHostKeyChecking", "yes".to_owned()),
            ("UpdateHostKeys", "no".to_owned()),
            ("BatchMode", "yes".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// `ssh -F /dev/null -o K=V ... user@address`, ready for the remote
    /// command (`.arg("echo hi")`). Options must come before the
    /// destination: use [`Sshd::ssh_command_with`] to add some. Standard
    /// input is inherited, as for any `Command`, unless set
    /// (`Stdio::null()`) or `output()` is used.
    pub fn ssh_command(&self) -> Command {
        self.ssh_command_with(&[])
    }

    /// [`Sshd::ssh_command`] with `extra` options (`("ControlMaster",
    /// "auto")`, ...). They come first, so they win over this server's
    /// own (`ssh` keeps the first value it is given for an option).
    pub fn ssh_command_with(&self, extra: &[(&str, &str)]) -> Command {
        let mut command = Command::new("ssh");
        command.args(self.ssh_args(extra)).arg(self.destination());
        command
    }

    /// The arguments of `ssh` before the destination: `-F /dev/null`, then
    /// `-o K=V` for `extra` and for [`Sshd::ssh_options`]. For commands
    /// that take more arguments there (`ssh ... -O check destination`).
    pub fn ssh_args(&self, extra: &[(&str, &str)]) -> Vec<String> {
        let mut args = vec!["-F".to_owned(), "/dev/null".to_owned()];
        let own = self.ssh_options();
        let own = own.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in extra.iter().copied().chain(own) {
            args.push("-o".to_owned());
            args.push(format!("{k}={v}"));
        }
        args
    }

    /// The live descendants of the listener (not the listener itself):
    /// per-connection `sshd` processes, the sessions' shells and whatever
    /// they started. Zombies are left out. The listener is a child
    /// subreaper, so a session's process whose parent ended (a command
    /// that outlived its connection: `sshd` does not kill it when the
    /// client goes) is still found here.
    pub fn descendants(&self) -> Vec<u32> {
        tree(self.root())
            .into_iter()
            .filter(|&p| p != self.pid)
            .collect()
    }

    /// Stops (SIGSTOP) the listener and every descendant: a host gone
    /// silent. Returns once every one of them is stopped, and none is left
    /// to start another (the tree is walked again until a walk finds no new
    /// process). Connections stay open; nothing answers on them.
    pub fn stop_all(&self) {
        self.freeze();
    }

    /// Continues (SIGCONT) the listener and every descendant.
    pub fn continue_all(&self) {
        for pid in tree(self.root()) {
            signal(pid, libc::SIGCONT);
        }
    }

    /// Kills (SIGKILL) the listener and every descendant, and reaps the
    /// listener: a host that dies. The whole tree is stopped first, then
    /// killed, so none of it can start a process that escapes. Returns
    /// once every one of them is dead (at most a few seconds for a process
    /// in an uninterruptible sleep). Clients see their connections closed
    /// (`ssh` exits with 255). Later calls do nothing.
    pub fn kill_with_sessions(&self) {
        let frozen = self.freeze();
        for &pid in &frozen {
            signal(pid, libc::SIGKILL);
        }
        if frozen.contains(&self.pid) {
            self.reap();
        }
        // The others are not ours to reap: their parents died with them,
        // and init (or a subreaper above this process) reaps them.
        wait_for(frozen.iter(), |p| {
            matches!(state(p), None | Some('Z' | 'X'))
        });
    }

    /// Stops the tree (see [`Sshd::stop_all`]) and returns its live
    /// members, the listener included while it runs.
    fn freeze(&self) -> BTreeSet<u32> {
        let mut stopped = BTreeSet::new();
        loop {
            let members = tree(self.root());
            let new: Vec<u32> = members.difference(&stopped).copied().collect();
            if new.is_empty() {
                return members;
            }
            for &pid in &new {
                signal(pid, libc::SIGSTOP);
            }
            stopped.extend(new.iter().copied());
            // A signal is asynchronous: until the process is seen stopped
            // it may still fork, so the walk is repeated only then.
            wait_for(new.iter(), |p| {
                matches!(state(p), None | Some('T' | 't' | 'Z' | 'X'))
            });
        }
    }

    /// The listener's pid while it has not been reaped, else 0 (no
    /// tree).
    fn root(&self) -> u32 {
        match &*self.child.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(_) => self.pid,
            None => 0,
        }
    }

    /// Reaps the listener, if it exited.
    fn try_reap(&self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let status = child.as_mut()?.try_wait().ok()??;
        *child = None;
        Some(status)
    }

    /// Waits for the listener to exit (it was killed) and reaps it.
    fn reap(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = child.as_mut() {
            let _ = c.wait();
        }
        *child = None;
    }
}

impl Drop for Sshd {
    /// Continues, then kills the whole tree, reaps the listener and
    /// removes the temporary directory.
    fn drop(&mut self) {
        self.continue_all();
        self.kill_with_sessions();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts an [`Sshd`]; when that is impossible, writes one line
/// `SKIPPED: <test>: <reason>` to stderr (straight to file descriptor 2,
/// past libtest's capture) and returns `None`: the test then returns
/// early. A server that is installed but fails to start is a failure, not
/// a skip: this panics with the reason.
pub fn sshd_or_skip() -> Option<Sshd> {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if !Path::new(SSHD_PATH).is_file() {
        crate::write_to_stderr_fd(
            format!(
                "SKIPPED: {test}: needs an OpenSSH server at {SSHD_PATH} \
                 (install openssh-server)\n"
            )
            .as_bytes(),
        );
        return None;
    }
    match Sshd::start() {
        Ok(server) => Some(server),
        Err(why) => panic!("{test}: sshd is installed but did not start: {why}"),
    }
}

/// Makes sure `sshd`'s privilege separation directory exists (`sshd`
/// started as root refuses to run without it; a fresh container has none).
fn ensure_privsep_dir() -> Result<(), String> {
    let dir = Path::new("/run/sshd");
    // SAFETY: geteuid has no preconditions.
    if dir.is_dir() || unsafe { libc::geteuid() } != 0 {
        // A non-root sshd does not chroot there.
        return Ok(());
    }
    match std::fs::create_dir(dir) {
        Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot set the mode of /run/sshd: {e}")),
        // Created by another test meanwhile.
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("cannot create /run/sshd: {e}")),
    }
}

/// A fresh directory `procpool-sshd-<pid>-<n>` in the temporary
/// directory, mode 0700.
fn make_temp_dir() -> Result<PathBuf, String> {
    static N: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("procpool-sshd-{}-{n}", std::process::id()));
        match std::fs::create_dir(&dir) {
            Ok(()) => {
                let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
                return Ok(dir);
            }
            // Left by an earlier process of the same pid.
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
        }
    }
}

/// Makes the host key and the user's key pair (ed25519, no passphrase)
/// and authorizes the user's key.
fn make_keys(dir: &Path) -> Result<(), String> {
    for name in ["host_key", "user_key"] {
        let out = Command::new("ssh-keygen")
            .args([
                "-q",
                "-N",
                "",
                "-t",
                "ed25519",
                "-C",
                "procpool-tests",
                "-f",
            ])
            .arg(dir.join(name))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run ssh-keygen: {e} (install openssh-client)"))?;
        if !out.status.success() {
            return Err(format!(
                "ssh-keygen failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys"))
        .map_err(|e| format!("cannot write {}/authorized_keys: {e}", dir.display()))?;
    Ok(())
}

/// The next loopback address of this process: `127.0.P.N`, `P` the pid
/// modulo 250, `N` counting from 2 to 254 (then around again).
fn next_address() -> Ipv4Addr {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed) % 253;
    Ipv4Addr::new(127, 0, (std::process::id() % 250) as u8, 2 + n as u8)
}

/// A port free on `address` now (bound, then released for `sshd`).
fn free_port(address: Ipv4Addr) -> Result<u16, String> {
    let listener = TcpListener::bind((address, 0))
        .map_err(|e| format!("cannot bind a port on {address}: {e}"))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| format!("cannot read the port bound on {address}: {e}"))
}

/// The current user's name, from the password database (else `$USER`,
/// else `root`).
fn current_user() -> String {
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd (null pointers, zero ids) is a valid value
    // for getpwuid_r to fill in.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live local of the right type; buf is
    // writable for the length passed; the strings written into it are read
    // below while buf lives.
    let rc = unsafe {
        libc::getpwuid_r(
            uid,
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        )
    };
    if rc == 0 && !found.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded: pw_name is a NUL-terminated string
        // inside buf.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return name.to_string_lossy().into_owned();
    }
    std::env::var("USER").unwrap_or_else(|_| "root".to_owned())
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn read_log(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
    let log = log.trim();
    if log.is_empty() {
        "(empty)".to_owned()
    } else {
        log.to_owned()
    }
}

/// Runs `command` (stdin and stdout null, stderr kept) until it exits or
/// `limit` passes (then kills it); `Err` with the reason unless it exited
/// with 0.
fn run_bounded(command: &mut Command, limit: Duration) -> Result<(), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run ssh: {e} (install openssh-client)"))?;
    let deadline = Instant::now() + limit;
    // stderr is read on a thread of its own: a pipe is never left full.
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(()),
        Some(s) => Err(format!("ssh exited ({s}): {}", text.trim())),
        None => Err(format!(
            "ssh still running after {limit:?}: {}",
            text.trim()
        )),
    }
}

/// The live (not zombie) processes of `root`'s tree: `root` itself and
/// its descendants, found through `/proc/<pid>/task/<tid>/children`.
/// Empty for `root` 0. Exact only while the tree cannot change (stopped):
/// otherwise a snapshot.
fn tree(root: u32) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let mut todo = if root == 0 { vec![] } else { vec![root] };
    while let Some(pid) = todo.pop() {
        if matches!(state(pid), None | Some('Z' | 'X')) || !found.insert(pid) {
            continue;
        }
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"));
        for task in tasks.into_iter().flatten().flatten() {
            let children = std::fs::read_to_string(task.path().join("children"));
            todo.extend(
                children
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|c| c.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Waits (at most 5 s: a process in an uninterruptible sleep acts on a
/// signal only when the sleep ends) until `done` holds for every pid.
fn wait_for<'a>(pids: impl Iterator<Item = &'a u32> + Clone, done: impl Fn(u32) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !pids.clone().all(|&p| done(p)) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The state letter of `pid`, if it exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

fn signal(pid: u32, signal: i32) {
    if pid == 0 {
        return;
    }
    // SAFETY: kill only sends a signal, to a process of the server's tree
    // (found alive by the walk just before).
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns the listener `command` as a child subreaper (kept across
/// `execve`: orphans of its tree are reparented to it, not to init, so
/// they stay in the tree and `sshd` reaps them) with
/// `PR_SET_PDEATHSIG(SIGKILL)`, from a thread that lives as long as the
/// process: the death signal fires when the spawning *thread* ends, so
/// spawning from a test's thread would kill the server at the end of that
/// test, even one meant to be shared.
fn spawn_tied(command: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("procpool-tests-sshd-spawner".to_owned())
            .spawn(move || {
                for (mut command, reply) in rx {
                    let parent = std::process::id() as libc::pid_t;
                    // SAFETY: the closure runs between fork and exec and
                    // calls only async-signal-safe functions (prctl,
                    // getppid).
                    unsafe {
                        command.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0
                                || libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) != 0
                            {
                                return Err(std::io::Error::last_os_error());
                            }
                            // The parent died before the prctl took effect.
                            if libc::getppid() != parent {
                                libc::_exit(1);
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the sshd spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((command, tx))
        .map_err(|_| std::io::Error::other("the sshd spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the sshd spawner thread is gone"))?
}
