#!/usr/bin/env python3
"""Tests for the Strata language runtimes (protocol v1, docs/protocol.md), run
without the sandbox: each test starts a bootstrap (or examples/hello-c) with one
end of a socketpair as fd 3 and plays the platform on the other end.

    python3 runtimes/test_runtimes.py            # the tests (unittest, stdlib only)
    python3 runtimes/test_runtimes.py -v NodeRuntimeTests
    python3 runtimes/test_runtimes.py --bench    # sequential invoke round trips per second
    python3 runtimes/test_runtimes.py --startup  # time from exec to the ready frame

Interpreters: /usr/bin/python3 and /usr/bin/node (override with STRATA_TEST_PYTHON /
STRATA_TEST_NODE); the C example is built with $CC (default gcc). A runtime whose
interpreter is missing is skipped.
"""

import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import urllib.parse
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PYTHON = os.environ.get("STRATA_TEST_PYTHON", "/usr/bin/python3")
NODE = os.environ.get("STRATA_TEST_NODE", "/usr/bin/node")
CC = os.environ.get("CC", "gcc")
PY_RUNTIME = os.path.join(HERE, "python")
PY_BOOTSTRAP = os.path.join(PY_RUNTIME, "bootstrap.py")
NODE_BOOTSTRAP = os.path.join(HERE, "node", "bootstrap.js")
HELLO_C = os.path.join(REPO, "examples", "hello-c", "main.c")
TIMEOUT = 20.0

U32 = struct.Struct(">I")
TEXT = "text/plain; charset=utf-8"
BIN = "application/octet-stream"
JSON_CT = "application/json"
ALL_BYTES = bytes(range(256))


# ----------------------------------------------------------------------- harness


def encode_frame(header, body=b""):
    h = json.dumps(header, separators=(",", ":")).encode()
    return U32.pack(len(h)) + h + U32.pack(len(body)) + body


class Result:
    """A call's outcome: the final frame (response or error) and the log frames before it."""

    def __init__(self, header, body, logs):
        self.header = header
        self.t = header["t"]
        self.status = header.get("status")
        self.headers = header.get("headers")
        self.message = header.get("message")
        self.body = body
        self.logs = logs  # [(stream, line)]

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return "Result(%r, body=%r, logs=%r)" % (self.header, self.body[:200], self.logs)


class Instance:
    """A runtime process with fd 3 = one end of a socketpair; we are the platform."""

    def __init__(self, argv, env=None, cwd=None):
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        cfd = child.fileno()

        def as_fd3():
            # Runs in the child between fork and exec: put the control channel on fd 3.
            if cfd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(cfd, 3)  # the copy is inheritable

        full_env = {"PATH": "/usr/bin:/bin", "STRATA_FUNCTION": "test-fn", "STRATA_VERSION": "1"}
        full_env.update(env or {})
        # close_fds=False: our own descriptors are all close-on-exec (PEP 446), and
        # close_fds=True would close the fd 3 made by the dup2 above.
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
            preexec_fn=as_fd3,
            close_fds=False,
        )
        child.close()
        parent.settimeout(TIMEOUT)
        self.sock = parent
        self.rf = parent.makefile("rb")
        self._out = {"stdout": [], "stderr": []}
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._drain, args=(self.proc.stderr, "stderr"), daemon=True),
        ]
        for t in self._readers:
            t.start()
        self._next_id = 0

    def _drain(self, pipe, name):
        for chunk in iter(lambda: pipe.read1(65536), b""):
            self._out[name].append(chunk)

    def output(self, name):
        """The process's real stdout/stderr so far (complete once it has exited)."""
        return b"".join(self._out[name]).decode("utf-8", "replace")

    def send(self, header, body=b""):
        self.sock.sendall(encode_frame(header, body))

    def recv(self):
        b = self.rf.read(4)
        if len(b) < 4:
            raise EOFError("control channel closed; stderr: %s" % self.stderr_when_dead())
        (hl,) = U32.unpack(b)
        header = json.loads(self.rf.read(hl))
        (bl,) = U32.unpack(self.rf.read(4))
        body = self.rf.read(bl)
        assert len(body) == bl
        return header, body

    def stderr_when_dead(self):
        try:
            self.proc.wait(2)
        except subprocess.TimeoutExpired:
            pass
        for t in self._readers:
            t.join(1)
        return self.output("stderr")

    def ready(self):
        h, body = self.recv()
        assert h["t"] == "ready", (h, self.stderr_when_dead() if h["t"] == "init_error" else "")
        assert body == b""
        return h

    def new_id(self):
        self._next_id += 1
        return "call-%d" % self._next_id

    def start_invoke(self, path="/", body=b"", method="POST", query="", headers=(), cid=None):
        cid = cid or self.new_id()
        self.send(
            {"t": "invoke", "id": cid, "method": method, "path": path, "query": query,
             "headers": [list(h) for h in headers]},
            body,
        )
        return cid

    def collect(self, ids):
        """Read frames until every id in ids has its response/error; {id: Result}."""
        pending = set(ids)
        logs = {i: [] for i in ids}
        results = {}
        while pending:
            h, body = self.recv()
            cid = h.get("id")
            if cid not in pending:
                raise AssertionError("frame for an unexpected id: %r %r" % (h, body))
            if h["t"] == "log":
                assert body == b"", h
                logs[cid].append((h["stream"], h["line"]))
            elif h["t"] in ("response", "error"):
                if h["t"] == "error":
                    assert body == b"", h
                results[cid] = Result(h, body, logs[cid])
                pending.discard(cid)
            else:
                raise AssertionError("unexpected frame %r" % h)
        return results

    def invoke(self, path="/", body=b"", **kw):
        cid = self.start_invoke(path, body, **kw)
        return self.collect([cid])[cid]

    def shutdown(self):
        try:
            self.send({"t": "shutdown"})
        except OSError:
            pass
        return self.wait()

    def wait(self, timeout=10):
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def close(self):
        try:
            self.rf.close()
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._readers:
            t.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


# --------------------------------------------------------------- test handlers

PY_MAIN = r'''
import asyncio
import json
import os
import sys
import time

from strata import Response

_here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(_here, "imports.log"), "a") as f:
    f.write("x")
print("top-level output")
CALLS = 0


class Unserialisable:
    pass


def handle(req):
    global CALLS
    CALLS += 1
    p = req.path
    if p == "/str":
        return "hello"
    if p == "/bytes":
        return bytes(range(256))
    if p == "/dict":
        return {"a": 1, "b": [True, None, "\u00e9"]}
    if p == "/list":
        return [1, "two"]
    if p == "/int":
        return 42
    if p == "/none":
        return None
    if p == "/resp":
        return Response(201, {"x-h": "v", "set-cookie": ["a=1", "b=2"]}, "h\u00e9llo")
    if p == "/resp-json":
        return Response(202, [("x-a", "1")], {"k": "v"})
    if p == "/resp-ct":
        return Response(200, {"Content-Type": "text/html"}, "<p>")
    if p == "/status":
        return {"status": 201, "body": "x"}
    if p == "/status-full":
        return {"status": 404, "headers": {"x-y": "z"}, "body": b"\x00\xff"}
    if p == "/status-only":
        return {"status": 304}
    if p == "/not-status":
        return {"status": "ok", "n": 1}
    if p == "/echo":
        return {
            "id": req.id,
            "method": req.method,
            "path": req.path,
            "query": req.query,
            "query_string": req.query_string,
            "query_list": [list(x) for x in req.query_list],
            "headers": dict(req.headers),
            "header_list": [list(x) for x in req.header_list],
            "ct": req.headers.get("content-type"),
            "body_type": type(req.body).__name__,
            "body_hex": req.body.hex(),
        }
    if p == "/echo-body":
        return req.body
    if p == "/json":
        return {"got": req.json(), "text": req.text()}
    if p == "/raise":
        raise ValueError("boom " + req.query.get("n", ""))
    if p == "/unserialisable":
        return {"x": Unserialisable()}
    if p == "/bad-status":
        return Response("200", None, "x")
    if p == "/print":
        print("hello", "world")
        print("to stderr", file=sys.stderr)
        print("two\nlines")
        sys.stdout.write("no newline")
        return "printed"
    if p == "/count":
        with open(os.path.join(_here, "imports.log")) as f:
            return {"pid": os.getpid(), "calls": CALLS, "imports": f.read()}
    if p == "/sleep":
        tag = req.query["tag"]
        print("start " + tag)
        time.sleep(int(req.query["ms"]) / 1000)
        print("end " + tag)
        return {"tag": tag, "id": req.id}
    if p == "/coro":
        async def inner():
            await asyncio.sleep(0.001)
            print("in coro")
            return "from coroutine"
        return inner()
    if p == "/exit":
        sys.exit(3)
    if p == "/case":
        return [req.headers["X-Mixed"], req.headers.get("X-MIXED"), "x-mixed" in req.headers]
    if p == "/big":
        return b"z" * int(req.query["n"])
    if p == "/long-line":
        print("L" * 300000)
        return "ok"
    if p == "/huge-error":
        raise ValueError("E" * 2000000)
    return Response(404, None, "no route " + p)


async def ahandle(req):
    if req.path == "/sleep":
        tag = req.query["tag"]
        print("start " + tag)
        await asyncio.sleep(int(req.query["ms"]) / 1000)
        print("end " + tag)
        return {"tag": tag, "id": req.id}
    await asyncio.sleep(0)
    print("async log")
    if req.path == "/raise":
        raise RuntimeError("async boom")
    return "async " + req.method


def trivial(req):
    return "ok"
'''

NODE_MAIN = r'''
const fs = require('fs');
const path = require('path');
const { Response } = require('strata');

fs.appendFileSync(path.join(__dirname, 'imports.log'), 'x');
console.log('top-level output');
let CALLS = 0;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

exports.handle = (req) => {
  CALLS++;
  switch (req.path) {
    case '/str': return 'hello';
    case '/bytes': return Buffer.from([...Array(256).keys()]);
    case '/dict': return { a: 1, b: [true, null, '\u00e9'] };
    case '/list': return [1, 'two'];
    case '/int': return 42;
    case '/none': return undefined;
    case '/resp': return new Response(201, { 'x-h': 'v', 'set-cookie': ['a=1', 'b=2'] }, 'h\u00e9llo');
    case '/resp-json': return new Response(202, [['x-a', '1']], { k: 'v' });
    case '/resp-ct': return new Response(200, { 'Content-Type': 'text/html' }, '<p>');
    case '/status': return { status: 201, body: 'x' };
    case '/status-full': return { status: 404, headers: { 'x-y': 'z' }, body: Buffer.from([0, 255]) };
    case '/status-only': return { status: 304 };
    case '/not-status': return { status: 'ok', n: 1 };
    case '/echo': return {
      id: req.id,
      method: req.method,
      path: req.path,
      query: req.query,
      query_string: req.query_string,
      query_list: req.query_list,
      headers: req.headers,
      header_list: req.header_list,
      ct: req.headers['content-type'],
      body_type: Buffer.isBuffer(req.body) ? 'bytes' : typeof req.body,
      body_hex: req.body.toString('hex'),
    };
    case '/echo-body': return req.body;
    case '/json': return { got: req.json(), text: req.text() };
    case '/raise': throw new Error('boom ' + (req.query.n || ''));
    case '/unserialisable': return { x: 10n };
    case '/bad-status': return new Response('200', null, 'x');
    case '/print':
      console.log('hello', 'world');
      console.error('to stderr');
      console.log('two\nlines');
      process.stdout.write('no newline');
      return 'printed';
    case '/count': return { pid: process.pid, calls: CALLS, imports: fs.readFileSync(path.join(__dirname, 'imports.log'), 'utf8') };
    case '/sleep': return (async () => {
      const tag = req.query.tag;
      console.log('start ' + tag);
      await sleep(Number(req.query.ms));
      console.log('end ' + tag);
      return { tag, id: req.id };
    })();
    case '/coro': return (async () => {
      await sleep(1);
      console.log('in coro');
      return 'from coroutine';
    })();
    case '/reject': return Promise.reject(new Error('rejected boom'));
    case '/stray-reject': Promise.reject(new Error('stray rejection')); return 'still fine';
    case '/web-response': return new globalThis.Response('web', { status: 202, headers: { 'x-w': '1' } });
    case '/big': return Buffer.alloc(Number(req.query.n), 'z');
    case '/long-line': console.log('L'.repeat(300000)); return 'ok';
    case '/huge-error': throw new Error('E'.repeat(2000000));
    default: return new Response(404, null, 'no route ' + req.path);
  }
};

exports.ahandle = async (req) => {
  await null;
  console.log('async log');
  if (req.path === '/raise') throw new Error('async boom');
  return 'async ' + req.method;
};

exports.trivial = () => 'ok';
exports.notAFunction = 42;
'''


PY_LEAN_MAIN = r"""
import sys

AT_IMPORT = sorted(sys.modules)


def handle(req):
    p = req.path
    if p == "/modules":
        return {"at_import": AT_IMPORT, "now": sorted(sys.modules)}
    if p == "/json":
        return {"repr": repr(req.json())}
    if p == "/query":
        return {"list": req.query_list, "dict": req.query}
    if p == "/json-error":
        try:
            req.json()
        except ValueError as e:
            return {"type": type(e).__name__, "msg": str(e)}
        return "no error"
    if p == "/mixed":
        return MIXED
    if p == "/str":
        return "hello"
    if p == "/nan":
        return {"x": [1.5, float("nan")]}
    if p == "/inf":
        return float("-inf")
    if p == "/cycle":
        d = {"a": [1]}
        d["a"].append(d)
        return d
    if p == "/bad-key":
        return {(1, 2): 1}
    if p == "/nested-bad":
        OUTER.append({"x": object()})
        return OUTER
    if p == "/outer-ok":
        del OUTER[2:]
        return OUTER
    if p == "/surrogate":
        return ["\ud800"]
    return {"path": p}


OUTER = [1, [2]]
"""

# What /mixed returns (Python source); the test compares the body with json.dumps of it.
PY_LEAN_MIXED = (r"""{"s": "\u00e9\u4e2d\U0001f600\"\\\n\x01\x7f\u2028", "i": -3, "f": 0.1, "e": 1e300, "big": 10**30,"""
                 r""" "t": True, "n": None, "k": {1: "int key", None: 0, 2.5: 1, False: 2}, "l": [[], {}, (1, 2)]}""")
PY_LEAN_MAIN += "MIXED = " + PY_LEAN_MIXED + "\n"


def compiled_python_runtime(dest):
    """A copy of runtimes/python in dest/python with bootstrap.py and strata.py byte-compiled
    into __pycache__, as the platform writes the runtime folder."""
    d = os.path.join(dest, "python")
    shutil.copytree(PY_RUNTIME, d, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([PYTHON, "-I", "-S", "-c", "import py_compile, sys\n"
                    "for f in sys.argv[1:]:\n    py_compile.compile(f, doraise=True)\n",
                    os.path.join(d, "bootstrap.py"), os.path.join(d, "strata.py")], check=True)
    return d


def write_files(d, files):
    for name, content in files.items():
        p = os.path.join(d, name)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(textwrap.dedent(content))


# ------------------------------------------------------------------------ tests


class RuntimeCases:
    """Tests shared by the Python and Node runtimes; subclasses set these."""

    interp = None
    main_file = None  # file name of the test handler module
    main_src = None
    error_class = None  # how the runtime prints the /raise exception

    def argv(self):
        raise NotImplementedError

    def setUp(self):
        if not os.path.exists(self.interp):
            self.skipTest("%s not found" % self.interp)
        self.code_dir = tempfile.mkdtemp(prefix="strata-rt-test-")
        self.addCleanup(shutil.rmtree, self.code_dir, True)
        self.instances = []

    def tearDown(self):
        for inst in self.instances:
            inst.close()

    def start(self, handler="main:handle", files=None, concurrency=None, env=None, expect_ready=True, argv=None):
        write_files(self.code_dir, files if files is not None else {self.main_file: self.main_src})
        e = {"STRATA_CODE_DIR": self.code_dir, "STRATA_HANDLER": handler}
        if concurrency is not None:
            e["STRATA_CONCURRENCY"] = str(concurrency)
        e.update(env or {})
        inst = Instance(argv or self.argv(), env=e, cwd="/")
        self.instances.append(inst)
        if expect_ready:
            inst.ready()
        return inst

    # --- startup / shutdown

    def test_ready_frame(self):
        inst = self.start(expect_ready=False)
        h, body = inst.recv()
        self.assertEqual(h["t"], "ready", h)
        self.assertIsInstance(h["import_ms"], float)
        self.assertGreaterEqual(h["import_ms"], 0.0)
        self.assertEqual(body, b"")
        self.assertEqual(inst.shutdown(), 0)
        # Output outside any call goes to the real stdout.
        self.assertIn("top-level output", inst.output("stdout"))

    def test_shutdown_exits_promptly(self):
        inst = self.start()
        self.assertEqual(inst.invoke("/str").status, 200)
        t0 = time.monotonic()
        self.assertEqual(inst.shutdown(), 0)
        self.assertLess(time.monotonic() - t0, 2.0)

    def test_eof_exits_zero(self):
        inst = self.start()
        inst.sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(inst.wait(), 0)

    # --- return values

    def check(self, inst, path, status, headers, body):
        r = inst.invoke(path)
        self.assertEqual(r.t, "response", r)
        self.assertEqual(r.status, status, r)
        self.assertEqual(r.headers, headers, r)
        if callable(body):
            body(r.body)
        else:
            self.assertEqual(r.body, body, r)
        return r

    def test_return_values(self):
        inst = self.start()
        c = lambda *a: self.check(inst, *a)  # noqa: E731
        as_json = lambda want: lambda got: self.assertEqual(json.loads(got), want)  # noqa: E731
        c("/str", 200, [["content-type", TEXT]], b"hello")
        c("/bytes", 200, [["content-type", BIN]], ALL_BYTES)
        c("/dict", 200, [["content-type", JSON_CT]], as_json({"a": 1, "b": [True, None, "\u00e9"]}))
        c("/list", 200, [["content-type", JSON_CT]], as_json([1, "two"]))
        c("/int", 200, [["content-type", JSON_CT]], b"42")
        c("/none", 204, [], b"")
        c("/resp", 201, [["x-h", "v"], ["set-cookie", "a=1"], ["set-cookie", "b=2"], ["content-type", TEXT]],
          "h\u00e9llo".encode())
        c("/resp-json", 202, [["x-a", "1"], ["content-type", JSON_CT]], as_json({"k": "v"}))
        c("/resp-ct", 200, [["Content-Type", "text/html"]], b"<p>")
        c("/status", 201, [["content-type", TEXT]], b"x")
        c("/status-full", 404, [["x-y", "z"], ["content-type", BIN]], b"\x00\xff")
        c("/status-only", 304, [], b"")
        c("/not-status", 200, [["content-type", JSON_CT]], as_json({"status": "ok", "n": 1}))
        r = c("/coro", 200, [["content-type", TEXT]], b"from coroutine")
        self.assertEqual(r.logs, [("stdout", "in coro")])
        c("/", 404, [["content-type", TEXT]], b"no route /")

    def test_unserialisable_and_invalid_results_are_errors(self):
        inst = self.start()
        r = inst.invoke("/unserialisable")
        self.assertEqual(r.t, "error", r)
        self.assertIn("serialis", r.message)
        r = inst.invoke("/bad-status")
        self.assertEqual(r.t, "error", r)
        self.assertIn("status", r.message)
        self.assertEqual(inst.invoke("/str").body, b"hello")

    # --- requests

    def test_request_fields_arrive_intact(self):
        inst = self.start()
        headers = [
            ["content-type", "application/octet-stream"],
            ["x-multi", "1"],
            ["x-multi", "2"],
            ["x-utf", "\u00e9\u4e2d"],
        ]
        query = "a=1&b=two%20words&a=3&empty=&flag&plus=x+y&enc=%C3%A9"
        r = inst.invoke("/echo", ALL_BYTES, method="PUT", query=query, headers=headers, cid="id-\"quoted\"-\u00e9")
        self.assertEqual(r.t, "response", r)
        got = r.json()
        self.assertEqual(got["id"], "id-\"quoted\"-\u00e9")
        self.assertEqual(got["method"], "PUT")
        self.assertEqual(got["path"], "/echo")
        self.assertEqual(got["query_string"], query)
        self.assertEqual(got["query"], {"a": "3", "b": "two words", "empty": "", "flag": "", "plus": "x y", "enc": "\u00e9"})
        self.assertEqual(
            got["query_list"],
            [["a", "1"], ["b", "two words"], ["a", "3"], ["empty", ""], ["flag", ""], ["plus", "x y"], ["enc", "\u00e9"]],
        )
        self.assertEqual(
            got["headers"],
            {"content-type": "application/octet-stream", "x-multi": "1, 2", "x-utf": "\u00e9\u4e2d"},
        )
        self.assertEqual(got["header_list"], headers)
        self.assertEqual(got["ct"], "application/octet-stream")
        self.assertEqual(got["body_type"], "bytes")
        self.assertEqual(bytes.fromhex(got["body_hex"]), ALL_BYTES)

        # The body round-trips byte for byte, small and large (> one socket buffer).
        r = inst.invoke("/echo-body", ALL_BYTES * 3)
        self.assertEqual(r.body, ALL_BYTES * 3)
        big = os.urandom(3 * 1024 * 1024 + 17)
        r = inst.invoke("/echo-body", big)
        self.assertEqual((r.status, len(r.body)), (200, len(big)))
        self.assertEqual(r.body, big)
        r = inst.invoke("/big", query="n=2000000")
        self.assertEqual(r.body, b"z" * 2000000)

        # Empty query, no headers, empty body.
        r = inst.invoke("/echo", method="GET")
        got = r.json()
        self.assertEqual((got["query"], got["query_list"], got["query_string"]), ({}, [], ""))
        self.assertEqual((got["headers"], got["header_list"], got["body_hex"]), ({}, [], ""))

        r = inst.invoke("/json", b'{"x": [1, 2], "s": "\xc3\xa9"}')
        self.assertEqual(r.json(), {"got": {"x": [1, 2], "s": "\u00e9"}, "text": '{"x": [1, 2], "s": "\u00e9"}'})

    # --- errors

    def test_handler_exception_is_error_frame_and_instance_keeps_serving(self):
        inst = self.start()
        for n in range(3):
            r = inst.invoke("/raise", query="n=%d" % n)
            self.assertEqual(r.t, "error", r)
            self.assertIn("%s: boom %d" % (self.error_class, n), r.message)
            self.assertIn(self.main_file, r.message)  # the traceback / stack
            self.assertEqual(inst.invoke("/str").body, b"hello")
        self.assertEqual(inst.invoke("/count").json()["calls"], 7)  # 6 + this one

    def test_init_error_on_import_failure(self):
        inst = self.start(files=self.broken_files, expect_ready=False)
        h, body = inst.recv()
        self.assertEqual(h["t"], "init_error", h)
        self.assertIn("kaboom at import", h["message"])
        self.assertEqual(body, b"")
        self.assertEqual(inst.wait(), 1)

    def test_init_error_on_syntax_error(self):
        inst = self.start(files=self.syntax_error_files, expect_ready=False)
        h, _ = inst.recv()
        self.assertEqual(h["t"], "init_error", h)
        self.assertIn("SyntaxError", h["message"])
        self.assertEqual(inst.wait(), 1)

    def test_init_error_on_missing_module_or_function(self):
        for handler, needle in [("nope:handle", "nope"), ("main:missing", "missing")]:
            inst = self.start(handler=handler, expect_ready=False)
            h, _ = inst.recv()
            self.assertEqual(h["t"], "init_error", h)
            self.assertIn(needle, h["message"])
            self.assertEqual(inst.wait(), 1)

    # --- output capture

    def test_output_during_call_becomes_log_frames(self):
        inst = self.start()
        cid = inst.start_invoke("/print")
        frames = []
        while True:
            h, body = inst.recv()
            frames.append(h)
            if h["t"] != "log":
                break
        self.assertEqual(frames[-1]["t"], "response")
        self.assertEqual(frames[-1]["id"], cid)
        self.assertTrue(all(f["id"] == cid for f in frames))
        logs = [(f["stream"], f["line"]) for f in frames[:-1]]
        self.assertEqual(logs, [
            ("stdout", "hello world"),
            ("stderr", "to stderr"),
            ("stdout", "two"),
            ("stdout", "lines"),
            ("stdout", "no newline"),
        ])
        self.assertEqual(inst.shutdown(), 0)
        out = inst.output("stdout") + inst.output("stderr")
        self.assertIn("top-level output", out)
        self.assertNotIn("hello world", out)
        self.assertNotIn("to stderr", out)

    def test_frames_stay_within_platform_limits(self):
        # The platform kills an instance that sends a header > 1 MiB or a body > 64 MiB.
        inst = self.start()
        r = inst.invoke("/long-line")
        self.assertEqual(r.body, b"ok")
        self.assertGreater(len(r.logs), 1)
        self.assertEqual("".join(line for _, line in r.logs), "L" * 300000)
        r = inst.invoke("/huge-error")
        self.assertEqual(r.t, "error")
        self.assertIn("characters cut", r.message)
        self.assertLess(len(r.message.encode()), 1 << 20)
        r = inst.invoke("/big", query="n=%d" % ((64 << 20) + 1))
        self.assertEqual(r.t, "error")
        self.assertIn("limits", r.message)
        self.assertEqual(inst.invoke("/big", query="n=%d" % (64 << 20)).body, b"z" * (64 << 20))

    # --- instance lifetime

    def test_module_top_level_runs_once(self):
        inst = self.start()
        pids = set()
        for i in range(1, 51):
            got = inst.invoke("/count").json()
            self.assertEqual(got["calls"], i)
            self.assertEqual(got["imports"], "x")
            pids.add(got["pid"])
        self.assertEqual(len(pids), 1)
        self.assertEqual(pids, {inst.proc.pid})

    # --- concurrency

    def run_interleaved(self, inst, n=4, step_ms=150):
        # The first sent sleeps longest, so the answers come back in reverse order.
        tags = [chr(ord("a") + i) for i in range(n)]
        ids = {}
        t0 = time.monotonic()
        for i, tag in enumerate(tags):
            ids[tag] = inst.start_invoke("/sleep", query="ms=%d&tag=%s" % ((n - i) * step_ms, tag))
        order = []
        results = {}
        pending = set(ids.values())
        logs = {cid: [] for cid in pending}
        while pending:
            h, body = inst.recv()
            if h["t"] == "log":
                logs[h["id"]].append(h["line"])
                continue
            self.assertEqual(h["t"], "response", h)
            order.append(h["id"])
            results[h["id"]] = json.loads(body)
            pending.discard(h["id"])
        elapsed = time.monotonic() - t0
        for tag, cid in ids.items():
            self.assertEqual(results[cid], {"tag": tag, "id": cid})
            self.assertEqual(logs[cid], ["start " + tag, "end " + tag])
        self.assertEqual(order, [ids[t] for t in reversed(tags)])
        serial = sum(range(1, n + 1)) * step_ms / 1000
        self.assertLess(elapsed, serial * 0.75, "calls did not run concurrently")

    def test_concurrent_calls_interleave(self):
        inst = self.start(concurrency=4)
        self.run_interleaved(inst)
        # The instance still answers plain calls, with the right ids, afterwards.
        ids = [inst.start_invoke("/str") for _ in range(8)]
        res = inst.collect(ids)
        self.assertEqual({cid: r.body for cid, r in res.items()}, {cid: b"hello" for cid in ids})
        self.run_interleaved(inst)

    def test_async_handler(self):
        inst = self.start(handler="main:ahandle")
        r = inst.invoke("/x", method="PATCH")
        self.assertEqual((r.t, r.body, r.logs), ("response", b"async PATCH", [("stdout", "async log")]))
        r = inst.invoke("/raise")
        self.assertEqual(r.t, "error")
        self.assertIn("async boom", r.message)
        self.assertEqual(inst.invoke("/y", method="GET").body, b"async GET")


class PythonRuntimeTests(RuntimeCases, unittest.TestCase):
    """Python, run as bootstrap.py directly (a script: compiled on every start)."""

    interp = PYTHON
    main_file = "main.py"
    main_src = PY_MAIN
    error_class = "ValueError"
    broken_files = {"main.py": "import os\nraise RuntimeError('kaboom at import')\n"}
    syntax_error_files = {"main.py": "def handle(req)\n    return 1\n"}
    runtime_dir = PY_RUNTIME
    script = "bootstrap.py"

    def argv(self, *flags):
        return [PYTHON, "-I", "-S", *flags, os.path.join(self.runtime_dir, self.script)]  # as the platform runs it

    def test_sys_exit_in_handler_is_an_error(self):
        inst = self.start()
        r = inst.invoke("/exit")
        self.assertEqual(r.t, "error")
        self.assertIn("SystemExit", r.message)
        self.assertEqual(inst.invoke("/str").body, b"hello")

    def test_headers_lookup_is_case_insensitive(self):
        inst = self.start()
        r = inst.invoke("/case", headers=[["x-mixed", "v"]])
        self.assertEqual(r.json(), ["v", "v", True])

    def test_async_handler_concurrent(self):
        inst = self.start(handler="main:ahandle", concurrency=4)
        self.run_interleaved(inst)

    def test_dotted_module_and_strata_import(self):
        files = {
            "pkg/__init__.py": "",
            "pkg/app.py": "import strata, sys\n"
                          "def run(req):\n"
                          "    return strata.Response(200, None, {'strata': strata.__file__, 'path': sys.path[:2]})\n",
        }
        inst = self.start(handler="pkg.app:run", files=files)
        got = inst.invoke("/").json()
        self.assertEqual(got["strata"], os.path.join(self.runtime_dir, "strata.py"))
        self.assertEqual(got["path"], [self.code_dir, self.runtime_dir])

    def test_tracebacks_show_only_user_frames(self):
        inst = self.start()
        for path in ("/raise", "/exit"):
            r = inst.invoke(path)
            self.assertEqual(r.t, "error", r)
            self.assertNotIn("bootstrap", r.message)
            self.assertNotIn("importlib", r.message)
        inst = self.start(files=self.broken_files, expect_ready=False)
        h, _ = inst.recv()
        self.assertEqual(h["t"], "init_error", h)
        self.assertIn('main.py", line 2, in <module>', h["message"])
        self.assertNotIn("bootstrap", h["message"])
        self.assertNotIn("importlib", h["message"])

    # --- start-up cost: the bootstrap imports no pure-Python stdlib module of its own

    _baseline_modules = None

    def baseline_modules(self):
        """The modules `python3 -I -S -c pass` has loaded anyway."""
        if PythonRuntimeTests._baseline_modules is None:
            out = subprocess.run([PYTHON, "-I", "-S", "-c", "import sys; print(' '.join(sys.modules))"],
                                 stdout=subprocess.PIPE, check=True).stdout
            PythonRuntimeTests._baseline_modules = set(out.decode().split())
        return PythonRuntimeTests._baseline_modules

    def test_startup_imports_nothing_heavy(self):
        inst = self.start(files={"main.py": PY_LEAN_MAIN})
        # C modules the bootstrap needs, the runtime's strata and the handler module itself.
        allowed = self.baseline_modules() | {"_json", "_struct", "_contextvars", "strata", "main"}
        got = inst.invoke("/modules").json()
        self.assertEqual(set(got["at_import"]) - allowed, set())
        self.assertNotIn("json", got["at_import"])  # (the baseline has none of these)
        self.assertNotIn("re", got["at_import"])
        # Neither do the common calls: JSON in (req.json()) and out, errors that are not exceptions.
        body = b' {"a": [1, 2.5, "\\u00e9\xc3\xa9", NaN, -Infinity, true, null], "b": {}}\n'
        self.assertEqual(inst.invoke("/json", body).json(), {"repr": repr(json.loads(body))})
        self.assertEqual(inst.invoke("/mixed").body, json.dumps(
            eval(PY_LEAN_MIXED), ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode())
        self.assertEqual(inst.invoke("/str").body, b"hello")
        r = inst.invoke("/query", query="a=1&b=x+y&c&&d=&a=2&=e&f==g")
        self.assertEqual(r.json()["list"], [list(x) for x in urllib.parse.parse_qsl(
            "a=1&b=x+y&c&&d=&a=2&=e&f==g", keep_blank_values=True)])
        for path in ("/nan", "/inf", "/cycle", "/bad-key", "/nested-bad", "/surrogate"):
            r = inst.invoke(path)
            self.assertEqual(r.t, "error", (path, r))
            self.assertIn("cannot be serialised", r.message)
        self.assertEqual(inst.invoke("/outer-ok").json(), [1, [2]])  # no stale cycle markers from /nested-bad
        got = inst.invoke("/modules").json()
        self.assertEqual(set(got["now"]) - allowed, set())

    def test_request_query_matches_parse_qsl(self):
        inst = self.start(files={"main.py": PY_LEAN_MAIN})
        for qs in ["", "a", "a=", "=", "&", "&&a=1&&", "a=1&a=2", "a+b=c+d", "a=b=c", "x=%41%zz%", "%C3%A9=%E9",
                   "\u00e9=\u00e9+%C3%A9", "a;b=c", "a=%2B+%26", "+=+"]:
            got = inst.invoke("/query", query=qs).json()
            want = urllib.parse.parse_qsl(qs, keep_blank_values=True)
            self.assertEqual(got, {"list": [list(x) for x in want], "dict": dict(want)}, qs)

    def test_request_json_matches_json_loads(self):
        inst = self.start(files={"main.py": PY_LEAN_MAIN})
        good = [b"[]", b"0", b' \t\r\n"x" \n', b'{"a": {"b": [1e400, -0.0, 12345678901234567890]}}',
                b'"\xed\xa0\x80"', b"\xef\xbb\xbf[1]", '{"\u00e9": 1}'.encode("utf-16"),
                '"x"'.encode("utf-32-le"), '[1]'.encode("utf-16-be"), b"NaN"]
        for body in good:
            self.assertEqual(inst.invoke("/json", body).json(), {"repr": repr(json.loads(body))}, body)
        bad = [b"", b" ", b'{"a":1} x', b"[1,", b"\xff", b'"a\nb"', b"{'a': 1}", b"[1]]", b"nul", b"\x00"]
        for body in bad:
            try:
                json.loads(body)
            except ValueError as e:
                want = {"type": type(e).__name__, "msg": str(e)}
            self.assertEqual(inst.invoke("/json-error", body).json(), want, body)


class PythonBootRuntimeTests(PythonRuntimeTests):
    """Python as the platform runs it: boot.py importing bootstrap from its byte-compiled .pyc."""

    script = "boot.py"

    @classmethod
    def setUpClass(cls):
        if not os.path.exists(PYTHON):
            raise unittest.SkipTest("%s not found" % PYTHON)
        cls.tmp = tempfile.mkdtemp(prefix="strata-rt-python-")
        cls.runtime_dir = compiled_python_runtime(cls.tmp)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, True)

    def test_bootstrap_is_loaded_from_its_pyc(self):
        inst = self.start(files={"main.py": "import sys\ndef handle(req):\n    return repr(sorted(sys.path))\n"},
                          argv=self.argv("-v"))
        self.assertEqual(inst.invoke("/").body.decode().count(self.runtime_dir), 1)  # boot.py's entry is gone
        self.assertEqual(inst.shutdown(), 0)
        err = inst.output("stderr")
        for name in ("bootstrap", "strata"):
            self.assertRegex(err, r"# %s/__pycache__/%s\.[^ ]+\.pyc matches %s/%s\.py\n" % (
                (re.escape(self.runtime_dir), name) * 2))

    def test_user_module_named_bootstrap(self):
        # The runtime's bootstrap module does not shadow one of the user's.
        files = {"bootstrap.py": "def handle(req):\n    return 'user bootstrap'\n"}
        inst = self.start(handler="bootstrap:handle", files=files)
        self.assertEqual(inst.invoke("/").body, b"user bootstrap")


class NodeRuntimeTests(RuntimeCases, unittest.TestCase):
    interp = NODE
    main_file = "main.js"
    main_src = NODE_MAIN
    error_class = "Error"
    broken_files = {"main.js": "require('fs');\nthrow new Error('kaboom at import');\n"}
    syntax_error_files = {"main.js": "exports.handle = (req) => {\n"}

    def argv(self):
        return [NODE, NODE_BOOTSTRAP]

    def test_rejected_promise_is_error_frame(self):
        inst = self.start()
        r = inst.invoke("/reject")
        self.assertEqual(r.t, "error")
        self.assertIn("rejected boom", r.message)
        self.assertEqual(inst.invoke("/str").body, b"hello")

    def test_unhandled_rejection_does_not_stop_the_instance(self):
        inst = self.start()
        self.assertEqual(inst.invoke("/stray-reject").body, b"still fine")
        self.assertEqual(inst.invoke("/str").body, b"hello")
        self.assertEqual(inst.shutdown(), 0)
        self.assertIn("stray rejection", inst.output("stderr"))

    def test_fetch_response_is_accepted(self):
        inst = self.start()
        r = inst.invoke("/web-response")
        self.assertEqual((r.status, r.body), (202, b"web"))
        self.assertIn(["x-w", "1"], r.headers)

    def test_not_a_function_is_init_error(self):
        inst = self.start(handler="main:notAFunction", expect_ready=False)
        h, _ = inst.recv()
        self.assertEqual(h["t"], "init_error")
        self.assertIn("notAFunction", h["message"])

    def test_module_exports_function_and_subdir(self):
        files = {"src/app.js": "module.exports = (req) => ({ status: 201, body: 'fn ' + req.path });"}
        inst = self.start(handler="src/app:handle", files=files)
        r = inst.invoke("/p")
        self.assertEqual((r.status, r.body), (201, b"fn /p"))

    def test_esm_handler_can_import_strata(self):
        files = {"esm.mjs": "import { Response } from 'strata';\n"
                            "export async function handle(req) { return new Response(201, {}, 'esm ' + req.method); }\n"}
        inst = self.start(handler="esm:handle", files=files)
        r = inst.invoke("/", method="GET")
        self.assertEqual((r.status, r.body), (201, b"esm GET"))


class ExecHelloCTests(unittest.TestCase):
    """examples/hello-c, built with $CC, speaks the protocol as an exec function."""

    @classmethod
    def setUpClass(cls):
        if shutil.which(CC) is None:
            raise unittest.SkipTest("%s not found" % CC)
        cls.build_dir = tempfile.mkdtemp(prefix="strata-hello-c-")
        cls.binary = os.path.join(cls.build_dir, "hello")
        subprocess.run([CC, "-O2", "-Wall", "-Wextra", "-Werror", "-std=c11", "-o", cls.binary, HELLO_C], check=True)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.build_dir, True)

    def start(self):
        inst = Instance([self.binary], env={"STRATA_CONCURRENCY": "1"})
        self.addCleanup(inst.close)
        h, body = inst.recv()
        self.assertEqual((h, body), ({"t": "ready"}, b""))
        return inst

    def test_answers_every_invoke(self):
        inst = self.start()
        for body in [b"world", b"", ALL_BYTES, os.urandom(1 << 20)]:
            r = inst.invoke("/anything", body, query="a=1", headers=[["x-id", "\"id\":\"fake\""]])
            self.assertEqual(r.t, "response")
            self.assertEqual(r.status, 200)
            self.assertEqual(r.headers, [["content-type", "text/plain"]])
            self.assertEqual(r.body, b"hello from C: " + body)
        # An id with JSON escapes is echoed back unchanged.
        r = inst.invoke("/", b"x", cid='we"ird\\id\u00e9')
        self.assertEqual(r.header["id"], 'we"ird\\id\u00e9')
        self.assertEqual(inst.shutdown(), 0)

    def test_eof_exits_zero(self):
        inst = self.start()
        inst.sock.shutdown(socket.SHUT_RDWR)
        self.assertEqual(inst.wait(), 0)


# ------------------------------------------------------------------- benchmark

# A minimal platform side in C: sequential invokes on fd 3, prints round trips/s.
BENCH_CLIENT_C = r"""
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
static unsigned char rb[1 << 16];
static size_t rpos, rlen;
static void get(void *dst, size_t n) {
    unsigned char *d = dst;
    while (n) {
        if (rpos == rlen) {
            ssize_t r = read(3, rb, sizeof rb);
            if (r <= 0) { fprintf(stderr, "bench client: read failed\n"); exit(1); }
            rpos = 0; rlen = (size_t)r;
        }
        size_t k = rlen - rpos < n ? rlen - rpos : n;
        if (d) { memcpy(d, rb + rpos, k); d += k; }
        rpos += k; n -= k;
    }
}
static unsigned u32(const unsigned char *p) { return (unsigned)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }
static void put32(unsigned char *p, unsigned v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    unsigned char f[256], h[4096];
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        int hl = snprintf((char *)f + 4, 200,
            "{\"t\":\"invoke\",\"id\":\"b%ld\",\"method\":\"GET\",\"path\":\"/\",\"query\":\"\",\"headers\":[]}", i);
        put32(f, (unsigned)hl);
        put32(f + 4 + hl, 0);
        if (write(3, f, (size_t)hl + 8) != hl + 8) { fprintf(stderr, "bench client: write failed\n"); return 1; }
        unsigned char l[4];
        get(l, 4);
        unsigned rl = u32(l);
        if (rl >= sizeof h) { fprintf(stderr, "bench client: header too long\n"); return 1; }
        get(h, rl);
        h[rl] = 0;
        get(l, 4);
        get(NULL, u32(l));
        if (!strstr((char *)h, "\"response\"")) { fprintf(stderr, "bench client: not a response: %s\n", h); return 1; }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%.1f\n", n / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9));
    return 0;
}
"""


def bench_python_client(inst, seconds):
    """Sequential round trips/s with this Python process as the platform."""
    inst.sock.settimeout(None)  # plain blocking I/O: no poll() before every recv
    sendall = inst.sock.sendall
    read = inst.rf.read
    unpack, unpack_from = U32.unpack, U32.unpack_from

    def run(n, base):
        for i in range(base, base + n):
            h = b'{"t":"invoke","id":"%d","method":"GET","path":"/","query":"","headers":[]}' % i
            sendall(b"".join((U32.pack(len(h)), h, b"\0\0\0\0")))
            hl = unpack(read(4))[0]
            hb = read(hl + 4)
            bl = unpack_from(hb, hl)[0]
            if bl:
                read(bl)
        return json.loads(hb[:hl])

    last = run(2000, 0)  # warm-up
    assert last["t"] == "response" and last["id"] == "1999", last
    total, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        last = run(2000, 10**6 + total)
        total += 2000
    rate = total / (time.perf_counter() - t0)
    assert last["t"] == "response" and last["id"] == str(10**6 + total - 1), last
    return rate


def bench_c_client(inst, client, n):
    """Sequential round trips/s with a C program as the platform (it gets our end of fd 3)."""
    inst.sock.settimeout(None)  # a timeout makes the (shared) descriptor non-blocking
    fd = inst.sock.fileno()

    def as_fd3():
        if fd == 3:
            os.set_inheritable(3, True)
        else:
            os.dup2(fd, 3)

    out = subprocess.run([client, str(n)], stdout=subprocess.PIPE, preexec_fn=as_fd3, close_fds=False, check=True)
    return float(out.stdout)


def bench(seconds=1.5, trials=3):
    d = tempfile.mkdtemp(prefix="strata-bench-")
    try:
        write_files(d, {"main.py": "def handle(req):\n    return 'ok'\n",
                        "amain.py": "async def handle(req):\n    return 'ok'\n",
                        "main.js": "exports.handle = (req) => 'ok';\n",
                        "amain.js": "exports.handle = async (req) => 'ok';\n"})
        env = {"STRATA_CODE_DIR": d, "STRATA_HANDLER": "main:handle"}
        runs = []
        if os.path.exists(PYTHON):
            py = [PYTHON, "-I", "-S", PY_BOOTSTRAP]
            runs += [("python, sync, concurrency 1", py, env),
                     ("python, async, concurrency 1", py, dict(env, STRATA_HANDLER="amain:handle")),
                     ("python, sync, concurrency 4", py, dict(env, STRATA_CONCURRENCY="4"))]
        if os.path.exists(NODE):
            runs += [("node, sync, concurrency 1", [NODE, NODE_BOOTSTRAP], env),
                     ("node, async, concurrency 1", [NODE, NODE_BOOTSTRAP], dict(env, STRATA_HANDLER="amain:handle")),
                     ("node, async, concurrency 4", [NODE, NODE_BOOTSTRAP],
                      dict(env, STRATA_HANDLER="amain:handle", STRATA_CONCURRENCY="4"))]
        client = None
        if shutil.which(CC):
            binary = os.path.join(d, "hello")
            client = os.path.join(d, "bench-client")
            with open(client + ".c", "w") as f:
                f.write(BENCH_CLIENT_C)
            subprocess.run([CC, "-O2", "-o", binary, HELLO_C], check=True)
            subprocess.run([CC, "-O2", "-o", client, client + ".c"], check=True)
            runs.append(("hello-c (the floor)", [binary], env))
        print("Sequential invoke -> response round trips per second over a socketpair, trivial")
        print("handler, best of %d runs; platform side played by this Python process / by C." % trials)
        print("%-30s %14s %14s" % ("", "python client", "C client"))
        for name, argv, e in runs:
            best_py = best_c = 0.0
            for _ in range(trials):
                inst = Instance(argv, env=e, cwd="/")
                try:
                    inst.ready()
                    best_py = max(best_py, bench_python_client(inst, seconds))
                    if client:
                        n = int(max(best_py, 5000) * seconds)
                        best_c = max(best_c, bench_c_client(inst, client, n))
                finally:
                    inst.close()
            print("%-30s %12.0f/s %12.0f/s" % (name, best_py, best_c), flush=True)
    finally:
        shutil.rmtree(d, True)


# ---------------------------------------------------------------- start-up time


def time_to_ready(argv, env):
    """ms from just before the process is spawned to the arrival of its ready frame."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    if child.fileno() == 3:  # a dup2 onto itself would leave fd 3 close-on-exec
        c, child = child, child.dup()
        c.close()
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, env, file_actions=[(os.POSIX_SPAWN_DUP2, child.fileno(), 3)])
    child.close()
    rf = parent.makefile("rb")
    try:
        (hl,) = U32.unpack(rf.read(4))
        header = rf.read(hl)
        ms = (time.perf_counter() - t0) * 1000
        assert json.loads(header)["t"] == "ready", header
        parent.sendall(encode_frame({"t": "shutdown"}))
    finally:
        rf.close()
        parent.close()
        os.waitpid(pid, 0)
    return ms


def startup(runs=30):
    d = tempfile.mkdtemp(prefix="strata-startup-")
    try:
        code = os.path.join(d, "code")
        write_files(code, {"main.py": "def handle(req):\n    return 'ok'\n",
                           "main.js": "exports.handle = (req) => 'ok';\n"})
        env = {"PATH": "/usr/bin:/bin", "STRATA_CODE_DIR": code, "STRATA_HANDLER": "main:handle"}
        runs_ = []
        if os.path.exists(PYTHON):
            rt = compiled_python_runtime(d)
            ready = 'import posix; posix.write(3, b"\\0\\0\\0\\x0d{\\"t\\":\\"ready\\"}\\0\\0\\0\\0"); posix.read(3, 64)'
            runs_ += [("python -I -S -c <send ready> (the floor)", [PYTHON, "-I", "-S", "-c", ready]),
                      ("python -I -S bootstrap.py (script)", [PYTHON, "-I", "-S", os.path.join(rt, "bootstrap.py")]),
                      ("python -I -S boot.py (bootstrap .pyc)", [PYTHON, "-I", "-S", os.path.join(rt, "boot.py")])]
        if os.path.exists(NODE):
            runs_.append(("node bootstrap.js", [NODE, NODE_BOOTSTRAP]))
        if shutil.which(CC):
            binary = os.path.join(d, "hello")
            subprocess.run([CC, "-O2", "-o", binary, HELLO_C], check=True)
            runs_.append(("hello-c", [binary]))
        print("Time from spawn to the ready frame, trivial handler, median of %d runs (min, max);" % runs)
        print("the variants take turns, so that machine noise hits them alike.")
        times = {name: [] for name, _ in runs_}
        for i in range(runs + 1):
            for name, argv in runs_:
                ms = time_to_ready(argv, env)
                if i:  # run 0 warms up: page cache, the handler's own .pyc
                    times[name].append(ms)
        for name, _ in runs_:
            ts = sorted(times[name])
            print("%-42s %7.2f ms  (%.2f, %.2f)" % (name, ts[len(ts) // 2], ts[0], ts[-1]))
    finally:
        shutil.rmtree(d, True)


if __name__ == "__main__":
    if "--bench" in sys.argv[1:]:
        bench()
    elif "--startup" in sys.argv[1:]:
        startup()
    else:
        unittest.main()
