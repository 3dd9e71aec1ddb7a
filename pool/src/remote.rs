//! Workers on other hosts, reached through launchers that already exist:
//! OpenSSH ([`Ssh`]) and any command prefix that runs a command elsewhere
//! with its stdin and stdout connected, such as Slurm's `srun`
//! ([`Launcher`]).
//!
//! The pool runs `<launcher> env PROCPOOL_…=… <program>` and speaks the
//! protocol over the launcher's stdin and stdout. On the far side the
//! program starts as a **relay** (`relay.rs`): it checks that it is the
//! pool's build, exec's the real worker with the same clean spawn as a
//! local one, passes frames through, kills the worker's tree when the pool
//! asks (a deadline, a cancel, `terminate`) or when the connection goes,
//! and reports how its worker ended. So a remote segfault reads "signal 11
//! on node1", and nothing survives on the host after the pool.
//!
//! What stays local: shared memory (remote workers get every payload on
//! the stream) and the direct lane (`apply` to a remote worker goes
//! through the dispatcher's loop).
//!
//! # ssh
//!
//! ssh runs with `BatchMode=yes` (never a prompt), keep-alives
//! (`ServerAliveInterval`, three missed answers and the connection is
//! given up), and its own connection sharing (`ControlMaster=auto`,
//! `ControlPersist`): the first worker on a host opens the connection, the
//! others (and the next pool, within `ControlPersist`) ride on it. Options
//! given with [`Ssh::option`] come first and so win over these defaults
//! (ssh takes the first value it sees for an option).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use crate::supervisor::Limit;

/// How long an ssh connection keeps serving new sessions after its last
/// one ended (`ControlPersist`): the next pool within it starts its
/// workers without a new TCP connection or key exchange.
const CONTROL_PERSIST_SECS: u64 = 60;

/// How long a silent host may stay silent before it is given up, unless
/// [`Ssh::keepalive`] says otherwise.
const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(6);

/// Workers on a host reached through OpenSSH; given to
/// [`Builder::remote`](crate::Builder::remote).
///
/// ```no_run
/// use std::time::Duration;
/// use procpool::{Pool, Ssh};
/// # fn square(x: u64) -> u64 { x * x }
/// # fn main() -> Result<(), procpool::Error> {
/// let pool = Pool::builder()
///     .workers(2) // local ones
///     .remote(Ssh::host("alice@node1").workers(8).ship_binary(true))
///     .remote(Ssh::host("node2").workers(4).keepalive(Duration::from_secs(3)))
///     .build()?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Ssh {
    destination: String,
    options: Vec<(String, String)>,
    workers: usize,
    keepalive: Duration,
    ship_binary: bool,
    program: Option<PathBuf>,
    restart_limit: Limit,
    control_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    /// This ssh takes a preference for AES-GCM (`Ciphers=^…`, OpenSSH
    /// 8.2 and later): checked once, in `Remote::prepare`.
    prefer_aes: bool,
}

/// The ciphers put first, where the client understands it: AES-GCM runs on
/// the hardware AES of x86 and ARM processors, and carried `map` through
/// ssh at 1.6 times the rate of ssh's own first choice
/// (chacha20-poly1305) here. The server still picks from the whole list.
const PREFERRED_CIPHERS: &str = "^aes128-gcm@openssh.com,aes256-gcm@openssh.com";

impl Ssh {
    /// A host as ssh names it: `node1`, `alice@node1`, or a `Host` of the
    /// user's ssh config.
    pub fn host(destination: impl Into<String>) -> Self {
        Self {
            destination: destination.into(),
            options: Vec::new(),
            workers: 1,
            keepalive: DEFAULT_KEEPALIVE,
            ship_binary: false,
            program: None,
            restart_limit: DEFAULT_HOST_LIMIT,
            control_dir: None,
            config: None,
            prefer_aes: false,
        }
    }

    /// The ssh configuration file to read instead of the user's
    /// (`ssh -F`; `/dev/null` for none).
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config = Some(path.into());
        self
    }

    /// Workers on this host (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// An ssh option (`-o key=value`), such as `Port`, `IdentityFile` or
    /// `UserKnownHostsFile`. It wins over the pool's own defaults.
    pub fn option(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.options.push((key.into(), value.into()));
        self
    }

    /// How long a host may stay silent before it is given up (default
    /// 6 s, whole seconds, at least 1): a host whose processes stopped or
    /// whose network went (no FIN, no RST) is noticed within it, and the
    /// tasks running there fail with an error naming it. ssh asks every
    /// third of it (`ServerAliveInterval`) and gives up after two
    /// unanswered asks (`ServerAliveCountMax`); connecting may take as
    /// long (`ConnectTimeout`).
    pub fn keepalive(mut self, timeout: Duration) -> Self {
        self.keepalive = timeout;
        self
    }

    /// Copy the worker program to the host (once per build: a cache
    /// directory per user, `~/.cache/procpool/<content hash>/`) and run it
    /// from there; a host that has the build already gets nothing copied.
    pub fn ship_binary(mut self, on: bool) -> Self {
        self.ship_binary = on;
        self
    }

    /// The worker program's path on the host (default: the same path as
    /// here). Ignored with [`ship_binary`](Self::ship_binary).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// The host's restart limit: more than `max` failed starts within
    /// `window` and the host is dropped (logged) while the other hosts and
    /// the local workers go on. Default: 5 within 60 s.
    pub fn restart_limit(mut self, max: u32, window: Duration) -> Self {
        self.restart_limit = Limit { max, window };
        self
    }

    /// Where ssh keeps its shared connections' sockets (default:
    /// `$XDG_RUNTIME_DIR/procpool-ssh`, else `/tmp/procpool-ssh-<uid>`).
    pub fn control_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.control_dir = Some(dir.into());
        self
    }

    /// The `ssh` command with every option and the destination, ready for
    /// a remote command.
    fn command(&self) -> io::Result<Command> {
        let dir = match &self.control_dir {
            Some(d) => d.clone(),
            None => default_control_dir(),
        };
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        // ssh gives up after (count + 1) intervals without an answer.
        let secs = self.keepalive.as_secs().max(1);
        let interval = (secs / 3).max(1);
        let count = (secs / interval).saturating_sub(1).max(1);
        let mut cmd = Command::new("ssh");
        cmd.arg("-T");
        if let Some(config) = &self.config {
            cmd.arg("-F").arg(config);
        }
        let ours = [
            ("BatchMode", "yes".to_owned()),
            ("ServerAliveInterval", interval.to_string()),
            ("ServerAliveCountMax", count.to_string()),
            ("ConnectTimeout", secs.to_string()),
            ("ControlMaster", "auto".to_owned()),
            ("ControlPath", format!("{}/%C", dir.display())),
            ("ControlPersist", CONTROL_PERSIST_SECS.to_string()),
        ];
        let aes = self
            .prefer_aes
            .then(|| ("Ciphers", PREFERRED_CIPHERS.to_owned()));
        for (k, v) in self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), v.clone()))
            .chain(aes)
            .chain(ours)
        {
            cmd.arg("-o").arg(format!("{k}={v}"));
        }
        cmd.arg("--").arg(&self.destination);
        Ok(cmd)
    }

    /// Whether this ssh takes [`PREFERRED_CIPHERS`]: `ssh -G` parses the
    /// options and prints the result, without connecting.
    fn takes_aes_preference(&self) -> bool {
        let mut probe = Command::new("ssh");
        probe.arg("-G");
        if let Some(config) = &self.config {
            probe.arg("-F").arg(config);
        }
        for (k, v) in &self.options {
            probe.arg("-o").arg(format!("{k}={v}"));
        }
        probe
            .arg("-o")
            .arg(format!("Ciphers={PREFERRED_CIPHERS}"))
            .arg("--")
            .arg(&self.destination)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Workers started through a command prefix that runs a command elsewhere
/// with its stdin and stdout connected, such as Slurm's
/// `srun -u --nodes=1 --ntasks=1 --` (`-u`: without it slurmstepd holds the
/// worker's output until a newline); given to
/// [`Builder::remote`](crate::Builder::remote).
///
/// The pool asks the launcher to end (SIGTERM, to it alone) when its
/// worker must die and its relay has not said it did: ssh then closes the
/// connection and srun cancels the step, and either ends the worker there.
///
/// The worker command follows the prefix as separate arguments:
/// `env PROCPOOL_…=… <program> <args>`. The launcher must pass stdin and
/// stdout through unchanged and print nothing of its own on stdout.
#[derive(Debug, Clone)]
pub struct Launcher {
    prefix: Vec<OsString>,
    name: Option<String>,
    workers: usize,
    program: Option<PathBuf>,
    restart_limit: Limit,
}

impl Launcher {
    /// A launcher given as its command and arguments, the worker command
    /// to follow.
    pub fn command<S: Into<OsString>>(prefix: impl IntoIterator<Item = S>) -> Self {
        Self {
            prefix: prefix.into_iter().map(Into::into).collect(),
            name: None,
            workers: 1,
            program: None,
            restart_limit: DEFAULT_HOST_LIMIT,
        }
    }

    /// The name its workers go by in errors and logs (default: the
    /// launcher's command line).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Workers started through it (default 1).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The worker program's path where the launcher runs it (default: the
    /// same path as here).
    pub fn program(mut self, path: impl Into<PathBuf>) -> Self {
        self.program = Some(path.into());
        self
    }

    /// Its restart limit, as [`Ssh::restart_limit`].
    pub fn restart_limit(mut self, max: u32, window: Duration) -> Self {
        self.restart_limit = Limit { max, window };
        self
    }
}

/// Remote workers: an [`Ssh`] host or a [`Launcher`]. [`Builder::remote`]
/// takes either.
///
/// [`Builder::remote`]: crate::Builder::remote
#[derive(Debug, Clone)]
pub struct Remote(How);

#[derive(Debug, Clone)]
enum How {
    Ssh(Ssh),
    Launcher(Launcher),
}

impl From<Ssh> for Remote {
    fn from(s: Ssh) -> Self {
        Remote(How::Ssh(s))
    }
}

impl From<Launcher> for Remote {
    fn from(l: Launcher) -> Self {
        Remote(How::Launcher(l))
    }
}

const DEFAULT_HOST_LIMIT: Limit = Limit {
    max: 5,
    window: Duration::from_secs(60),
};

impl Remote {
    /// Workers it asks for.
    pub(crate) fn workers(&self) -> usize {
        match &self.0 {
            How::Ssh(s) => s.workers,
            How::Launcher(l) => l.workers,
        }
    }

    pub(crate) fn restart_limit(&self) -> Limit {
        match &self.0 {
            How::Ssh(s) => s.restart_limit,
            How::Launcher(l) => l.restart_limit,
        }
    }

    /// Its name in errors: the ssh destination, or the launcher's.
    pub(crate) fn name(&self) -> String {
        match &self.0 {
            How::Ssh(s) => s.destination.clone(),
            How::Launcher(l) => l.name.clone().unwrap_or_else(|| {
                l.prefix
                    .iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            }),
        }
    }

    /// Whether the first worker should open the connection before the
    /// others start (ssh's shared connection).
    pub(crate) fn shares_connection(&self) -> bool {
        matches!(self.0, How::Ssh(_))
    }

    /// Readies the host for `local_program` (copies it when asked) and
    /// returns the site its workers start from.
    pub(crate) fn prepare(&self, local_program: &Path) -> Result<Site, Error> {
        let name: Arc<str> = self.name().into();
        let at = |what: &str, e: io::Error| Error::startup(format!("host `{name}`: {what}: {e}"));
        let build = build_hash(local_program).ok();
        let (program, runner) = match &self.0 {
            How::Ssh(s) => {
                let mut s = s.clone();
                s.prefer_aes = s.takes_aes_preference();
                let s = &s;
                let program = if s.ship_binary {
                    let hash = build.clone().ok_or_else(|| {
                        Error::startup(format!(
                            "host `{name}`: cannot read `{}` to ship it",
                            local_program.display()
                        ))
                    })?;
                    ship(s, local_program, &hash).map_err(|e| at("shipping the worker", e))?
                } else {
                    s.program
                        .clone()
                        .unwrap_or_else(|| local_program.to_owned())
                };
                (program, Runner::Ssh(s.clone()))
            }
            How::Launcher(l) => (
                l.program
                    .clone()
                    .unwrap_or_else(|| local_program.to_owned()),
                Runner::Prefix(l.prefix.clone()),
            ),
        };
        Ok(Site {
            name,
            program,
            build,
            runner,
        })
    }
}

/// A prepared remote site: how to start one of its workers.
#[derive(Debug, Clone)]
pub(crate) struct Site {
    pub(crate) name: Arc<str>,
    /// The program's path on the host.
    program: PathBuf,
    /// The pool's build of the program (a content hash), which the relay
    /// checks against its own before it starts the worker.
    build: Option<String>,
    runner: Runner,
}

#[derive(Debug, Clone)]
enum Runner {
    Ssh(Ssh),
    Prefix(Vec<OsString>),
}

impl Site {
    /// The program's path on the host.
    pub(crate) fn program(&self) -> &Path {
        &self.program
    }

    /// The local command that starts one relay (and so one worker) on the
    /// host, with `env` setting `vars` there, then `args` for the program.
    pub(crate) fn command(
        &self,
        vars: &[(&str, String)],
        args: &[OsString],
    ) -> io::Result<Command> {
        let mut words: Vec<OsString> = vec!["env".into()];
        words.extend(vars.iter().map(|(k, v)| OsString::from(format!("{k}={v}"))));
        if let Some(b) = &self.build {
            words.push(format!("{}={b}", crate::worker::BUILD_ENV).into());
        }
        words.push(self.program.clone().into_os_string());
        words.extend(args.iter().cloned());
        match &self.runner {
            Runner::Ssh(s) => {
                let mut cmd = s.command()?;
                cmd.arg(shell_line("exec", &words));
                Ok(cmd)
            }
            Runner::Prefix(prefix) => {
                let (first, rest) = prefix
                    .split_first()
                    .ok_or_else(|| io::Error::other("the launcher's command is empty"))?;
                let mut cmd = Command::new(first);
                cmd.args(rest).args(words);
                Ok(cmd)
            }
        }
    }
}

/// `lead` then each word quoted for a POSIX shell, as ssh's remote command
/// line (ssh hands it to the user's shell).
fn shell_line(lead: &str, words: &[OsString]) -> OsString {
    let mut line = lead.as_bytes().to_vec();
    for w in words {
        line.push(b' ');
        line.extend_from_slice(&shell_quote(w));
    }
    OsString::from_vec(line)
}

/// One word quoted for a POSIX shell: inside single quotes, each `'`
/// written as `'\''`.
fn shell_quote(word: &OsStr) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in word.as_bytes() {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

fn default_control_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("procpool-ssh"),
        _ => {
            // This process's own uid, as `/proc/self` is owned by it.
            let uid = std::os::unix::fs::MetadataExt::uid(
                &std::fs::metadata("/proc/self").expect("/proc is mounted"),
            );
            PathBuf::from(format!("/tmp/procpool-ssh-{uid}"))
        }
    }
}

/// The content hash that names a build of a program: BLAKE3 of the file,
/// as hex.
pub(crate) fn build_hash(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    let mut file = std::fs::File::open(path)?;
    let mut buf = vec![0; 1 << 20];
    loop {
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(hasher.finalize().to_hex().to_string())
}

/// Copies `program` to the host's cache, unless the build is there
/// already; returns its path there. One ssh command asks, one copies (into
/// a temporary name, renamed when whole: a copy cut short is never run).
fn ship(ssh: &Ssh, program: &Path, hash: &str) -> io::Result<PathBuf> {
    let name = program
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "worker".into());
    // Under the remote user's home: `~` is the shell's, so the path is
    // spelled for the shell and read back from it.
    let dir = format!("\"${{XDG_CACHE_HOME:-$HOME/.cache}}\"/procpool/{hash}");
    let file = format!(
        "{dir}/{}",
        String::from_utf8_lossy(&shell_quote(name.as_ref()))
    );
    let ask =
        format!("f={file}; if [ -x \"$f\" ]; then echo have; else echo need; fi; echo \"$f\"");
    let out = run_ssh(ssh, &ask, None)?;
    let mut lines = out.lines();
    let state = lines.next().unwrap_or_default().to_owned();
    let path = lines
        .next()
        .filter(|p| p.starts_with('/'))
        .ok_or_else(|| io::Error::other(format!("the host answered {out:?}")))?
        .to_owned();
    if state == "need" {
        let copy = format!(
            "set -e; mkdir -p {dir}; chmod 700 {dir}; t={file}.$$.part; cat > \"$t\"; \
             chmod 700 \"$t\"; mv -f \"$t\" {file}"
        );
        let bytes = std::fs::read(program)?;
        run_ssh(ssh, &copy, Some(&bytes))?;
        log::info!(
            "procpool: copied {} ({} bytes) to {}:{path}",
            program.display(),
            bytes.len(),
            ssh.destination
        );
    } else {
        log::debug!("procpool: {} has build {hash} already", ssh.destination);
    }
    Ok(PathBuf::from(path))
}

/// Runs `line` on the host, `input` as its stdin; its stdout, or an error
/// with its stderr.
fn run_ssh(ssh: &Ssh, line: &str, input: Option<&[u8]>) -> io::Result<String> {
    let mut cmd = ssh.command()?;
    cmd.arg(line)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let (Some(bytes), Some(mut stdin)) = (input, child.stdin.take()) {
        // A writer thread would be needed only if the host talked back
        // while reading: `cat` does not. SIGPIPE is blocked meanwhile: a
        // copy that fails there is an error here, never this process's
        // death (its SIGPIPE may be at the default action).
        let sigpipe = crate::sys::SigpipeBlocked::new();
        let written = stdin.write_all(bytes);
        if written.is_err() {
            sigpipe.consume();
        }
        drop(sigpipe);
        if let Err(e) = written {
            let out = child.wait_with_output()?;
            return Err(io::Error::other(format!(
                "copying to {} failed ({e}): {}",
                ssh.destination,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`ssh {} …` ended with {}: {}",
            ssh.destination,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_the_remote_shell() {
        let line = shell_line(
            "exec",
            &[
                "env".into(),
                "A=b c".into(),
                "/p/it's".into(),
                "$HOME".into(),
            ],
        );
        assert_eq!(
            line.to_str().unwrap(),
            r#"exec 'env' 'A=b c' '/p/it'\''s' '$HOME'"#
        );
        // And the shell gives the words back unchanged.
        let out = Command::new("sh")
            .arg("-c")
            .arg(shell_line(
                "printf '%s\\n'",
                &["A=b c".into(), "it's".into(), "$HOME `x`".into()],
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "A=b c\nit's\n$HOME `x`\n"
        );
    }

    #[test]
    fn user_options_come_before_the_pools_so_they_win() {
        let ssh = Ssh::host("alice@node1")
            .option("ControlPersist", "5")
            .control_dir(std::env::temp_dir().join(format!("pp-ctl-{}", std::process::id())));
        let cmd = ssh.command().unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let user = args.iter().position(|a| a == "ControlPersist=5").unwrap();
        let ours = args.iter().position(|a| a == "ControlPersist=60").unwrap();
        assert!(user < ours, "{args:?}");
        assert!(args.contains(&"BatchMode=yes".to_owned()), "{args:?}");
        assert_eq!(args.last().unwrap(), "alice@node1");
        let _ = std::fs::remove_dir(ssh.control_dir.unwrap());
    }

    #[test]
    fn aes_gcm_is_preferred_where_ssh_takes_it_and_a_users_ciphers_win() {
        let dir = std::env::temp_dir().join(format!("pp-aes-{}", std::process::id()));
        let args = |ssh: &Ssh| -> Vec<String> {
            ssh.command()
                .unwrap()
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect()
        };
        let mut ssh = Ssh::host("h").control_dir(&dir);
        // This machine's OpenSSH takes it (`ssh -G` parses, connects to
        // nothing).
        assert!(ssh.takes_aes_preference());
        ssh.prefer_aes = true;
        let ours = format!("Ciphers={PREFERRED_CIPHERS}");
        assert!(args(&ssh).contains(&ours));
        let mut theirs = Ssh::host("h")
            .control_dir(&dir)
            .option("Ciphers", "chacha20-poly1305@openssh.com");
        theirs.prefer_aes = true;
        let a = args(&theirs);
        let first = a.iter().position(|x| x.starts_with("Ciphers=")).unwrap();
        assert_eq!(a[first], "Ciphers=chacha20-poly1305@openssh.com", "{a:?}");
        // A spec ssh refuses is never used.
        let bad = Ssh::host("h").option("Ciphers", "^no-such-cipher");
        assert!(!bad.takes_aes_preference());
        let _ = std::fs::remove_dir(dir);
    }

    #[test]
    fn a_keepalive_is_the_longest_a_silent_host_goes_unnoticed() {
        let alive = |secs: u64| {
            let cmd = Ssh::host("h")
                .keepalive(Duration::from_secs(secs))
                .control_dir(std::env::temp_dir().join(format!("pp-ka-{}", std::process::id())))
                .command()
                .unwrap();
            let args: Vec<String> = cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let get = |k: &str| -> u64 {
                let a = args
                    .iter()
                    .find_map(|a| a.strip_prefix(&format!("{k}=")))
                    .unwrap();
                a.parse().unwrap()
            };
            (get("ServerAliveInterval"), get("ServerAliveCountMax"))
        };
        for secs in 1..=30 {
            let (interval, count) = alive(secs);
            // ssh gives up after count + 1 unanswered intervals.
            let noticed = interval * (count + 1);
            assert!(
                noticed <= secs.max(2),
                "{secs} s: {interval} × ({count} + 1)"
            );
            assert!(
                noticed * 3 >= secs * 2,
                "{secs} s: {interval} × ({count} + 1)"
            );
            assert!(interval >= 1 && count >= 1);
        }
        assert_eq!(alive(6), (2, 2));
        let _ =
            std::fs::remove_dir(std::env::temp_dir().join(format!("pp-ka-{}", std::process::id())));
    }

    #[test]
    fn the_build_hash_is_of_the_content() {
        let dir = std::env::temp_dir();
        let a = dir.join(format!("pp-hash-a-{}", std::process::id()));
        let b = dir.join(format!("pp-hash-b-{}", std::process::id()));
        std::fs::write(&a, b"one build").unwrap();
        std::fs::write(&b, b"one build").unwrap();
        assert_eq!(build_hash(&a).unwrap(), build_hash(&b).unwrap());
        std::fs::write(&b, b"another build").unwrap();
        assert_ne!(build_hash(&a).unwrap(), build_hash(&b).unwrap());
        assert_eq!(build_hash(&a).unwrap().len(), 64);
        let _ = (std::fs::remove_file(a), std::fs::remove_file(b));
    }
}
