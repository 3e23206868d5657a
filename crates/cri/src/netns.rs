//! Pod network namespaces and /dev/shm mounts, kept as bind mounts under the state directory
//! so that they outlive any process (the pause process joins the namespace; CNI configures it
//! by path) and are torn down by StopPodSandbox.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in path"))
}

/// Brings `lo` up in the calling thread's network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket call; the descriptor is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo".iter().enumerate() {
        ifr.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own, on our socket.
    let r = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the socket made above.
    unsafe { libc::close(fd) };
    if r != 0 { Err(err) } else { Ok(()) }
}

/// Creates a network namespace with `lo` up, bind-mounted at `path`. Done on a thread of its
/// own (which then ends), since unshare changes the calling thread's namespace.
pub(crate) fn create(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    let target = path.to_path_buf();
    let r = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: unshare affects only this thread, which exits after the bind mount.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        loopback_up()?;
        bind(Path::new("/proc/thread-self/ns/net"), &target)
    })
    .join()
    .map_err(|_| std::io::Error::other("the netns thread panicked"))?;
    if r.is_err() {
        let _ = std::fs::remove_file(path);
    }
    r
}

/// statfs(2)'s type of nsfs: a bind-mounted namespace.
pub(crate) const NSFS_MAGIC: i64 = 0x6e73_6673;
/// statfs(2)'s type of tmpfs.
pub(crate) const TMPFS_MAGIC: i64 = 0x0102_1994;

/// Whether `path` is on a file system of type `magic` (as statfs(2) says).
pub(crate) fn is_fs(path: &Path, magic: i64) -> bool {
    let Ok(p) = cstr(path) else {
        return false;
    };
    // SAFETY: statfs is plain old data; zeroed is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid path and a buffer we own.
    unsafe { libc::statfs(p.as_ptr(), &mut st) == 0 && st.f_type as i64 == magic }
}

/// Bind-mounts `src` on `target` (which must exist).
pub(crate) fn bind(src: &Path, target: &Path) -> std::io::Result<()> {
    let (s, t) = (cstr(src)?, cstr(target)?);
    // SAFETY: valid NUL-terminated paths; a bind mount with no data.
    if unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts (lazily) and removes a bind-mounted namespace or mount point; a missing one is
/// fine.
pub(crate) fn remove(path: &Path) -> std::io::Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let p = cstr(path)?;
    // SAFETY: a valid path; MNT_DETACH never blocks on users.
    if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
            return Err(e);
        }
    }
    if path.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// Mounts a pod's /dev/shm: a 64 MiB tmpfs, as containerd's.
pub(crate) fn mount_shm(path: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(path)?;
    let p = cstr(path)?;
    let data = c"mode=1777,size=65536k";
    // SAFETY: valid NUL-terminated strings that outlive the call.
    if unsafe {
        libc::mount(
            c"shm".as_ptr(),
            p.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data.as_ptr().cast(),
        )
    } != 0
    {
        let e = std::io::Error::last_os_error();
        let _ = std::fs::remove_dir(path);
        return Err(e);
    }
    Ok(())
}
