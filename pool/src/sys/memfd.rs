//! Sealed memfds: the memory a large payload crosses in (see `payload.rs`).
//!
//! The sender copies the bytes into a fresh memfd and seals it against
//! writing, shrinking and growing before anyone else can see it; the
//! receiver opens it through `/proc/<pid>/fd/<n>` (the sender keeps its
//! descriptor until then), checks the seals and the size, and maps it
//! read-only. A read of a mapping of a sealed file cannot fail (no
//! SIGBUS: the file cannot shrink under the reader) nor see a change (it
//! cannot be written). Nothing is ever named in a file system: the memory
//! is freed when the last descriptor and mapping are gone, whichever
//! process is killed.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// The seals a payload's memfd carries.
const SEALS: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE | libc::F_SEAL_SEAL;

/// Copies `bytes` into a new sealed memfd (close-on-exec).
pub(crate) fn seal_copy(bytes: &[u8]) -> io::Result<OwnedFd> {
    let name = c"procpool-payload";
    // SAFETY: memfd_create reads a NUL-terminated name and returns a new
    // descriptor (close-on-exec, as asked) or -1.
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that we now own.
    let mut file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    file.write_all(bytes)?;
    // SAFETY: F_ADD_SEALS takes an int argument and touches no memory.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, SEALS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file.into())
}

/// Opens descriptor `fd` of process `pid` (read-only, close-on-exec) if it
/// is a memfd sealed as [`seal_copy`] seals.
///
/// The peer names the descriptor, so it may be anything: it is first
/// looked at without being opened (`O_PATH`: a FIFO without a writer
/// would block a plain open forever, a device would be opened), and only
/// a regular file is then opened for reading, through that handle.
pub(crate) fn open_sealed(pid: u32, fd: u32) -> io::Result<OwnedFd> {
    use std::os::unix::fs::OpenOptionsExt;
    let handle = File::options()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(format!("/proc/{pid}/fd/{fd}"))?;
    if !handle.metadata()?.is_file() {
        return Err(io::Error::other("not a memfd"));
    }
    let file = File::open(format!("/proc/self/fd/{}", handle.as_raw_fd()))?;
    drop(handle);
    // SAFETY: F_GET_SEALS takes no argument and touches no memory.
    let seals = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::other("not a memfd"));
    }
    if seals & SEALS != SEALS {
        return Err(io::Error::other("a memfd not sealed against change"));
    }
    Ok(file.into())
}

/// A read-only mapping of a sealed memfd, whole.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only memory no one can change (sealed), so
// it may be read from any thread; `Drop` unmaps it once.
unsafe impl Send for Mapping {}
// SAFETY: as above: shared references only read it.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `fd`, which must be `len` bytes long (not 0).
    pub(crate) fn new(fd: &OwnedFd, len: usize) -> io::Result<Self> {
        let size = File::from(fd.try_clone()?).metadata()?.len();
        if size != len as u64 || len == 0 {
            return Err(io::Error::other(format!(
                "the shared memory holds {size} bytes, not the {len} announced"
            )));
        }
        // Not populated: the pages are mapped as they are first read, 16
        // at a time (the kernel's fault-around), which costs less than
        // `MAP_POPULATE`'s walk of every page, even when all are read. A
        // 4 MiB echo, rounds paired in one process on AMD EPYC: 1.17× as
        // fast, and 1.09× when the task and the caller read every byte.
        // (Faults cannot fail for want of the file: it cannot shrink.)
        // SAFETY: a fresh private read-only mapping of a file of exactly
        // `len` bytes that cannot shrink (sealed); no existing memory is
        // touched. The result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap"))?;
        Ok(Self { ptr, len })
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        // SAFETY: `ptr` is a live read-only mapping of `len` bytes, valid
        // until Drop; its contents cannot change (sealed against writes).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let (addr, len) = (self.ptr.as_ptr() as usize, self.len);
        let deferred = DEFERRED
            .try_with(|d| d.borrow_mut().0.as_mut().map(|list| list.push((addr, len))))
            .ok()
            .flatten();
        match deferred {
            Some(()) => ANY_DEFERRED.set(true),
            None => unmap(addr, len),
        }
    }
}

thread_local! {
    /// Mappings dropped on this thread since [`defer_unmaps`], not yet
    /// unmapped: `None` unless the thread asked for it.
    static DEFERRED: RefCell<Deferred> = const { RefCell::new(Deferred(None)) };
    /// Whether `DEFERRED` may hold any (a thread-local without a
    /// destructor: the cheap look [`unmap_deferred`] starts with).
    static ANY_DEFERRED: Cell<bool> = const { Cell::new(false) };
}

/// The list of a thread's deferred unmaps, unmapped when the thread ends
/// (an in-process worker's thread ends with its pool, and leaks nothing).
struct Deferred(Option<Vec<(usize, usize)>>);

impl Drop for Deferred {
    fn drop(&mut self) {
        for (addr, len) in self.0.take().into_iter().flatten() {
            unmap(addr, len);
        }
    }
}

/// From now on, mappings dropped on this thread are unmapped only at the
/// next [`unmap_deferred`]. A worker's serving thread: the unmapping of a
/// task's large arguments (a tenth of a millisecond per MiB) comes after
/// its answer is sent, not before. Their pages cost nothing meanwhile:
/// the pool holds the memfds until the batch is answered.
pub(crate) fn defer_unmaps() {
    DEFERRED.with(|d| {
        d.borrow_mut().0.get_or_insert_with(Vec::new);
    });
}

/// Unmaps what was put off on this thread (see [`defer_unmaps`]). Called
/// after every item of a chunk: with nothing put off, it reads one plain
/// thread-local, inlined into the loop, and goes on (a call here took 3%
/// of a `map` of `u64`s' samples).
#[inline]
pub(crate) fn unmap_deferred() {
    if ANY_DEFERRED.get() {
        unmap_deferred_now();
    }
}

#[cold]
fn unmap_deferred_now() {
    ANY_DEFERRED.set(false);
    let list = DEFERRED.with(|d| d.borrow_mut().0.as_mut().map(std::mem::take));
    for (addr, len) in list.into_iter().flatten() {
        unmap(addr, len);
    }
}

fn unmap(addr: usize, len: usize) {
    // SAFETY: unmaps exactly one mapping made in `Mapping::new`, once (its
    // Mapping is gone, and with it every reference into it).
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_sealed_copy_opens_and_maps_whole_and_unchanged() {
        let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
        let fd = seal_copy(&data).unwrap();
        let opened = open_sealed(std::process::id(), fd.as_raw_fd() as u32).unwrap();
        drop(fd);
        let map = Mapping::new(&opened, data.len()).unwrap();
        drop(opened);
        assert_eq!(map.bytes(), &data[..]);
        // Sealed: no one can write it any more.
        let again = seal_copy(b"x").unwrap();
        let mut f = File::from(again);
        assert!(f.write_all(b"y").is_err());
    }

    #[test]
    fn a_deferred_unmap_waits_for_the_flush_on_its_own_thread_only() {
        fn mapped(addr: usize) -> bool {
            let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
            maps.lines().any(|l| {
                l.split(['-', ' '])
                    .next()
                    .is_some_and(|start| usize::from_str_radix(start, 16) == Ok(addr))
            })
        }
        let map = |n: usize| {
            let fd = seal_copy(&vec![7u8; n]).unwrap();
            Mapping::new(&fd, n).unwrap()
        };
        std::thread::spawn(move || {
            let (a, b) = (map(4096), map(8192));
            let (a_at, b_at) = (a.bytes().as_ptr() as usize, b.bytes().as_ptr() as usize);
            drop(a);
            assert!(!mapped(a_at), "unmapped at once by default");
            defer_unmaps();
            drop(b);
            assert!(mapped(b_at), "kept until the flush");
            // Another thread's drops are not deferred.
            let c = map(4096);
            let c_at = c.bytes().as_ptr() as usize;
            std::thread::spawn(move || drop(c)).join().unwrap();
            assert!(!mapped(c_at));
            unmap_deferred();
            assert!(!mapped(b_at), "unmapped at the flush");
            let d = map(4096);
            let d_at = d.bytes().as_ptr() as usize;
            drop(d);
            assert!(mapped(d_at));
            d_at
        })
        .join()
        .map(|d_at| assert!(!mapped(d_at), "unmapped when the thread ended"))
        .unwrap();
    }

    #[test]
    fn unsealed_files_and_wrong_sizes_are_refused() {
        let plain = File::open("/proc/self/exe").unwrap();
        assert!(open_sealed(std::process::id(), plain.as_raw_fd() as u32).is_err());
        let fd = seal_copy(&[1, 2, 3]).unwrap();
        assert!(Mapping::new(&fd, 4).is_err());
        assert!(Mapping::new(&fd, 3).is_ok());
    }
}
