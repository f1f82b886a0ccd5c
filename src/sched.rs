//! The session threads' time slice, asked of the Linux scheduler (`worker_slice_us`).
//!
//! Since Linux 6.6 the scheduler is EEVDF, and since 6.12 a thread can ask for its own slice
//! (`sched_setattr`, `sched_runtime` of a SCHED_OTHER thread). A thread woken with a shorter
//! slice than the running one's preempts it at once; with equal slices the running thread
//! usually keeps the core until it sleeps. The default slice is about 0.7 ms times 1 + log2(cores).
//! A session thread woken by a packet does a few microseconds of work, so a short slice has it
//! run, and deliver, before the rest of what runs on the core gets back to it (latency at
//! 1000 msg/s, docs/performance.md: p50 32 -> 19 µs). Its share of the CPU does not change.
//! Older kernels accept the request and ignore it.

use std::io;
use std::time::Duration;

/// The slices Linux accepts: shorter or longer ones are clamped to these.
pub const SLICES: std::ops::RangeInclusive<Duration> =
    Duration::from_micros(100)..=Duration::from_millis(100);

/// Asks for `slice` as the calling thread's time slice. True if the scheduler reports it in
/// place; false if it keeps its own (a kernel before 6.12, or a thread that is not
/// SCHED_OTHER, such as one under `chrt`, which is left as it is).
#[cfg(target_os = "linux")]
pub fn request_slice(slice: Duration) -> io::Result<bool> {
    let mut attr = attributes(0)?;
    if attr.sched_policy != libc::SCHED_OTHER as u32 {
        return Ok(false);
    }
    attr.size = ATTR_SIZE;
    attr.sched_flags = 0;
    attr.sched_runtime = u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX);
    // SAFETY: `attr` is a valid `sched_attr` of `attr.size` bytes, which is all the kernel
    // reads; pid 0 is the calling thread.
    if unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            0,
            &attr as *const libc::sched_attr,
            0,
        )
    } != 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(slice_of(0)? == Some(slice))
}

/// The time slice of thread `tid` (0: the calling thread), or None where the kernel does not
/// report one (before 6.12, or a thread that is not SCHED_OTHER).
#[cfg(target_os = "linux")]
pub fn slice_of(tid: libc::pid_t) -> io::Result<Option<Duration>> {
    let attr = attributes(tid)?;
    Ok(
        (attr.sched_policy == libc::SCHED_OTHER as u32 && attr.sched_runtime != 0)
            .then(|| Duration::from_nanos(attr.sched_runtime)),
    )
}

#[cfg(target_os = "linux")]
const ATTR_SIZE: u32 = std::mem::size_of::<libc::sched_attr>() as u32;

#[cfg(target_os = "linux")]
fn attributes(tid: libc::pid_t) -> io::Result<libc::sched_attr> {
    // SAFETY: `sched_attr` is plain integers, for which all zeroes is a valid value.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most ATTR_SIZE bytes, the size of `attr`.
    let done = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut attr as *mut libc::sched_attr,
            ATTR_SIZE,
            0,
        )
    };
    if done != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attr)
}

#[cfg(not(target_os = "linux"))]
pub fn request_slice(_slice: Duration) -> io::Result<bool> {
    Ok(false)
}

#[cfg(not(target_os = "linux"))]
pub fn slice_of(_tid: i32) -> io::Result<Option<Duration>> {
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_gets_the_slice_it_asks_for_where_the_kernel_has_slices() {
        std::thread::spawn(|| {
            let Ok(before) = slice_of(0) else {
                eprintln!("skipped: sched_getattr is not allowed here");
                return;
            };
            let slice = Duration::from_micros(250);
            let granted = request_slice(slice).unwrap();
            // A kernel that reports slices grants them; one that does not ignores the request.
            assert_eq!(granted, before.is_some());
            if granted {
                assert_eq!(slice_of(0).unwrap(), Some(slice));
            }
        })
        .join()
        .unwrap();
    }
}
