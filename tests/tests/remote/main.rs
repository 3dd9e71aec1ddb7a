//! Remote workers, on real processes: through a stand-in launcher that
//! runs the worker command on this host, and through real `sshd`
//! instances on loopback addresses.
//!
//! - `launcher`: the relay, its reports and kills, lost launchers, builds,
//!   per-host restart limits (no ssh server needed).

#[path = "../common/pools.rs"]
#[allow(dead_code)]
mod common;
mod launcher;

/// Local workers beside remote ones start by exec.
pub(crate) const START: procpool::StartMethod = procpool::StartMethod::Exec;
