#!/usr/bin/env python3
"""Tests for the Strata language runtimes (protocol v1, docs/protocol.md), run
without the sandbox: each test starts a bootstrap (or examples/hello-c) with one
end of a socketpair as fd 3 and plays the platform on the other end.

    python3 runtimes/test_runtimes.py            # the tests (unittest, stdlib only)
    python3 runtimes/test_runtimes.py -v NodeRuntimeTests
    python3 runtimes/test_runtimes.py --bench    # sequential invoke round trips per second

Interpreters: /usr/bin/python3 and /usr/bin/node (override with STRATA_TEST_PYTHON /
STRATA_TEST_NODE); the C example is built with $CC (default gcc). A runtime whose
interpreter is missing is skipped.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PYTHON = os.environ.get("STRATA_TEST_PYTHON", "/usr/bin/python3")
NODE = os.environ.get("STRATA_TEST_NODE", "/usr/bin/node")
CC = os.environ.get("CC", "gcc")
PY_BOOTSTRAP = os.path.join(HERE, "python", "bootstrap.py")
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

    def start(self, handler="main:handle", files=None, concurrency=None, env=None, expect_ready=True):
        write_files(self.code_dir, files if files is not None else {self.main_file: self.main_src})
        e = {"STRATA_CODE_DIR": self.code_dir, "STRATA_HANDLER": handler}
        if concurrency is not None:
            e["STRATA_CONCURRENCY"] = str(concurrency)
        e.update(env or {})
        inst = Instance(self.argv(), env=e, cwd="/")
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
    interp = PYTHON
    main_file = "main.py"
    main_src = PY_MAIN
    error_class = "ValueError"
    broken_files = {"main.py": "import os\nraise RuntimeError('kaboom at import')\n"}
    syntax_error_files = {"main.py": "def handle(req)\n    return 1\n"}

    def argv(self):
        return [PYTHON, "-I", "-S", PY_BOOTSTRAP]  # as the platform runs it

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
        self.assertEqual(got["strata"], os.path.join(HERE, "python", "strata.py"))
        self.assertEqual(got["path"], [self.code_dir, os.path.join(HERE, "python")])


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


if __name__ == "__main__":
    if "--bench" in sys.argv[1:]:
        bench()
    else:
        unittest.main()
