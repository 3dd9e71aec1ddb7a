//! A fault worker started by hand, speaking raw protocol with a test:
//! shared by the test binaries that include this file.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};

use procpool_protocol::frame::read_frame;
use procpool_protocol::{DEFAULT_MAX_FRAME, FromWorker, PREAMBLE_LEN, decode_from_worker};

use crate::FAULT_WORKER;

/// A fault worker started by hand, speaking raw protocol with the test.
pub(crate) struct RawWorker {
    pub(crate) child: Child,
    pub(crate) tasks: Vec<String>,
}

impl RawWorker {
    /// Started with `stderr` as its stderr; after its handshake.
    pub(crate) fn start_with(stderr: Stdio) -> Self {
        let mut child = Command::new(FAULT_WORKER)
            .env("PROCPOOL_WORKER", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let out = child.stdout.as_mut().unwrap();
        let mut p = [0u8; PREAMBLE_LEN];
        out.read_exact(&mut p).unwrap();
        procpool_protocol::check_preamble(&p).unwrap();
        let mut body = Vec::new();
        assert!(read_frame(out, DEFAULT_MAX_FRAME, &mut body).unwrap());
        let FromWorker::Hello(hello) = decode_from_worker(&body).unwrap() else {
            panic!("no hello")
        };
        let tasks = hello.tasks.into_iter().map(|t| t.name).collect();
        Self { child, tasks }
    }

    pub(crate) fn task(&self, name: &str) -> u32 {
        self.tasks.iter().position(|t| t == name).unwrap() as u32
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) {
        // The worker may already have exited: a broken pipe is fine.
        let _ = self.child.stdin.as_mut().unwrap().write_all(bytes);
    }
}
