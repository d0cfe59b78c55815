"""Strata Python function template: one function's handler imported once, instances forked.

Started by the platform as a sandbox of the function (from the runtime template or from
scratch) with ``python3 -I -S /strata/runtime/python/fntemplate.py``, fd 3 a SOCK_SEQPACKET
socket to the backend (crates/strata-sandbox/src/fork.rs documents the protocol), under the
``Forker`` seccomp filter. It:

1. imports the function's handler, as the sandbox's unprivileged user, and tells the backend
   ``{"ready": true, "import_ms": …}`` or ``{"init_error": "…"}``;
2. moves into a user namespace of its own (the sandbox's uid and gid mapped to themselves),
   where it holds capabilities over namespaces it makes, and nothing else: every namespace
   and file it already has belongs to the host's user namespace;
3. per request forks an instance with ``clone(CLONE_NEWPID | NEWNS | NEWIPC | NEWUTS |
   NEWNET)``; the backend moves it into its own cgroup, then the instance makes its own
   cgroup namespace, /tmp and /proc, brings its loopback up, sets its hostname, descriptors
   and rlimits, drops every capability, stacks the strict seccomp filter and serves calls with
   the handler this process imported: no import on its cold path.

It is the pid namespace's init: it reaps the instances and writes each one's wait status to
the pipe the backend gave for it. When the backend closes the socket it exits, and the kernel
kills every instance with it.
"""

import ctypes
import fcntl
import gc
import json
import os
import random
import signal
import socket
import struct
import sys
import time

RUNTIME_DIR = "/strata/runtime/python"
if RUNTIME_DIR not in sys.path:
    sys.path.insert(0, RUNTIME_DIR)
import bootstrap  # noqa: E402
import zygote  # noqa: E402  (the runtime template's helpers; already loaded when forked from it)

CTRL_FD = 3
BOOTSTRAP = RUNTIME_DIR + "/bootstrap.py"
CLONE_NEWUSER = 0x10000000
PR_CAPBSET_DROP = 24
PR_SET_SECUREBITS = 28
# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP | …_LOCKED | SECBIT_KEEP_CAPS_LOCKED
SECUREBITS = 0x01 | 0x02 | 0x04 | 0x08 | 0x20
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = zygote._libc
_status = {}  # instance pid (in this namespace) -> the write end of its status pipe


def _write_file(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _enter_user_namespace():
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER): %s" % os.strerror(ctypes.get_errno()))
    _write_file("/proc/self/setgroups", "deny")
    _write_file("/proc/self/uid_map", "%d %d 1" % (uid, uid))
    _write_file("/proc/self/gid_map", "%d %d 1" % (gid, gid))


def _reap(_signum, _frame):
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        fd = _status.pop(pid, None)
        if fd is not None:
            try:
                os.write(fd, struct.pack("i", status))
            except OSError:
                pass
            os.close(fd)


def _lo_up():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sh14x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def _await_go(fd):
    """Wait until the backend has moved this process into its cgroup."""
    got = os.read(fd, 1)
    os.close(fd)
    if got != b"1":
        raise zygote.StepError("cgroup", 125)  # ECANCELED: the backend gave up


def _prepare(req, fds, report_w):
    """The instance's steps, as (function, arguments, step name) lists: mounts, then the rest.
    Built before the clone, like the runtime template's (see zygote._prepare)."""
    mount = zygote._mount_op
    go_r = fds[0]
    mounts = [
        (_await_go, (go_r,), "cgroup"),
        (_libc.unshare, (zygote.CLONE_NEWCGROUP,), "cgroup-ns"),
        (os.umask, (0o022,), "umask"),
        mount("tmpfs", "/tmp", "tmpfs", zygote.MS_NOSUID | zygote.MS_NODEV, req["tmp"], "tmpfs"),
        mount("proc", "/proc", "proc", zygote.MS_NOSUID | zygote.MS_NODEV | zygote.MS_NOEXEC, None, "proc"),
    ]
    if req["netns"]:
        mounts.append((_lo_up, (), "loopback"))
    host = req["hostname"].encode()
    ops = [
        (_libc.sethostname, (host, len(host)), "hostname"),
        (os.chdir, (req["cwd"],), "chdir"),
    ]
    targets = req["targets"]
    rest = fds[3:]
    if len(rest) != len(targets):
        raise ValueError("%d descriptors for %d targets" % (len(rest), len(targets)))
    for src, target in zip(rest, targets):
        ops.append((os.dup2, (src, target, True), "fds"))
    lo = 0
    for keep in sorted(set(targets) | {report_w}):
        if lo < keep:
            ops.append((os.closerange, (lo, keep), "fds"))
        lo = keep + 1
    ops.append((os.closerange, (lo, 1 << 20), "fds"))
    for res, value in req["rlimits"]:
        ops.append((zygote.resource.setrlimit, (res, (value, value)), "rlimit"))
    for cap in range(req["cap_last"] + 1):
        ops.append((_libc.prctl, (PR_CAPBSET_DROP, cap, 0, 0, 0), "caps"))
    ops += [
        (_libc.prctl, (zygote.PR_CAP_AMBIENT, zygote.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "caps"),
        (_libc.prctl, (PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0), "caps"),
        (
            _libc.syscall,
            (ctypes.c_long(zygote.NR["capset"]), ctypes.byref(zygote._NO_CAPS[0]), zygote._NO_CAPS[1]),
            "caps",
        ),
        (_libc.prctl, (zygote.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no-new-privs"),
        (
            _libc.prctl,
            (zygote.PR_SET_SECCOMP, zygote.SECCOMP_MODE_FILTER, ctypes.addressof(zygote._fprog(req["seccomp"])), 0, 0),
            "seccomp",
        ),
    ]
    return mounts, ops


def _instance(ops, report_w, argv, handler, concurrency):
    """The forked instance (pid 1 of its namespaces); never returns."""
    mounts, rest = ops
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        _status.clear()
        t0 = time.perf_counter()
        zygote._execute(mounts)
        t1 = time.perf_counter()
        zygote._execute(rest)
        t2 = time.perf_counter()
    except zygote.StepError as e:
        os.write(report_w, ("%s:%d" % (e.step, e.errno or 0)).encode())
        os._exit(127)
    except BaseException as e:
        os.write(report_w, ("setup:0:%s" % e).encode()[:4000])
        os._exit(127)
    random.seed()
    os.write(report_w, b"ok %d %d" % ((t1 - t0) * 1e6, (t2 - t1) * 1e6))
    os.close(report_w)
    if argv and argv[-1] == BOOTSTRAP:
        bootstrap.serve(handler, concurrency, 0.0)
        bootstrap._die(0)
    zygote._run(argv)


def _fork_one(req, fds, handler, concurrency):
    """fds: go (read end), report (write end), status (write end), then the instance's
    descriptors in `targets` order."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    fds = high
    report_w, status_w = fds[1], fds[2]
    try:
        ops = _prepare(req, fds, report_w)
    except Exception:
        for fd in fds:
            os.close(fd)
        raise
    for s in (sys.__stdout__, sys.__stderr__):
        s.flush()
    t0 = time.perf_counter()
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    try:
        pid = zygote._clone(
            zygote.CLONE_NEWPID
            | zygote.CLONE_NEWNS
            | zygote.CLONE_NEWIPC
            | zygote.CLONE_NEWUTS
            | (zygote.CLONE_NEWNET if req["netns"] else 0)
            | zygote.SIGCHLD
        )
        if pid == 0:
            _instance(ops, report_w, req["argv"], handler, concurrency)
            os._exit(127)
        if pid > 0:
            _status[pid] = status_w
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
    for fd in fds:
        if not (pid > 0 and fd == status_w):
            os.close(fd)
    if pid < 0:
        e = ctypes.get_errno()
        return {"error": "clone: %s" % os.strerror(e), "errno": e}, None
    pidfd = os.pidfd_open(pid)
    return {"pid": pid, "fork_us": int((time.perf_counter() - t0) * 1e6)}, pidfd


def main():
    sock = socket.socket(fileno=CTRL_FD)
    spec, concurrency = bootstrap.setup(RUNTIME_DIR)
    handler, got = bootstrap.load(spec)
    if handler is None:
        sock.send(json.dumps({"init_error": got}).encode())
        bootstrap._die(1)
    try:
        _enter_user_namespace()
    except OSError as e:
        # Threads started by the import, for one, make unshare fail: no template then.
        sock.send(json.dumps({"error": "user namespace: %s" % e}).encode())
        bootstrap._die(1)
    signal.signal(signal.SIGCHLD, _reap)
    gc.collect()
    gc.freeze()
    sock.send(json.dumps({"ready": True, "import_ms": got}).encode())
    fd_space = socket.CMSG_SPACE(64 * 4)
    while True:
        try:
            data, anc, _flags, _addr = sock.recvmsg(1 << 20, fd_space)
        except OSError:
            break
        if not data:
            break
        fds = []
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                n = len(payload) // 4
                fds.extend(struct.unpack("%di" % n, payload[: n * 4]))
        req, pidfd = None, None
        try:
            req = json.loads(data)
            answer, pidfd = _fork_one(req, fds, handler, concurrency)
        except Exception as e:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            answer = {"error": "function template: %s: %s" % (type(e).__name__, e), "errno": 0}
        answer["id"] = req.get("id") if isinstance(req, dict) else None
        out = json.dumps(answer).encode()
        if pidfd is None:
            sock.send(out)
        else:
            sock.sendmsg([out], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", pidfd))])
            os.close(pidfd)
    bootstrap._die(0)


if __name__ == "__main__":
    main()
