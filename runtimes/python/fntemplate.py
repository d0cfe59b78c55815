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
   NEWNET)``; the backend moves it into its own cgroup (or, for a request naming a spare the
   backend reserved with a ``"spare"`` op and already moved, uses that one), then the
   instance makes its own
   cgroup namespace, /tmp and /proc, brings its loopback up, sets its hostname, descriptors
   and rlimits, drops every capability, stacks the strict seccomp filter and serves calls with
   the handler this process imported: no import on its cold path.

It is the pid namespace's init: it reaps the instances (watched through pidfds) and writes
each one's wait status to the pipe the backend gave for it. After each request it forks the
next instance ahead of time, up to its loopback and hostname, so a request that finds it
only hands it its descriptors and waits for its cgroup. When the backend closes the socket it exits, and the kernel
kills every instance with it.
"""

import ctypes
import fcntl
import gc
import json
import os
import random
import select
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
MOVED = b"moved"  # to a prepared spare: the backend has moved it into its cgroup
PREFORK_DELAY = 0.015  # seconds after handing over an instance before forking the next
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
_pyapi = ctypes.pythonapi
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


_poller = None  # select.poll over the control socket and every child's pidfd
_children = {}  # pidfd -> pid, for every instance forked and not yet reaped


def _watch(pid):
    """Reap `pid` when it exits (see _reap). Children are watched through pidfds, not
    SIGCHLD: a signal can be coalesced with another or land while one is blocked, and a
    missed one would leave an instance unreaped with the daemon waiting for its status."""
    pidfd = os.pidfd_open(pid)
    _children[pidfd] = pid
    _poller.register(pidfd, select.POLLIN)


def _reap(pidfd):
    """A watched child has exited: reap it and write its wait status to its status pipe."""
    pid = _children.pop(pidfd)
    _poller.unregister(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
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


def _shape(req):
    """What a pre-forked instance is made for: requests of the same shape can have it."""
    return (req["tmp"], bool(req["netns"]), req["hostname"])


def _early_ops(req):
    """What an instance can do before it has a request: its namespaces are made by the clone;
    here its /tmp, /proc, loopback and hostname. (Kernel objects made now are charged to this
    template's cgroup, not the instance's: a tmpfs superblock, a network namespace.)"""
    mount = zygote._mount_op
    ops = [
        (os.umask, (0o022,), "umask"),
        mount("tmpfs", "/tmp", "tmpfs", zygote.MS_NOSUID | zygote.MS_NODEV, req["tmp"], "tmpfs"),
        mount("proc", "/proc", "proc", zygote.MS_NOSUID | zygote.MS_NODEV | zygote.MS_NOEXEC, None, "proc"),
    ]
    if req["netns"]:
        ops.append((_lo_up, (), "loopback"))
    host = req["hostname"].encode()
    ops.append((_libc.sethostname, (host, len(host)), "hostname"))
    return ops


def _late_ops(req, fds, report_w, moved):
    """What an instance does once it has its request: wait for its cgroup, root a cgroup
    namespace there (both done already when `moved`: a prepared spare), working directory,
    descriptors, rlimits, capabilities, seccomp. fds: go (read end), report (write end), then
    the instance's descriptors in `targets` order."""
    if moved:
        setup = [(os.close, (fds[0],), "cgroup")]
    else:
        setup = [
            (_await_go, (fds[0],), "cgroup"),
            (_libc.unshare, (zygote.CLONE_NEWCGROUP,), "cgroup-ns"),
        ]
    ops = [(os.chdir, (req["cwd"],), "chdir")]
    ops += zygote._descriptor_ops(req, fds[2:], report_w)
    ops += [
        (_libc.prctl, (PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0), "caps"),
        (
            _libc.syscall,
            (ctypes.c_long(zygote.NR["capset"]), ctypes.byref(zygote._NO_CAPS[0]), zygote._NO_CAPS[1]),
            "caps",
        ),
        (_libc.prctl, (zygote.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no-new-privs"),
        zygote._seccomp_op(req["seccomp"]),
    ]
    return setup, ops


def _high(fds):
    """The received descriptors moved above every possible target (< 64)."""
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100) for fd in fds]
    for fd in fds:
        os.close(fd)
    return high


def _instance(early, conn, handler, concurrency):
    """A forked instance (pid 1 of its namespaces); never returns. `early`: its steps before
    a request; `conn`: its end of the socket its request arrives on from this template."""
    try:
        _status.clear()
        _children.clear()
        # Nothing of the template's but the standard streams (replaced later) and the socket.
        os.closerange(3, conn)
        os.closerange(conn + 1, 1 << 20)
        zygote._execute(early)
        os.write(conn, b"r")
        sock = socket.socket(fileno=conn)
        data, fds = zygote._recv_with_fds(sock)
        moved = data == MOVED
        if moved:
            # A prepared spare: the backend has moved it into its cgroup already, so its
            # cgroup namespace is made now, ahead of the request (which then needs no go).
            if _libc.unshare(zygote.CLONE_NEWCGROUP) != 0:
                os._exit(127)
            data, fds = zygote._recv_with_fds(sock)
    except BaseException:
        os._exit(127)
    if not data:
        os._exit(0)  # the template let its spare go
    report_w = None
    try:
        req = json.loads(data)
        fds = _high(fds)
        report_w = fds[1]
        setup, ops = _late_ops(req, fds, report_w, moved)
        t0 = time.perf_counter()
        zygote._execute(setup)
        t1 = time.perf_counter()
        zygote._execute(ops)
        t2 = time.perf_counter()
    except zygote.StepError as e:
        if report_w is not None:
            os.write(report_w, ("%s:%d" % (e.step, e.errno or 0)).encode())
        os._exit(127)
    except BaseException as e:
        if report_w is not None:
            os.write(report_w, ("setup:0:%s" % e).encode()[:4000])
        os._exit(127)
    random.seed()
    os.write(report_w, b"ok %d %d" % ((t1 - t0) * 1e6, (t2 - t1) * 1e6))
    os.close(report_w)
    argv = req["argv"]
    if argv and argv[-1] == BOOTSTRAP:
        bootstrap.serve(handler, concurrency, 0.0)
        bootstrap._die(0)
    zygote._run(argv)


class _Spare:
    """An instance forked ahead of its request, waiting on `conn` (see _instance)."""

    def __init__(self, pid, conn, shape):
        self.pid, self.conn, self.shape = pid, conn, shape
        self.ready = False

    def take(self, wait):
        """Whether it is set up (it said so once), waiting up to `wait` seconds for it."""
        if self.ready:
            return True
        self.conn.settimeout(wait)
        try:
            self.ready = self.conn.recv(1) == b"r"
        except OSError:
            return False
        finally:
            self.conn.settimeout(None)
        return self.ready

    def drop(self):
        self.conn.close()  # it exits on end of file; the reaper collects it


def _fork(req, handler, concurrency):
    """Fork an instance for requests shaped like `req`: (_Spare) or an error answer."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    early = _early_ops(req)
    for s in (sys.__stdout__, sys.__stderr__):
        s.flush()
    conn = theirs.fileno()
    # What os.fork() does around fork(2): the interpreter's own bookkeeping (import lock,
    # threads) and the libraries' os.register_at_fork handlers (random reseeds, for one), so
    # the function's imported modules know they were forked.
    _pyapi.PyOS_BeforeFork()
    pid = zygote._clone(
        zygote.CLONE_NEWPID
        | zygote.CLONE_NEWNS
        | zygote.CLONE_NEWIPC
        | zygote.CLONE_NEWUTS
        | (zygote.CLONE_NEWNET if req["netns"] else 0)
        | zygote.SIGCHLD
    )
    if pid == 0:
        _pyapi.PyOS_AfterFork_Child()
        _instance(early, conn, handler, concurrency)
        os._exit(127)
    _pyapi.PyOS_AfterFork_Parent()
    theirs.close()
    if pid < 0:
        ours.close()
        e = ctypes.get_errno()
        return None, {"error": "clone: %s" % os.strerror(e), "errno": e}
    try:
        _watch(pid)
    except OSError as e:
        # Unwatched, it would never be reaped: take it down now.
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        ours.close()
        return None, {"error": "watching the forked instance: %s" % e, "errno": e.errno or 0}
    return _Spare(pid, ours, _shape(req)), None


_spare = None  # the instance forked ahead for the next request
_reserved = None  # the spare handed to the backend ahead ("spare" op), for the request naming it
_reserved_id = None  # the id of the "spare" op that reserved it


def _reserve(req, handler, concurrency):
    """The "spare" op: a set-up spare of req's shape, reserved for the request that names this
    op's id (the backend moves it into the next instance's cgroup meanwhile). A reserved one
    the backend asks again for was lost on its side: it goes."""
    global _spare, _reserved, _reserved_id
    if _reserved is not None:
        _reserved.drop()
        _reserved = None
    spare, _spare = _spare, None
    if spare is not None and spare.shape != _shape(req):
        spare.drop()
        spare = None
    if spare is None:
        spare, error = _fork(req, handler, concurrency)
        if spare is None:
            return error, None
    if not spare.take(10):
        spare.drop()
        return {"error": "the forked instance died setting up", "errno": 0}, None
    _reserved, _reserved_id = spare, req["id"]
    return {"pid": spare.pid}, os.pidfd_open(spare.pid)


def _moved(req):
    """The "moved" op: the backend has moved the spare it reserved into its cgroup; tell it."""
    if _reserved is None or _reserved_id != req.get("spare"):
        return {"error": "no such prepared instance", "errno": 0}
    try:
        _reserved.conn.send(MOVED)
    except OSError as e:
        return {"error": "telling the prepared instance: %s" % e, "errno": 0}
    return {"ok": True}


def _serve(req, fds, handler, concurrency):
    """Give one request an instance: the spare when it fits, else a new fork. fds: go (read
    end), report (write end), status (write end), the instance's descriptors. Returns the
    answer and the instance's pidfd."""
    global _spare, _reserved, _reserved_id
    t0 = time.perf_counter()
    status_w = fds[2]
    passed = fds[:2] + fds[3:]
    if req.get("spare") is not None:
        # The backend's prepared spare (already in its cgroup), and nothing else.
        spare, _reserved = _reserved, None
        if spare is None or _reserved_id != req["spare"] or spare.shape != _shape(req) or not spare.take(0):
            if spare is not None:
                spare.drop()
            for fd in fds:
                os.close(fd)
            return {"error": "the prepared instance is gone", "errno": 0}, None
    else:
        spare, _spare = _spare, None
    if spare is not None and not (spare.shape == _shape(req) and spare.take(0.1)):
        spare.drop()
        spare = None
    prefork = spare is not None
    if spare is None:
        spare, error = _fork(req, handler, concurrency)
        if spare is None:
            for fd in fds:
                os.close(fd)
            return error, None
        if not spare.take(10):
            spare.drop()
            for fd in fds:
                os.close(fd)
            return {"error": "the forked instance died setting up", "errno": 0}, None
    pidfd = None
    try:
        _status[spare.pid] = status_w
        pidfd = os.pidfd_open(spare.pid)
        spare.conn.sendmsg(
            [json.dumps(req).encode()],
            [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("%di" % len(passed), *passed))],
        )
    except OSError as e:
        _status.pop(spare.pid, None)
        for fd in fds + ([pidfd] if pidfd is not None else []):
            os.close(fd)
        spare.drop()
        return {"error": "handing the request to the instance: %s" % e, "errno": 0}, None
    for fd in passed:
        os.close(fd)
    spare.conn.close()
    return {"pid": spare.pid, "fork_us": int((time.perf_counter() - t0) * 1e6), "prefork": prefork}, pidfd


def _prefork(req, handler, concurrency):
    """After answering: fork the next request's instance ahead of time."""
    global _spare
    if _spare is None:
        _spare, _ = _fork(req, handler, concurrency)


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
    global _poller
    _poller = select.poll()
    _poller.register(CTRL_FD, select.POLLIN)
    gc.collect()
    gc.freeze()
    sock.send(json.dumps({"ready": True, "import_ms": got}).encode())
    prefork = None  # (request, when): the next instance to fork ahead, once the CPU is quiet
    while True:
        wait = None if prefork is None else max(0, int((prefork[1] - time.monotonic()) * 1000))
        ready = [fd for fd, _ in _poller.poll(wait)]
        for fd in ready:
            if fd != CTRL_FD:
                _reap(fd)
        if prefork is not None and time.monotonic() >= prefork[1]:
            try:
                _prefork(prefork[0], handler, concurrency)
            except Exception:
                pass
            prefork = None
        if CTRL_FD not in ready:
            continue
        data, fds = zygote._recv_with_fds(sock)
        if not data:
            break
        req, pidfd = None, None
        try:
            fds = _high(fds)
            req = json.loads(data)
            if req.get("op") in ("spare", "moved"):
                for fd in fds:
                    os.close(fd)
                if req["op"] == "spare":
                    answer, pidfd = _reserve(req, handler, concurrency)
                else:
                    answer = _moved(req)
            else:
                answer, pidfd = _serve(req, fds, handler, concurrency)
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
            if req.get("op") != "spare":  # (a reserved spare waits for the next request)
                # Not at once: the instance just handed over is starting its first call, and
                # a fork (copying this process's page tables) would compete with it for the
                # CPU. A request in the meantime forks on demand.
                prefork = (req, time.monotonic() + PREFORK_DELAY)
            else:
                prefork = None
    bootstrap._die(0)


if __name__ == "__main__":
    main()
