"""Strata Python runtime template (a zygote, after SOCK).

Started by the platform as root with ``python3 -I -S zygote.py``, fd 3 a SOCK_SEQPACKET
socket to the sandbox backend (crates/strata-sandbox/src/template.rs documents the
protocol). It loads the instance bootstrap and common standard-library modules once, then
forks one sandbox per request. Each forked sandbox sets up the same isolation a sandbox
started from scratch gets (the steps, their order and the seccomp program all come from the
backend) and then runs its program inside this already-initialised interpreter:

* ``python3 [-I] [-S] /strata/runtime/python/bootstrap.py``: the instance runtime;
* ``python3 [-flags] -c CODE [args]``: CODE as ``__main__`` (what the isolation tests use);
* ``python3 [-flags] FILE [args]``: FILE as ``__main__``.

Only the platform's code and the standard library are ever loaded here, never a function's:
the template runs as root. Linux x86_64 and aarch64.
"""

import ctypes
import fcntl
import gc
import os
import posix
import resource
import select
import socket
import stat
import sys
import threading
import time
import types

# Common standard-library modules, imported once here instead of in every instance.
import base64  # noqa: F401
import collections  # noqa: F401
import datetime  # noqa: F401
import functools  # noqa: F401
import hashlib  # noqa: F401
import io  # noqa: F401
import itertools  # noqa: F401
import json  # noqa: F401
import math  # noqa: F401
import random
import re  # noqa: F401
import string  # noqa: F401
import struct  # noqa: F401
import traceback  # noqa: F401
import typing  # noqa: F401
import urllib.parse  # noqa: F401

RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, RUNTIME_DIR)
import bootstrap  # noqa: E402
import strata  # noqa: E402,F401

sys.path.remove(RUNTIME_DIR)
# The function template (fntemplate.py), forked from here, uses this module's helpers.
sys.modules.setdefault("zygote", sys.modules[__name__])

CTRL_FD = 3
IN_SANDBOX_RUNTIME = "/strata/runtime/python"
# Seconds after answering before the next spare is cloned: cloning at once competed with the
# new sandbox's start-up for the machine's cores.
SPARE_DELAY = 0.015

_ARCH = os.uname().machine
if _ARCH == "x86_64":
    NR = {"pivot_root": 155, "capset": 126, "setgroups": 116, "setresuid": 117, "setresgid": 119, "clone": 56}
elif _ARCH == "aarch64":
    NR = {"pivot_root": 41, "capset": 90, "setgroups": 159, "setresuid": 147, "setresgid": 149, "clone": 220}
else:
    raise SystemExit("strata zygote: unsupported architecture %s" % _ARCH)

SIGCHLD = 17
CLONE_PARENT = 0x00008000
CLONE_CHILD_SETTID = 0x01000000
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
RO_BIND = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2

# PyDLL: the GIL stays held across these calls (nothing here blocks for long).
_libc = ctypes.PyDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.pthread_self.restype = ctypes.c_void_p
_libc.gettid.restype = ctypes.c_int


def _tid_address():
    """Where glibc caches this thread's tid (in its `struct pthread`).

    The sandbox's process is made with a raw clone(2), which glibc does not know about; passing
    this address with CLONE_CHILD_SETTID makes the kernel store the child's tid there, as
    glibc's own fork does. The offset is found, not assumed: the one place in the thread
    descriptor that holds the thread's tid both in this thread and in a second one.
    """
    base = _libc.pthread_self()
    tid = _libc.gettid()
    candidates = [off for off in range(0, 1024, 4) if ctypes.c_int.from_address(base + off).value == tid]
    found = []

    def probe():
        b, t = _libc.pthread_self(), _libc.gettid()
        found.extend(off for off in candidates if ctypes.c_int.from_address(b + off).value == t)

    th = threading.Thread(target=probe)
    th.start()
    th.join()
    if len(found) != 1:
        raise SystemExit("strata zygote: cannot find glibc's cached tid (%d candidates)" % len(found))
    return base + found[0]


_TID_ADDR = _tid_address()


def _clone(flags):
    """clone(2) like fork(2) (no new stack), with glibc's tid cache kept right in the child."""
    flags |= CLONE_CHILD_SETTID
    a = [ctypes.c_long(flags), ctypes.c_long(0), ctypes.c_long(0)]
    if _ARCH == "x86_64":  # (flags, stack, parent_tid, child_tid, tls)
        a += [ctypes.c_long(_TID_ADDR), ctypes.c_long(0)]
    else:  # aarch64: (flags, stack, parent_tid, tls, child_tid)
        a += [ctypes.c_long(0), ctypes.c_long(_TID_ADDR)]
    return _libc.syscall(ctypes.c_long(NR["clone"]), *a)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint), ("permitted", ctypes.c_uint), ("inheritable", ctypes.c_uint)]


class StepError(Exception):
    def __init__(self, step, errno_):
        super().__init__(step)
        self.step = step
        self.errno = errno_


def _touch(path):
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))


def _mknod(path, major, minor):
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))


_DOT = ctypes.c_char_p(b".")


def _pivot():
    return _libc.syscall(ctypes.c_long(NR["pivot_root"]), _DOT, _DOT)


def _enc(x):
    return None if x is None else x.encode()


def _mount_op(src, target, fstype, flags, data, step):
    return (_libc.mount, (_enc(src), _enc(target), _enc(fstype), flags, _enc(data)), step)


def _step_ops(step):
    """The calls of one plan step, as crates/strata-sandbox/src/kernel.rs `apply` makes them."""
    kind = step[0]
    if kind == "private":
        return [_mount_op(None, "/", None, MS_REC | MS_PRIVATE, None, "make-private")]
    if kind == "tmpfs":
        return [_mount_op("tmpfs", step[1], "tmpfs", step[2], step[3], "tmpfs")]
    if kind == "mkdir":
        return [(os.mkdir, (step[1], 0o755), "mkdir")]
    if kind == "touch":
        return [(_touch, (step[1],), "touch")]
    if kind == "symlink":
        return [(os.symlink, (step[1], step[2]), "symlink")]
    if kind == "bind":
        return [
            _mount_op(step[1], step[2], None, MS_BIND | MS_REC, None, "bind-ro"),
            _mount_op(None, step[2], None, RO_BIND, None, "bind-ro"),
        ]
    if kind == "mknod":
        return [(_mknod, (step[1], step[2], step[3]), "mknod")]
    if kind == "proc":
        return [_mount_op("proc", step[1], "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None, "proc")]
    if kind == "pivot":
        return [
            (os.chdir, (step[1],), "pivot-root"),
            (_pivot, (), "pivot-root"),
            (_libc.umount2, (b".", MNT_DETACH), "pivot-root"),
            (os.chdir, ("/",), "pivot-root"),
        ]
    if kind == "rootro":
        return [_mount_op(None, "/", None, RO_BIND, None, "root-ro")]
    raise StepError("unknown step %r" % (kind,), 22)


_FPROGS = {}  # seccomp program (hex) -> (fprog, filters): built once per program


def _fprog(hexprog):
    got = _FPROGS.get(hexprog)
    if got is None:
        prog = bytes.fromhex(hexprog)
        n = len(prog) // 8
        filters = (_SockFilter * n).from_buffer_copy(prog)
        fprog = _SockFprog(n, ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
        got = _FPROGS[hexprog] = (fprog, filters)
    return got[0]


_NO_CAPS = (_CapHeader(0x20080522, 0), (_CapData * 2)())


def _prepare(req, fds, err_w, bounding_dropped=-1):
    """Everything the sandbox's process will do before running its program, as two lists of
    (function, arguments, step name): the mounts, then the rest. Built here in the template,
    before the clone, so that the new process runs one tight loop and copies as few of the
    template's pages as it can (each Python object it touches is a copy-on-write fault).

    The order is child.rs's: cgroup, cgroup namespace, network namespace, umask, the plan;
    then hostname, working directory, descriptors, rlimits, capabilities and ids, the
    parent-death signal, no_new_privs, seccomp.
    """
    ncg = req["cgroups"]
    rest = fds[ncg:-1]  # the last one is the payload (see _serve_one)
    netns_fd = None
    if req["netns"]:
        netns_fd, rest = rest[0], rest[1:]
    mounts = [(os.write, (fd, b"0"), "cgroup") for fd in fds[:ncg]]
    mounts.append((_libc.unshare, (CLONE_NEWCGROUP,), "cgroup-ns"))
    if netns_fd is not None:
        mounts.append((_libc.setns, (netns_fd, CLONE_NEWNET), "netns"))
    mounts.append((os.umask, (0o022,), "umask"))
    for step in req["steps"]:
        mounts.extend(_step_ops(step))

    host = req["hostname"].encode()
    ops = [
        (_libc.sethostname, (host, len(host)), "hostname"),
        (os.chdir, (req["cwd"],), "chdir"),
    ]
    # Descriptors: every source is above 100 (see _serve_one).
    ops += _descriptor_ops(req, rest, err_w, bounding_dropped)
    gid, uid = req["gid"], req["uid"]
    ops += [
        (os.setgroups, ([],), "ids"),
        (os.setresgid, (gid, gid, gid), "ids"),
        (os.setresuid, (uid, uid, uid), "ids"),
        # An exec would make it dumpable again (its /proc files its own); there is none here.
        (_libc.prctl, (PR_SET_DUMPABLE, 1, 0, 0, 0), "dumpable"),
        # After the id switch: a credential change clears the parent-death signal.
        (_libc.prctl, (PR_SET_PDEATHSIG, 9, 0, 0, 0), "pdeathsig"),
        (_libc.syscall, (ctypes.c_long(NR["capset"]), ctypes.byref(_NO_CAPS[0]), _NO_CAPS[1]), "caps"),
        (_libc.prctl, (PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no-new-privs"),
        _seccomp_op(req["seccomp"]),
    ]
    return mounts, ops


def _descriptor_ops(req, sources, report_w, bounding_dropped=-1):
    """Put each passed descriptor (all above any target) at its target, close everything but
    the targets and the report pipe; then the rlimits, and empty the bounding and ambient
    capability sets (the bounding set from capability `bounding_dropped + 1` on: a spare
    drops it ahead, see ``_ready_spare``). Shared with the function template (fntemplate.py)."""
    targets = req["targets"]
    if len(sources) != len(targets):
        raise ValueError("%d descriptors for %d targets" % (len(sources), len(targets)))
    ops = [(os.dup2, (src, target, True), "fds") for src, target in zip(sources, targets)]
    lo = 0
    for keep in sorted(set(targets) | {report_w}):
        if lo < keep:  # os.closerange(n, n) would close everything from n up
            ops.append((os.closerange, (lo, keep), "fds"))  # close_range(2)
        lo = keep + 1
    ops.append((os.closerange, (lo, 1 << 20), "fds"))
    for res, value in req["rlimits"]:
        ops.append((resource.setrlimit, (res, (value, value)), "rlimit"))
    for cap in range(bounding_dropped + 1, req["cap_last"] + 1):
        ops.append((_libc.prctl, (PR_CAPBSET_DROP, cap, 0, 0, 0), "caps"))
    ops.append((_libc.prctl, (PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "caps"))
    return ops


def _seccomp_op(hexprog):
    return (
        _libc.prctl,
        (PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(_fprog(hexprog)), 0, 0),
        "seccomp",
    )


def _recv_with_fds(sock):
    """One datagram and the descriptors that came with it: (data, fds); (b"", []) when the
    other end is gone."""
    try:
        data, anc, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(64 * 4))
    except OSError:
        return b"", []
    fds = []
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            n = len(payload) // 4
            fds.extend(struct.unpack("%di" % n, payload[: n * 4]))
    return data, fds


def _execute(ops):
    get_errno = ctypes.get_errno
    for fn, args, step in ops:
        try:
            r = fn(*args)
        except (OSError, ValueError) as e:
            raise StepError(step, getattr(e, "errno", None) or 22) from None
        if type(r) is int and r < 0:
            raise StepError(step, get_errno())


def _environment(env):
    """Replace the environment (C level, os.environ and posix.environ) with the spec's."""
    os.environ.clear()
    for k, v in env.items():
        os.environ[k] = v
    posix.environ.clear()
    for k, v in env.items():
        posix.environ[k.encode()] = v.encode()


def _run(argv):
    """Run the request's program inside this interpreter; never returns."""
    args = argv[1:]
    while args and args[0].startswith("-") and args[0] not in ("-c", "-m", "-"):
        args = args[1:]
    code = None
    if args and args[0] == "-c" and len(args) > 1:
        code, sys.argv = args[1], ["-c"] + args[2:]
        filename = "<string>"
    elif args:
        path = args[0]
        sys.argv = list(args)
        if path == IN_SANDBOX_RUNTIME + "/bootstrap.py":
            bootstrap.main(runtime_dir=IN_SANDBOX_RUNTIME)
            bootstrap._die(0)
        with open(path, "rb") as f:
            code = f.read()
        filename = path
    else:
        sys.stderr.write("strata zygote: nothing to run\n")
        os._exit(2)
    # A fresh __main__: this template's own globals stay where its functions find them.
    main = types.ModuleType("__main__")
    if filename != "<string>":
        main.__file__ = filename
    sys.modules["__main__"] = main
    status = 0
    try:
        exec(compile(code, filename, "exec"), main.__dict__)
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, int) and e.code is not None:
            sys.stderr.write("%s\n" % e.code)
    except BaseException:
        traceback.print_exc()
        status = 1
    bootstrap._die(status)


def _read_payload(fd):
    """The function's argv and environment, from the memfd the backend sent (read only here,
    in the sandbox's process, so the template's memory never holds them)."""
    size = os.fstat(fd).st_size  # the backend wrote it whole before sending it
    chunks, off = [], 0
    while off < size:
        b = os.pread(fd, size - off, off)
        if not b:
            break
        chunks.append(b)
        off += len(b)
    os.close(fd)
    p = json.loads(b"".join(chunks))
    return dict(p["env"]), p["argv"]


def _sandbox(ops, payload_fd, err_w, seeded=False):
    """The sandbox's first process (pid 1 of its namespaces); the daemon is its parent.
    `seeded`: its random module was reseeded already (a spare does it ahead)."""
    mounts, rest = ops
    try:
        env, argv = _read_payload(payload_fd)
        t0 = time.perf_counter()
        _execute(mounts)
        t1 = time.perf_counter()
        _execute(rest)
        t2 = time.perf_counter()
    except StepError as e:
        os.write(err_w, ("%s:%d" % (e.step, e.errno or 0)).encode())
        os._exit(127)
    except BaseException as e:  # a bug here must not leave a half-set-up sandbox running
        os.write(err_w, ("setup:0:%s" % e).encode()[:4000])
        os._exit(127)
    if not seeded:
        random.seed()  # not the template's sequence
    _environment(env)
    os.write(err_w, b"ok %d %d" % ((t1 - t0) * 1e6, (t2 - t1) * 1e6))
    os.close(err_w)
    _run(argv)


def _clone_sandbox():
    """Clone a sandbox's first process: pid 1 of new pid, mount, IPC and UTS namespaces and,
    through CLONE_PARENT, the daemon's child, as a cloned one is, so the daemon waits for it
    and reaps it; its parent-death signal follows the daemon's spawner thread."""
    for s in (sys.stdout, sys.stderr):
        s.flush()
    return _clone(CLONE_PARENT | CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | SIGCHLD)


def _raise_fds(fds):
    """Received descriptors moved above every possible target (< 64), so that putting one in
    place never overwrites another."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    return high


# A request of every kind of step, for a spare to run the request path on ahead (`_ready_spare`).
_SAMPLE = {
    "id": 0,
    "steps": [
        ["private"], ["tmpfs", "/t", 6, "size=1"], ["mkdir", "/m"], ["touch", "/f"],
        ["symlink", "a", "/b"], ["bind", "/s", "/d"], ["mknod", "/n", 1, 3], ["proc", "/p"],
        ["pivot", "/r"], ["rootro"],
    ],
    "cwd": "/", "hostname": "h", "uid": 1000, "gid": 1000, "rlimits": [[7, 1024]],
    "cap_last": 40, "seccomp": "", "targets": [0, 1, 2, 3], "cgroups": 4, "netns": True,
}
# The seccomp program of the last request: decoded in the template (`_fprog` keeps it), so the
# spares cloned after it find it decoded.
_LAST_SECCOMP = [""]


def _ready_spare(any_fd):
    """What a spare does while it waits, so that its request's path is shorter. Returns the
    last capability dropped from its bounding set (-1: none).

    * The request path runs once on a sample, executing nothing; a sample payload is read
      and its environment set; the import system runs (``_warm_imports``): the pages they
      write (reference counts of the code and objects they touch, the interpreter's frames)
      are copied from the template's image now instead of on the path (copy-on-write faults
      were a third of a spare's set-up time).
    * Its random module gets its own seed, and its environment (the template's: set by the
      platform, no function's) is emptied; the request's is set later.
    * Its bounding and ambient capability sets are emptied: that keeps every capability in
      its effective set, which the set-up still needs, and only narrows what an exec could
      ever regain, so doing it before the request is the same sandbox, sooner.
    """
    try:
        req = json.loads(json.dumps(dict(_SAMPLE, seccomp=_LAST_SECCOMP[0])))
        fds = _raise_fds([os.dup(any_fd) for _ in range(len(req["targets"]) + req["cgroups"] + 2)])
        _prepare(req, fds, any_fd)
        for fd in fds:
            os.close(fd)
        payload = os.memfd_create("strata-warm-up", os.MFD_CLOEXEC)
        os.write(payload, json.dumps({"argv": ["python3"], "env": {"STRATA_WARM_UP": "1"}}).encode())
        env, _ = _read_payload(payload)
        _environment(env)
        _environment({})
        _warm_imports()
    except Exception:  # only a warm-up: the request's own path reports what fails
        pass
    random.seed()
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
        for cap in range(last + 1):
            if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                return cap - 1
        _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
        return last
    except (OSError, ValueError):
        return -1


def _learn_seccomp(req):
    """Decode the seccomp program a request (or a notice of one) names, here in the template,
    so the spares cloned after it find it decoded."""
    if isinstance(req, dict) and isinstance(req.get("seccomp"), str) and req["seccomp"] != _LAST_SECCOMP[0]:
        try:
            _fprog(req["seccomp"])
            _LAST_SECCOMP[0] = req["seccomp"]
        except (ValueError, TypeError):
            pass


def _warm_template():
    """The template's own side of a request, on a sample, right after cloning a spare: every
    page of the template is shared with the spare from then on, and the first write to each
    copies it, so the pages a request's parse and answer write are copied now, not while the
    daemon waits."""
    try:
        json.loads(json.dumps(dict(_SAMPLE, seccomp=_LAST_SECCOMP[0])).encode())
        json.dumps({"pid": 1, "fork_us": 1, "spare": True, "id": 1}).encode()
    except (TypeError, ValueError):
        pass


def _warm_imports():
    """The import system's path, as the handler's import will take it: a finder made for a
    directory new to it (its listing read) and a miss there, then a whole import of a small
    module nothing here uses, from its ``.pyc``. Leaves ``sys.path`` and ``sys.modules`` as
    they were."""
    saved = sys.path[:]
    try:
        sys.path_importer_cache.pop(RUNTIME_DIR, None)
        sys.path[:] = [RUNTIME_DIR] + saved
        try:
            __import__("_strata_spare_warm_up")
        except ImportError:
            pass
        had = "colorsys" in sys.modules
        __import__("colorsys")
        if not had:
            del sys.modules["colorsys"]
    finally:
        sys.path[:] = saved
        sys.path_importer_cache.pop(RUNTIME_DIR, None)


class Spare:
    """A sandbox's first process cloned ahead of its request (the clone of this ~15 MB
    process is most of a templated spawn's time): pid 1 of its new namespaces, a child of the
    daemon like any sandbox, waiting on a socket of its own for its request (sent by the
    daemon, which gets the socket's other end with the announcement, or forwarded by the
    template); then it prepares and runs exactly what a sandbox cloned on demand does.
    Until then it has no cgroup, network, descriptors or privileges of any function, and
    holds nothing but the template's image (see ``_ready_spare`` for what it does while it
    waits). It exits when the template and the daemon have both closed its socket. The daemon
    is told its pid as soon as it exists (``{"spare": pid}``), so it can reap it if it is
    never used."""

    def __init__(self, sock):
        self.sock_parent, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = _clone_sandbox()
        if pid == 0:
            report_w = None
            try:
                sock.detach()
                os.close(CTRL_FD)  # the daemon's socket: the template's alone
                self.sock_parent.close()
                dropped = _ready_spare(child_end.fileno())
                data, fds = _recv_with_fds(child_end)
                if not data:
                    os._exit(0)
                child_end.close()
                fds, report_w = _take_report_fd(_raise_fds(fds))
                ops = _prepare(json.loads(data), fds, report_w, dropped)
            except BaseException as e:  # never run half-prepared
                try:
                    if report_w is not None:
                        os.write(report_w, ("setup:0:%s" % e).encode()[:4000])
                finally:
                    os._exit(127)
            _sandbox(ops, fds[-1], report_w, seeded=True)
            os._exit(127)
        child_end.close()
        if pid < 0:
            self.sock_parent.close()
            raise OSError(ctypes.get_errno(), "clone of a spare")
        self.pid = pid

    def hand(self, data, fds):
        """Forward the request and its descriptors; False if the spare is gone."""
        try:
            self.sock_parent.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(fds), *fds))])
            return True
        except OSError:
            return False
        finally:
            self.sock_parent.close()


def _take_report_fd(fds):
    """The request's descriptors without the report pipe's write end (the one before the
    payload, see crates/strata-sandbox/src/template.rs), and that end."""
    if len(fds) < 2:
        raise ValueError("%d descriptors: no report pipe and payload" % len(fds))
    return fds[:-2] + fds[-1:], fds[-2]


def _serve_spare(spare, data, fds):
    """Serve a request with the spare: the answer once it has the request (it reports its
    setup to the daemon itself); None if it is gone (the request is then served by a clone
    made now)."""
    t0 = time.perf_counter()
    if not spare.hand(data, fds):
        return None
    for fd in fds:
        os.close(fd)
    return {"pid": spare.pid, "fork_us": int((time.perf_counter() - t0) * 1e6), "spare": True}


def _serve_one(sock, req, fds):
    """Serve a request with a clone made now: the answer once it exists (it reports its setup
    to the daemon itself)."""
    t0 = time.perf_counter()
    fds = _raise_fds(fds)
    report_w = None
    try:
        fds, report_w = _take_report_fd(fds)
        ops = _prepare(req, fds, report_w)
    except Exception:
        for fd in fds + ([] if report_w is None else [report_w]):
            os.close(fd)
        raise
    payload_fd = fds[-1]
    pid = _clone_sandbox()
    if pid == 0:
        try:
            sock.detach()
        except BaseException:
            os._exit(127)
        _sandbox(ops, payload_fd, report_w)
        os._exit(127)
    for fd in fds + [report_w]:
        os.close(fd)
    if pid < 0:
        return {"error": "clone: %s" % os.strerror(ctypes.get_errno()), "errno": ctypes.get_errno()}
    return {"pid": pid, "fork_us": int((time.perf_counter() - t0) * 1e6)}


def main():
    sock = socket.socket(fileno=CTRL_FD)
    # Objects alive now stay out of the collector's way, so forked instances do not
    # copy-on-write every page just by running a collection.
    gc.collect()
    gc.freeze()
    sock.send(b'{"ready":true}')
    spare, spare_at = None, time.monotonic()
    while True:
        if spare is None and spare_at is not None:
            wait = spare_at - time.monotonic()
            if wait <= 0 or not select.select([sock], [], [], wait)[0]:
                spare_at = None
                try:
                    spare = Spare(sock)
                    # With the spare's own request socket: the daemon hands it the next
                    # request itself and then tells us ({"taken": pid}).
                    socket.send_fds(sock, [json.dumps({"spare": spare.pid}).encode()], [spare.sock_parent.fileno()])
                except OSError:
                    spare = None
                _warm_template()
                continue
        data, fds = _recv_with_fds(sock)
        if not data:
            return
        req = None
        try:
            req = json.loads(data)
            if isinstance(req, dict) and "taken" in req:
                # The daemon handed our spare its request: clone the next one (no answer).
                for fd in fds:
                    os.close(fd)
                if spare is not None and spare.pid == req["taken"]:
                    spare.sock_parent.close()
                    spare, spare_at = None, time.monotonic() + SPARE_DELAY
                _learn_seccomp(req)
                continue
            answer, gone = None, None
            if spare is not None and isinstance(req, dict):
                used, spare = spare, None
                answer = _serve_spare(used, data, fds)
                gone = None if answer is not None else used.pid
            if answer is None:
                answer = _serve_one(sock, req, fds)
            if gone is not None:
                answer["spare_gone"] = gone  # the daemon reaps it
        except Exception as e:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            answer = {"error": "template: %s: %s" % (type(e).__name__, e), "errno": 0}
        answer["id"] = req.get("id") if isinstance(req, dict) else None
        sock.send(json.dumps(answer).encode())
        _learn_seccomp(req)
        if spare is None:
            spare_at = time.monotonic() + SPARE_DELAY


if __name__ == "__main__":
    main()
