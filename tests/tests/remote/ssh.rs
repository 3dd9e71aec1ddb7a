//! Remote workers through real `sshd` instances on loopback addresses
//! (see `procpool_tests::sshd`): connection sharing, exact statuses and
//! kills on the host, a host killed with its sessions, a host gone silent,
//! shipping the binary, a pool killed outright, and a chaos soak across
//! hosts. Without `sshd` each test prints one `SKIPPED:` line and returns.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use procpool::{Pool, Ssh};
use procpool_tests::sshd::{Sshd, sshd_or_skip};
use procpool_tests::{
    Chaos, chaos, exe_path, init_store, pid, record_slowly, record_then_sleep, recorded, segfault,
    square, temp_path, wait_until, watchdog,
};

use crate::common::{FAULT_WORKER, LIMIT};

/// Workers on `sshd`'s host: its options, no user configuration, and a
/// connection-sharing socket in its directory.
fn host(sshd: &Sshd) -> Ssh {
    let mut ssh = Ssh::host(sshd.destination())
        .config_file("/dev/null")
        .control_dir(sshd.dir().join("ctl"));
    for (k, v) in sshd.ssh_options() {
        ssh = ssh.option(k, v);
    }
    ssh
}

fn ssh_pool(sshd: &Sshd, n: usize) -> procpool::Builder {
    Pool::builder()
        .workers(0)
        .worker_program(FAULT_WORKER)
        .remote(host(sshd).workers(n))
}

/// Processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut kids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<u32>().ok());
        if ppid == Some(parent) && !procpool_tests::not_running(pid) {
            kids.push(pid);
        }
    }
    kids
}

/// The worker processes on `sshd`'s host: fault workers whose parent is a
/// fault worker too (their relay).
fn remote_workers(sshd: &Sshd) -> Vec<u32> {
    let exe = |p: u32| std::fs::read_link(format!("/proc/{p}/exe")).ok();
    let ours = std::fs::canonicalize(FAULT_WORKER).ok();
    let tree = sshd.descendants();
    tree.iter()
        .copied()
        .filter(|&p| exe(p) == ours && children_of(p).is_empty())
        .filter(|&p| {
            tree.iter()
                .any(|&q| exe(q) == ours && children_of(q).contains(&p))
        })
        .collect()
}

/// Fault-worker processes (relays and workers) left on `sshd`'s host.
fn left_on_host(sshd: &Sshd) -> Vec<u32> {
    let ours = std::fs::canonicalize(FAULT_WORKER).ok();
    sshd.descendants()
        .into_iter()
        .filter(|p| std::fs::read_link(format!("/proc/{p}/exe")).ok() == ours)
        .collect()
}

#[test]
fn workers_on_an_ssh_host_share_one_connection_and_serve_everything() {
    let _w = watchdog("workers_on_an_ssh_host_share_one_connection", LIMIT);
    let Some(sshd) = sshd_or_skip() else { return };
    let pool = ssh_pool(&sshd, 4).build().unwrap();
    assert_eq!(pool.workers(), 4);
    let v: Vec<u64> = pool.map(square, 0..20_000u64).unwrap();
    assert_eq!(v, (0..20_000u64).map(|x| x * x).collect::<Vec<_>>());
    assert_eq!(pool.apply(square, 12).unwrap(), 144);
    // Four workers, one TCP connection: the listener has one
    // per-connection child.
    assert_eq!(children_of(sshd.pid()).len(), 1, "{:?}", sshd.descendants());
    pool.close();
    pool.join();
    // The next pool rides on the connection that persists.
    let pool = ssh_pool(&sshd, 4).build().unwrap();
    assert_eq!(pool.apply(square, 3).unwrap(), 9);
    assert_eq!(children_of(sshd.pid()).len(), 1, "{:?}", sshd.descendants());
    drop(pool);
    assert!(
        wait_until(LIMIT, || left_on_host(&sshd).is_empty()),
        "left on the host: {:?}",
        left_on_host(&sshd)
    );
}

#[test]
fn a_segfault_on_an_ssh_host_reads_as_signal_11_there() {
    let _w = watchdog("a_segfault_on_an_ssh_host_reads_as_signal_11_there", LIMIT);
    let Some(sshd) = sshd_or_skip() else { return };
    let pool = ssh_pool(&sshd, 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let err = pool.apply(segfault, ()).unwrap_err();
    assert!(err.is_worker_died(), "{err}");
    assert_eq!(err.exit(), Some(procpool::Exit::Signal(11)), "{err}");
    assert_eq!(err.host(), Some(sshd.destination().as_str()), "{err}");
    assert_eq!(err.worker_pid(), Some(worker), "{err}");
    assert_eq!(pool.apply(square, 4).unwrap(), 16);
}

#[test]
fn a_deadline_on_an_ssh_host_kills_the_task_and_its_grandchild_there() {
    let _w = watchdog("a_deadline_on_an_ssh_host_kills_the_task", LIMIT);
    let Some(sshd) = sshd_or_skip() else { return };
    let pool = ssh_pool(&sshd, 1).build().unwrap();
    let worker = pool.apply(pid, ()).unwrap();
    let pidfile = temp_path("ssh-grandchild");
    let err = pool
        .with_timeout(Duration::from_millis(500))
        .apply(
            procpool_tests::grandchild_and_hang,
            pidfile.display().to_string(),
        )
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let grandchild: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        wait_until(LIMIT, || procpool_tests::not_running(worker)
            && procpool_tests::not_running(grandchild)),
        "the worker or its grandchild outlived the deadline"
    );
    assert_eq!(pool.apply(square, 5).unwrap(), 25);
    let _ = std::fs::remove_file(pidfile);
}

#[test]
fn a_host_killed_with_its_sessions_costs_only_what_ran_there() {
    let _w = watchdog("a_host_killed_with_its_sessions", LIMIT * 2);
    let Some(sshd) = sshd_or_skip() else { return };
    let file = temp_path("ssh-host-killed");
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .remote(
            host(&sshd)
                .workers(2)
                .restart_limit(2, Duration::from_secs(60)),
        )
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let results: Vec<_> = (0..30u64)
        .map(|i| pool.apply_async(record_slowly, i).unwrap())
        .collect();
    assert!(wait_until(LIMIT, || recorded(&file).len() >= 3));
    sshd.kill_with_sessions();
    let mut lost = 0;
    for (i, h) in results.into_iter().enumerate() {
        match h.get() {
            Ok(v) => assert_eq!(v, i as u64),
            Err(e) => {
                assert!(e.is_host_lost(), "{e}");
                assert_eq!(e.host(), Some(sshd.destination().as_str()), "{e}");
                assert!(e.to_string().contains(&sshd.destination()), "{e}");
                lost += 1;
            }
        }
    }
    let counts = recorded(&file);
    assert!(counts.values().all(|&n| n == 1), "ran twice: {counts:?}");
    assert_eq!(counts.len() + lost, 30, "{counts:?}, {lost} lost");
    // The host is retried and dropped past its limit; the local worker
    // goes on.
    assert!(wait_until(LIMIT, || pool.stats().start_failures >= 3));
    let v: Vec<u64> = pool.map(square, 0..100u64).unwrap();
    assert_eq!(v.len(), 100);
    let _ = std::fs::remove_file(file);
}

#[test]
fn a_silent_host_is_given_up_within_its_keepalive() {
    let _w = watchdog("a_silent_host_is_given_up_within_its_keepalive", LIMIT);
    let Some(sshd) = sshd_or_skip() else { return };
    let file = temp_path("ssh-silent");
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .remote(host(&sshd).workers(1).keepalive(Duration::from_secs(1)))
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    // One long task on each worker.
    let long: Vec<_> = (0..2u64)
        .map(|i| pool.apply_async(record_then_sleep, (i, 600_000)).unwrap())
        .collect();
    assert!(wait_until(LIMIT, || recorded(&file).len() == 2));
    // Its relay and worker, to be ended once the host runs again.
    let there = left_on_host(&sshd);
    assert_eq!(there.len(), 2, "{there:?}");
    sshd.stop_all();
    // No FIN, no RST: three missed keep-alives, and the task there fails
    // naming the host (the local one runs on).
    let mut long = long;
    let lost = 'found: loop {
        for h in long.iter_mut() {
            match h.get_timeout(Duration::from_millis(50)) {
                Err(e) if e.is_wait_timeout() => {}
                r => break 'found r,
            }
        }
    };
    let err = lost.unwrap_err();
    assert!(err.is_host_lost(), "{err}");
    assert_eq!(err.host(), Some(sshd.destination().as_str()), "{err}");
    sshd.continue_all();
    // Continued, the host finds its connection gone: its relay kills the
    // worker and ends (a replacement may start there meanwhile).
    assert!(
        wait_until(LIMIT, || there
            .iter()
            .all(|&p| procpool_tests::not_running(p))),
        "left on the host: {there:?}"
    );
    pool.terminate();
    let _ = std::fs::remove_file(file);
}

#[test]
fn ship_binary_copies_the_worker_once_per_build() {
    let _w = watchdog("ship_binary_copies_the_worker_once_per_build", LIMIT);
    let Some(sshd) = sshd_or_skip() else { return };
    let shipped = |sshd: &Sshd| {
        let pool = Pool::builder()
            .workers(0)
            .worker_program(FAULT_WORKER)
            .remote(host(sshd).workers(1).ship_binary(true))
            .build()
            .unwrap();
        let path = pool.apply(exe_path, ()).unwrap();
        assert_eq!(pool.apply(square, 9).unwrap(), 81);
        path
    };
    let first = shipped(&sshd);
    assert!(first.contains("/.cache/procpool/"), "{first}");
    assert!(first.ends_with("/fault-worker"), "{first}");
    let inode = |p: &str| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let before = inode(&first);
    // The host has the build: nothing is copied again.
    assert_eq!(shipped(&sshd), first);
    assert_eq!(inode(&first), before, "copied again");
    // Gone from the host: copied again.
    std::fs::remove_file(&first).unwrap();
    assert_eq!(shipped(&sshd), first);
    assert!(std::path::Path::new(&first).exists());
    let _ = std::fs::remove_dir_all(std::path::Path::new(&first).parent().unwrap());
}

#[test]
fn a_pool_killed_outright_leaves_nothing_on_its_ssh_host() {
    let _w = watchdog(
        "a_pool_killed_outright_leaves_nothing_on_its_ssh_host",
        LIMIT,
    );
    let Some(sshd) = sshd_or_skip() else { return };
    let mut args = vec![
        "ssh".to_owned(),
        sshd.destination(),
        format!("ControlPath={}/ctl-host-%C", sshd.dir().display()),
    ];
    args.extend(
        sshd.ssh_options()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}")),
    );
    let (mut host, worker) = crate::launcher::start_remote_host(&args);
    assert!(procpool_tests::process_exists(worker));
    host.kill().unwrap();
    host.wait().unwrap();
    assert!(
        wait_until(LIMIT, || left_on_host(&sshd).is_empty()),
        "left on the host: {:?}",
        left_on_host(&sshd)
    );
}

#[test]
fn chaos_across_hosts_ends_every_task_once_and_runs_none_twice() {
    let _w = watchdog("chaos_across_hosts", LIMIT * 3);
    let Some(a) = sshd_or_skip() else { return };
    let Some(b) = sshd_or_skip() else { return };
    let file = temp_path("ssh-chaos");
    let pool = Pool::builder()
        .workers(1)
        .worker_program(FAULT_WORKER)
        .remote(host(&a).workers(2))
        .remote(host(&b).workers(2))
        .initializer(init_store, file.display().to_string())
        .build()
        .unwrap();
    let total = 400u64;
    let results: Vec<_> = (0..total)
        .map(|i| pool.apply_async(record_then_sleep, (i, 10)).unwrap())
        .collect();
    // Remote workers SIGKILLed at random moments, and host b killed with
    // its sessions halfway through.
    let stop = Arc::new(AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let (a, b) = (Arc::new(a), Arc::new(b));
        let hosts = (a.clone(), b.clone());
        let file = file.clone();
        let handle = std::thread::spawn(move || {
            let mut n = 0u64;
            let mut b_killed = false;
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(40 + n * 7 % 50));
                n += 1;
                let victims = remote_workers(if n.is_multiple_of(2) {
                    &hosts.0
                } else {
                    &hosts.1
                });
                if let Some(&v) = victims.get(n as usize % victims.len().max(1)) {
                    procpool_tests::kill(v, libc::SIGKILL);
                }
                if !b_killed && recorded(&file).len() as u64 >= total / 2 {
                    hosts.1.kill_with_sessions();
                    b_killed = true;
                }
            }
            b_killed
        });
        (handle, a, b)
    };
    let (mut ok, mut died, mut lost) = (0, 0, 0);
    for (i, h) in results.into_iter().enumerate() {
        match h.get() {
            Ok(v) => {
                assert_eq!(v, i as u64);
                ok += 1;
            }
            Err(e) if e.is_worker_died() => died += 1,
            Err(e) if e.is_host_lost() => lost += 1,
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (handle, _a, _b) = killer;
    assert!(handle.join().unwrap(), "host b was killed mid-run");
    let counts = recorded(&file);
    assert!(counts.values().all(|&n| n == 1), "ran twice: {counts:?}");
    // Every result delivered ran exactly once; a failed task ran at most
    // once.
    assert_eq!(ok + died + lost, total as usize);
    assert!(counts.len() >= ok, "{} recorded, {ok} ok", counts.len());
    assert_eq!(pool.apply(chaos, (Chaos::Work, total)).unwrap(), total);
    let _ = std::fs::remove_file(file);
}
