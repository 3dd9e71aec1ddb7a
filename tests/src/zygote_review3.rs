//! Tasks and initializers of the third review of the zygote start method
//! (`tests/zygote/review3.rs`).

use std::sync::Mutex;

/// This worker's pid, its process group id, and whether it is a child
/// subreaper (`PR_GET_CHILD_SUBREAPER`).
pub fn process_report() -> (u32, u32, i32) {
    let mut subreaper: libc::c_int = -1;
    // SAFETY: getpgrp reads this process's group; PR_GET_CHILD_SUBREAPER
    // writes one c_int through the pointer, which points at a live local.
    let (pgid, rc) = unsafe {
        (
            libc::getpgrp(),
            libc::prctl(
                libc::PR_GET_CHILD_SUBREAPER,
                &mut subreaper as *mut libc::c_int,
            ),
        )
    };
    assert_eq!(rc, 0, "prctl(PR_GET_CHILD_SUBREAPER) failed");
    (std::process::id(), pgid as u32, subreaper)
}

static SHARED_FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// An initializer that opens `path` for reading and keeps it, for
/// [`read_shared_byte`].
pub fn init_open_file(path: String) {
    let file = std::fs::File::open(path).expect("open the initializer's file");
    *SHARED_FILE.lock().unwrap() = Some(file);
}

/// Reads one byte (a plain `read`, at the file's offset) from the file the
/// initializer opened: this worker's pid and the byte.
pub fn read_shared_byte() -> (u32, Option<u8>) {
    use std::io::Read as _;
    let mut guard = SHARED_FILE.lock().unwrap();
    let file = guard.as_mut().expect("init_open_file ran");
    let mut b = [0u8; 1];
    let n = file.read(&mut b).expect("read");
    (std::process::id(), (n == 1).then_some(b[0]))
}
