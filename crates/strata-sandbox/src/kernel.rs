//! The narrow kernel interface the filesystem setup goes through (youki's `Syscall` idea):
//! [`LinuxKernel`] makes the real calls; tests substitute a recorder, so the orchestration
//! of mounts is checked without root.
//!
//! Everything here may run in the child between `clone` and `execve`, where the address
//! space is shared with the parent (`CLONE_VM`): implementations must not allocate, lock or
//! panic. Errors are plain `io::Error`s built from `errno`, which do not allocate.

use std::ffi::{CStr, c_ulong};
use std::io;
use std::ptr;

use crate::plan::Step;

/// Mount-namespace and filesystem calls.
pub trait Kernel {
    /// `mount(2)`.
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()>;
    /// `umount2(2)`.
    fn umount2(&self, target: &CStr, flags: i32) -> io::Result<()>;
    /// `mkdir(2)`; an existing directory is not an error.
    fn mkdir(&self, path: &CStr, mode: u32) -> io::Result<()>;
    /// Create an empty regular file.
    fn touch(&self, path: &CStr) -> io::Result<()>;
    /// `symlink(2)`.
    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()>;
    /// `mknod(2)` of a character device.
    fn mknod_char(&self, path: &CStr, mode: u32, major: u32, minor: u32) -> io::Result<()>;
    /// `pivot_root(2)`.
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()>;
    /// `chdir(2)`.
    fn chdir(&self, path: &CStr) -> io::Result<()>;
}

/// Carry out one step of a filesystem plan.
pub fn apply<K: Kernel + ?Sized>(k: &K, step: &Step) -> io::Result<()> {
    const RO_BIND: c_ulong = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    match step {
        Step::MakePrivate => k.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None),
        Step::Tmpfs { target, flags, options } => {
            k.mount(Some(c"tmpfs"), target, Some(c"tmpfs"), *flags, Some(options))
        }
        Step::Mkdir { path } => k.mkdir(path, 0o755),
        Step::Touch { path } => k.touch(path),
        Step::Symlink { target, link } => k.symlink(target, link),
        Step::BindReadOnly { source, target } => {
            k.mount(Some(source), target, None, libc::MS_BIND | libc::MS_REC, None)?;
            k.mount(None, target, None, RO_BIND, None)
        }
        Step::CharDevice { path, major, minor } => k.mknod_char(path, 0o666, *major, *minor),
        Step::Proc { target } => k.mount(
            Some(c"proc"),
            target,
            Some(c"proc"),
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            None,
        ),
        Step::PivotRoot { new_root } => {
            // pivot_root(".", ".") stacks the old root on top of the new one; detaching it
            // leaves the new root alone, without needing a put_old directory.
            k.chdir(new_root)?;
            k.pivot_root(c".", c".")?;
            k.umount2(c".", libc::MNT_DETACH)?;
            k.chdir(c"/")
        }
        Step::RootReadOnly => k.mount(None, c"/", None, RO_BIND, None),
    }
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxKernel;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn opt(p: Option<&CStr>) -> *const libc::c_char {
    p.map_or(ptr::null(), CStr::as_ptr)
}

impl Kernel for LinuxKernel {
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        // SAFETY: every pointer is either null or a valid NUL-terminated string that outlives
        // the call.
        check(unsafe { libc::mount(opt(source), target.as_ptr(), opt(fstype), flags, opt(data).cast()) })
    }

    fn umount2(&self, target: &CStr, flags: i32) -> io::Result<()> {
        // SAFETY: `target` is a valid NUL-terminated string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) })
    }

    fn mkdir(&self, path: &CStr, mode: u32) -> io::Result<()> {
        // SAFETY: `path` is a valid NUL-terminated string.
        match check(unsafe { libc::mkdir(path.as_ptr(), mode) }) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    fn touch(&self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is a valid NUL-terminated string; the returned fd is closed below.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644) };
        check(fd)?;
        // SAFETY: `fd` was just opened by us.
        unsafe { libc::close(fd) };
        Ok(())
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()> {
        // SAFETY: both are valid NUL-terminated strings.
        check(unsafe { libc::symlink(target.as_ptr(), link.as_ptr()) })
    }

    fn mknod_char(&self, path: &CStr, mode: u32, major: u32, minor: u32) -> io::Result<()> {
        let dev = libc::makedev(major, minor);
        // SAFETY: `path` is a valid NUL-terminated string.
        check(unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | mode, dev) })
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()> {
        // SAFETY: raw syscall with two valid NUL-terminated strings.
        let rc = unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) };
        check(rc as libc::c_int)
    }

    fn chdir(&self, path: &CStr) -> io::Result<()> {
        // SAFETY: `path` is a valid NUL-terminated string.
        check(unsafe { libc::chdir(path.as_ptr()) })
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A kernel that records calls instead of making them.
    use super::*;
    use std::cell::RefCell;

    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<String>>,
        /// Fail the call whose description starts with this.
        pub fail_on: Option<&'static str>,
    }

    impl Recorder {
        fn rec(&self, s: String) -> io::Result<()> {
            let fail = self.fail_on.is_some_and(|f| s.starts_with(f));
            self.calls.borrow_mut().push(s);
            if fail {
                Err(io::Error::from_raw_os_error(libc::EPERM))
            } else {
                Ok(())
            }
        }
    }

    fn d(c: Option<&CStr>) -> String {
        c.map_or("-".into(), |c| c.to_string_lossy().into_owned())
    }

    impl Kernel for Recorder {
        fn mount(
            &self,
            source: Option<&CStr>,
            target: &CStr,
            fstype: Option<&CStr>,
            flags: c_ulong,
            data: Option<&CStr>,
        ) -> io::Result<()> {
            let ro = if flags & libc::MS_RDONLY != 0 { " ro" } else { "" };
            let bind = if flags & libc::MS_BIND != 0 { " bind" } else { "" };
            let remount = if flags & libc::MS_REMOUNT != 0 { " remount" } else { "" };
            self.rec(format!(
                "mount {} {} {}{bind}{remount}{ro} {}",
                d(source),
                d(Some(target)),
                d(fstype),
                d(data)
            ))
        }
        fn umount2(&self, target: &CStr, _flags: i32) -> io::Result<()> {
            self.rec(format!("umount {}", d(Some(target))))
        }
        fn mkdir(&self, path: &CStr, _mode: u32) -> io::Result<()> {
            self.rec(format!("mkdir {}", d(Some(path))))
        }
        fn touch(&self, path: &CStr) -> io::Result<()> {
            self.rec(format!("touch {}", d(Some(path))))
        }
        fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()> {
            self.rec(format!("symlink {} {}", d(Some(target)), d(Some(link))))
        }
        fn mknod_char(&self, path: &CStr, _mode: u32, major: u32, minor: u32) -> io::Result<()> {
            self.rec(format!("mknod {} {major}:{minor}", d(Some(path))))
        }
        fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()> {
            self.rec(format!("pivot_root {} {}", d(Some(new_root)), d(Some(put_old))))
        }
        fn chdir(&self, path: &CStr) -> io::Result<()> {
            self.rec(format!("chdir {}", d(Some(path))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::Recorder;
    use super::*;
    use crate::plan::{self, HostEntry, HostLayout};
    use crate::spec::SandboxSpec;
    use std::path::PathBuf;

    fn layout() -> HostLayout {
        HostLayout {
            root_dir: PathBuf::from("/r"),
            etc_dir: PathBuf::from("/e"),
            base: vec![HostEntry::Dir(PathBuf::from("/usr"))],
            etc_extra: vec![],
        }
    }

    #[test]
    fn bind_is_followed_by_a_read_only_remount_of_the_same_target() {
        let k = Recorder::default();
        let spec = SandboxSpec::new("/usr/bin/true", vec![]);
        for step in plan::build(&spec, &layout()).unwrap() {
            apply(&k, &step).unwrap();
        }
        let calls = k.calls.borrow();
        let i = calls
            .iter()
            .position(|c| c.starts_with("mount /usr /r/usr - bind"))
            .unwrap();
        assert_eq!(calls[i + 1], "mount - /r/usr - bind remount ro -");
        // The old root is detached right after the pivot, and the new root goes read-only.
        let p = calls.iter().position(|c| c == "pivot_root . .").unwrap();
        assert_eq!(calls[p - 1], "chdir /r");
        assert_eq!(calls[p + 1], "umount .");
        assert_eq!(calls.last().unwrap(), "mount - / - bind remount ro -");
    }

    #[test]
    fn a_failing_call_stops_the_step_with_the_kernel_error() {
        let k = Recorder {
            fail_on: Some("pivot_root"),
            ..Default::default()
        };
        let step = Step::PivotRoot {
            new_root: c"/r".to_owned(),
        };
        let err = apply(&k, &step).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
        assert_eq!(
            *k.calls.borrow(),
            vec!["chdir /r".to_owned(), "pivot_root . .".to_owned()]
        );
    }
}
