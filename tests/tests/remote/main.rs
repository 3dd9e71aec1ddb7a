//! Remote workers, on real processes: through a stand-in launcher that
//! runs the worker command on this host, and through real `sshd` servers
//! started on this machine on loopback addresses (`procpool_tests::sshd`).
//!
//! One binary, one module per scenario:
//! - `harness`: the test servers themselves: a login and a command, two
//!   servers at once, a host that dies (`kill_with_sessions`) or goes
//!   silent (`stop_all`), nothing left after a drop, connection sharing
//!   through a `ControlMaster` and its end with the host;
//! - `launcher`: the relay, its reports and kills (deadline, cancel,
//!   terminate), the crash matrix on a remote worker, a lost launcher,
//!   another build refused, per-host restart limits (no ssh server
//!   needed);
//! - `ssh`: pools on ssh hosts: one shared connection, a remote segfault,
//!   a deadline's kill there, a host killed with its sessions, a host gone
//!   silent, shipping the binary, a pool killed outright, chaos across
//!   hosts;
//! - `slurm`: workers launched by `srun` on a one-node cluster
//!   (`scripts/slurm-single-node`).
//!
//! Without an OpenSSH server installed, each ssh test prints one
//! `SKIPPED:` line saying so and returns. Every test arms a watchdog that
//! turns a hang into a failure.

#[path = "../common/pools.rs"]
#[allow(dead_code)]
mod common;
mod harness;
mod launcher;
mod review;
mod review_stream_due;
mod slurm;
mod ssh;

/// Local workers beside remote ones start by exec.
pub(crate) const START: procpool::StartMethod = procpool::StartMethod::Exec;
