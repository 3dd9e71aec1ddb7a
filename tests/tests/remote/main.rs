//! Remote workers reached through OpenSSH, on real `sshd` servers started
//! on this machine (`procpool_tests::sshd`).
//!
//! One binary, one module per scenario:
//! - `harness`: the test servers themselves: a login and a command, two
//!   servers at once, a host that dies (`kill_with_sessions`) or goes
//!   silent (`stop_all`), nothing left after a drop, connection sharing
//!   through a `ControlMaster` and its end with the host.
//!
//! Without an OpenSSH server installed, each test prints one `SKIPPED:`
//! line saying so and returns. Every test arms a watchdog that turns a
//! hang into a failure.

mod harness;
