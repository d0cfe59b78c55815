"""Strata Python runtime bootstrap (protocol v1, see docs/protocol.md).

Run as ``/usr/bin/python3 -I -S /strata/runtime/python/boot.py`` (which imports this
module from its cached ``.pyc``) or directly as
``/usr/bin/python3 -I -S /strata/runtime/python/bootstrap.py``, with fd 3 a
connected SOCK_STREAM unix socket to the platform. Stdlib only.

Start-up cost matters (it is part of every cold start), so the start-up path
imports nothing beyond what ``python3 -I -S -c pass`` has already loaded plus a
few C modules (``_json``, ``_struct``, ``_contextvars``): no ``os``, ``json``,
``importlib``. JSON goes through the C accelerators of the ``json`` package
directly. Heavier modules are imported only when needed: ``asyncio`` for async
handlers, ``threading`` for STRATA_CONCURRENCY > 1, ``traceback`` to format an
error; ``req.json()`` / ``req.query`` import ``json`` / ``urllib.parse`` only for
bodies / query strings their fast paths do not cover (non-UTF-8 JSON, invalid JSON,
%-escapes).

Environment:
  STRATA_HANDLER      "module:function" (module may be dotted), default "main:handle"
  STRATA_CODE_DIR     directory with the user's code, default /code
  STRATA_CONCURRENCY  max in-flight invokes, default 1 (inline, no threads)
"""

import io
import posix
import sys
import time
from _contextvars import ContextVar
from _json import encode_basestring as _enc_str
from _json import make_encoder as _make_encoder
from _json import make_scanner as _make_scanner
from _struct import Struct
from _thread import allocate_lock

CTRL_FD = 3
SMALL_BODY = 64 * 1024  # bodies up to this size are sent in the same write as the header
# The platform's limits on a frame from an instance (crates/strata-instance/src/protocol.rs);
# a bigger frame is a protocol error that gets the instance killed, so the runtime keeps
# within them: long log lines are split, long error texts are clipped, too-large
# responses become error frames.
MAX_HEADER = 1 << 20
MAX_BODY = 64 << 20
LOG_CHUNK = 64 * 1024  # chars per log frame (JSON-escaped at most 6 bytes each)
MAX_MESSAGE = 128 * 1024  # chars of an error / init_error message

_u32 = Struct(">I")
_pack = _u32.pack
_unpack = _u32.unpack
_unpack_from = _u32.unpack_from
_oswrite = posix.write


# -------------------------------------------------------------------------- JSON
# The C parts of the json package, used without importing it (json pulls in re,
# enum, functools, collections: ~14 ms under -S). Same results as json.loads /
# json.dumps(ensure_ascii=False, separators=(",", ":"), allow_nan=False).


class _ScanContext:
    """What _json.make_scanner reads off a json.JSONDecoder: json.loads' defaults."""

    __slots__ = ()
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float  # float and int take the scanner's C fast paths
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}.__getitem__


# scan(s, idx) -> (value, end); StopIteration(idx) if no value starts at idx. Raises
# a bare error (not json.JSONDecodeError) on bad input unless json.decoder is loaded.
_scan_once = _make_scanner(_ScanContext())


def _default(o):
    raise TypeError("Object of type %s is not JSON serializable" % o.__class__.__name__)


def _encode(obj):
    """Compact JSON text of obj, UTF-8 kept as is, NaN/Infinity rejected (ValueError)."""
    if type(obj) is str:
        return _enc_str(obj)
    # A new encoder per call (as json.dumps does): its cycle-check `markers` dict is
    # left dirty by a failed encode and must not be shared between threads.
    return "".join(_make_encoder({}, _default, _enc_str, None, ":", ",", False, False, False)(obj, 0))


def _json_loads(b):
    """json.loads(b), without importing json for the common case (UTF-8 bytes, valid JSON)."""
    if type(b) is bytes and 0 not in b[:4] and not b.startswith(b"\xef\xbb\xbf"):
        try:
            s = b.decode("utf-8", "surrogatepass")  # what json.loads does with UTF-8 bytes
            i = len(s) - len(s.lstrip(" \t\n\r"))
            obj, end = _scan_once(s, i)
            if end == len(s) or not s[end:].strip(" \t\n\r"):
                return obj
        except Exception:
            pass
    # Anything else (UTF-16/32, a BOM, str input, invalid JSON, extra data): json
    # itself, for its exact behaviour and its JSONDecodeError messages.
    import json

    return json.loads(b)


# ------------------------------------------------------------------ os, cheaply


def _env(name):
    """os.environ.get(name) without importing os."""
    v = posix.environ.get(name.encode())
    return None if v is None else v.decode(sys.getfilesystemencoding(), "surrogateescape")


def _abspath(p):
    """os.path.abspath(p) for a str path (posixpath.abspath, without importing os)."""
    if not p.startswith("/"):
        cwd = posix.getcwd()
        p = cwd + p if cwd.endswith("/") else cwd + "/" + p
    initial = 2 if p.startswith("//") and not p.startswith("///") else 1
    comps = []
    for c in p.split("/"):
        if c == "" or c == ".":
            continue
        if c != ".." or (comps and comps[-1] == ".."):
            comps.append(c)
        elif comps:
            comps.pop()
    return "/" * initial + "/".join(comps)


def _dirname(p):
    """os.path.dirname(p) for a str path (posixpath.dirname)."""
    head = p[: p.rfind("/") + 1]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


_H_TEXT = '[["content-type","text/plain; charset=utf-8"]]'
_H_BIN = '[["content-type","application/octet-stream"]]'
_H_JSON = '[["content-type","application/json"]]'
_CT_TEXT = "text/plain; charset=utf-8"
_CT_BIN = "application/octet-stream"
_CT_JSON = "application/json"

_wlock = allocate_lock()  # every frame is written whole under this lock
_current = ContextVar("strata_call", default=None)
_cur_get = _current.get
_cur_set = _current.set
_cur_reset = _current.reset

Response = None  # strata.Response, set in main()


# --------------------------------------------------------------------------- I/O


def _die(code):
    for s in (sys.__stdout__, sys.__stderr__):
        try:
            s.flush()
        except Exception:
            pass
    posix._exit(code)


def _write_rest(data, n):
    mv = memoryview(data)
    while n < len(mv):
        n += _oswrite(CTRL_FD, mv[n:])


# ---------------------------------------------------------------- stdout capture


class _Call:
    """One in-flight invoke: its id and the unfinished output line of each stream."""

    __slots__ = ("jid", "done", "partial")

    def __init__(self, cid_json):
        self.jid = cid_json  # the call id, JSON-encoded
        self.done = False
        self.partial = None

    def _log(self, stream, line):
        for i in range(0, max(len(line), 1), LOG_CHUNK):
            h = '{"t":"log","id":%s,"stream":"%s","line":%s}' % (self.jid, stream, _encode(line[i : i + LOG_CHUNK]))
            _send(h.encode("utf-8", "replace"))

    def write(self, stream, s):
        partial = self.partial
        if "\n" not in s:
            if s:
                if partial is None:
                    partial = self.partial = {"stdout": [], "stderr": []}
                partial[stream].append(s)
            return
        lines = s.split("\n")
        if partial is not None and partial[stream]:
            buf = partial[stream]
            buf.append(lines[0])
            lines[0] = "".join(buf)
            buf.clear()
        tail = lines.pop()
        if tail:
            if partial is None:
                partial = self.partial = {"stdout": [], "stderr": []}
            partial[stream].append(tail)
        for line in lines:
            self._log(stream, line)

    def flush_partial(self):
        """At the end of the call: send unterminated lines as log frames."""
        partial = self.partial
        if partial is not None:
            for stream in ("stdout", "stderr"):
                buf = partial[stream]
                if buf:
                    line = "".join(buf)
                    buf.clear()
                    self._log(stream, line)


class _Stream(io.TextIOBase):
    """sys.stdout / sys.stderr replacement: log frames during a call, else the real stream."""

    def __init__(self, real, stream):
        self._real = real
        self._stream = stream

    def write(self, s):
        call = _cur_get()
        if call is None or call.done:
            return self._real.write(s)
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        call.write(self._stream, s)
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        # During a call an unterminated line stays buffered until its newline or
        # the end of the call, so that a log frame always carries a whole line.
        try:
            self._real.flush()
        except Exception:
            pass

    def writable(self):
        return True

    def readable(self):
        return False

    def seekable(self):
        return False

    def isatty(self):
        return False

    def fileno(self):
        return self._real.fileno()

    @property
    def encoding(self):
        return self._real.encoding

    @property
    def errors(self):
        return self._real.errors

    @property
    def buffer(self):
        return self._real.buffer

    @property
    def line_buffering(self):
        return True

    @property
    def name(self):
        return "<%s>" % self._stream

    def close(self):
        pass

    @property
    def closed(self):
        return False


# ---------------------------------------------------------------------- requests


class _Headers(dict):
    """dict of lowercase header names; lookups are case-insensitive."""

    __slots__ = ()

    def __getitem__(self, k):
        return dict.__getitem__(self, k.lower() if isinstance(k, str) else k)

    def __contains__(self, k):
        return dict.__contains__(self, k.lower() if isinstance(k, str) else k)

    def get(self, k, default=None):
        return dict.get(self, k.lower() if isinstance(k, str) else k, default)


class Request:
    """What a handler receives. query/headers are parsed lazily on first access."""

    __slots__ = ("id", "method", "path", "query_string", "body", "_hl", "_h", "_ql", "_q")

    def __init__(self, msg, body):
        self.id = msg.get("id")
        self.method = msg.get("method") or "GET"
        self.path = msg.get("path") or "/"
        self.query_string = msg.get("query") or ""
        self._hl = msg.get("headers") or ()
        self.body = body
        self._h = self._ql = self._q = None

    @property
    def header_list(self):
        """[(name, value), ...] in arrival order, names lowercase, repeats kept."""
        return [(k, v) for k, v in self._hl]

    @property
    def headers(self):
        """{name: value}; repeated headers joined with ", "."""
        h = self._h
        if h is None:
            h = _Headers()
            for k, v in self._hl:
                if k in h:
                    h[k] = h[k] + ", " + v
                else:
                    dict.__setitem__(h, k, v)
            self._h = h
        return h

    @property
    def query_list(self):
        """[(name, value), ...] decoded from query_string, blanks kept."""
        ql = self._ql
        if ql is None:
            qs = self.query_string
            if "%" not in qs:
                # urllib.parse.parse_qsl(qs, keep_blank_values=True) when there is nothing
                # to unquote, without importing urllib.parse (re, collections, ...: ~14 ms).
                ql = []
                for nv in qs.split("&"):
                    if nv:
                        name, _, value = nv.partition("=")
                        ql.append((name.replace("+", " "), value.replace("+", " ")))
            else:
                from urllib.parse import parse_qsl

                ql = parse_qsl(qs, keep_blank_values=True)
            self._ql = ql
        return ql

    @property
    def query(self):
        """{name: value}; the last value of a repeated name wins."""
        q = self._q
        if q is None:
            q = self._q = dict(self.query_list)
        return q

    def text(self):
        """The body decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.body.decode("utf-8", "replace")

    def json(self):
        """The body parsed as JSON."""
        return _json_loads(self.body)

    def __repr__(self):
        return "<Request %s %s%s%s (%d bytes)>" % (
            self.method,
            self.path,
            "?" if self.query_string else "",
            self.query_string,
            len(self.body),
        )


# --------------------------------------------------------------------- responses


class _BadResult(Exception):
    pass


def _norm_headers(headers):
    """dict or list of pairs -> list of [name, value] str pairs."""
    out = []
    if headers is None:
        return out
    if isinstance(headers, dict):
        items = headers.items()
    elif isinstance(headers, (list, tuple)):
        items = headers
    else:
        raise _BadResult("response headers must be a dict or a list of (name, value) pairs, not %s" % type(headers).__name__)
    for item in items:
        try:
            k, v = item
        except (TypeError, ValueError):
            raise _BadResult("response header %r is not a (name, value) pair" % (item,)) from None
        if not isinstance(k, str) or not k:
            raise _BadResult("response header name %r is not a non-empty str" % (k,))
        values = v if isinstance(v, (list, tuple)) else (v,)
        for v in values:
            if isinstance(v, (bytes, bytearray)):
                v = bytes(v).decode("latin-1")
            elif not isinstance(v, str):
                v = str(v)
            if "\r" in v or "\n" in v or "\0" in v or "\r" in k or "\n" in k or "\0" in k or ":" in k:
                raise _BadResult("response header %r: %r contains a forbidden character" % (k, v))
            out.append([k, v])
    return out


def _from_parts(cid_json, status, headers, body):
    if type(status) is not int or not 100 <= status <= 999:
        raise _BadResult("response status must be an int in 100..999, not %r" % (status,))
    hl = _norm_headers(headers)
    if body is None:
        b, ct = b"", None
    elif isinstance(body, bytes):
        b, ct = body, _CT_BIN
    elif isinstance(body, (bytearray, memoryview)):
        b, ct = bytes(body), _CT_BIN
    elif isinstance(body, str):
        b, ct = body.encode("utf-8"), _CT_TEXT
    else:
        b, ct = _encode(body).encode("utf-8"), _CT_JSON
    if b and ct is not None:
        for k, _ in hl:
            if k.lower() == "content-type":
                break
        else:
            hl.append(["content-type", ct])
    h = '{"t":"response","id":%s,"status":%d,"headers":%s}' % (cid_json, status, _encode(hl))
    return h.encode("utf-8", "replace"), b


_RESPONSE_KEYS = frozenset(("status", "headers", "body"))


def _build(cid_json, res):
    """Map a handler's return value to (response header bytes, body bytes)."""
    t = type(res)
    if t is str:
        h, b = _H_TEXT, res.encode("utf-8")
        status = 200
    elif t is bytes:
        h, b, status = _H_BIN, res, 200
    elif res is None:
        h, b, status = "[]", b"", 204
    elif t is Response or isinstance(res, Response):
        return _from_parts(cid_json, res.status, res.headers, res.body)
    elif (
        isinstance(res, dict)
        and "status" in res
        and type(res["status"]) is int
        and _RESPONSE_KEYS.issuperset(res.keys())
    ):
        return _from_parts(cid_json, res["status"], res.get("headers"), res.get("body"))
    elif isinstance(res, (bytes, bytearray, memoryview)):
        h, b, status = _H_BIN, bytes(res), 200
    elif isinstance(res, str):
        h, b, status = _H_TEXT, str(res).encode("utf-8"), 200
    else:
        h, b, status = _H_JSON, _encode(res).encode("utf-8"), 200
    return ('{"t":"response","id":%s,"status":%d,"headers":%s}' % (cid_json, status, h)).encode("utf-8", "replace"), b


def _clip(text):
    if len(text) <= MAX_MESSAGE:
        return text
    half = MAX_MESSAGE // 2
    return "%s\n... (%d characters cut) ...\n%s" % (text[:half], len(text) - 2 * half, text[-half:])


def _error_header(cid_json, text):
    return ('{"t":"error","id":%s,"message":%s}' % (cid_json, _encode(_clip(text)))).encode("utf-8", "replace")


def _format_exc(e):
    """The exception's traceback text without the frames of this bootstrap, asyncio and importlib."""
    import traceback
    import os  # loaded by traceback (linecache) anyway

    # This file's frames: whatever name its code objects carry (the script path, or
    # the module's path when boot.py imported it from the cached .pyc).
    internal = (_format_exc.__code__.co_filename, os.path.dirname(os.path.abspath(traceback.__file__)) + os.sep)
    te = traceback.TracebackException(type(e), e, e.__traceback__, compact=True)
    user = [
        f
        for f in te.stack
        if f.filename != internal[0]
        and not (
            f.filename.startswith(internal[1])
            and f.filename[len(internal[1]):].split(os.sep, 1)[0] in ("asyncio", "importlib", "concurrent")
        )
        and not f.filename.startswith("<frozen importlib")
    ]
    te.stack = traceback.StackSummary.from_list(user)  # no user frame: just the exception
    return "".join(te.format()).rstrip("\n")


# ---------------------------------------------------------------------- async


_loop = None
_loop_lock = allocate_lock()
_loop_thread_mode = False  # True when STRATA_CONCURRENCY > 1


def _await(aw):
    """Run an awaitable returned by the handler to completion, return its result."""
    global _loop
    import asyncio

    if not _loop_thread_mode:
        # Inline mode: one event loop, driven in the main thread during calls.
        if _loop is None:
            _loop = asyncio.new_event_loop()
            asyncio.set_event_loop(_loop)
        return _loop.run_until_complete(aw)
    # Thread-pool mode: one shared event loop running in its own thread; the
    # worker blocks until its coroutine is done. The call's context (and so the
    # current call id for log frames) follows the coroutine into the loop.
    with _loop_lock:
        if _loop is None:
            import threading

            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run():
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="strata-asyncio", daemon=True).start()
            ready.wait()
            _loop = loop
    if not asyncio.iscoroutine(aw):
        aw = _as_coroutine(aw)
    return asyncio.run_coroutine_threadsafe(aw, _loop).result()


async def _as_coroutine(aw):
    return await aw


# ------------------------------------------------------------------------ calls


_R_HEAD = b'{"t":"response","id":'
_R_TEXT = b',"status":200,"headers":' + _H_TEXT.encode() + b"}"
_R_BIN = b',"status":200,"headers":' + _H_BIN.encode() + b"}"


def _result(cid_json, res):
    """(header, body) of the response frame for a handler's (awaited) return value."""
    t = type(res)
    # Fast paths for the common results; everything else goes through _build.
    if t is str:
        h, b = _R_HEAD + cid_json.encode("utf-8", "replace") + _R_TEXT, res.encode("utf-8")
    elif t is bytes:
        h, b = _R_HEAD + cid_json.encode("utf-8", "replace") + _R_BIN, res
    else:
        try:
            h, b = _build(cid_json, res)
        except _BadResult as e:
            return _error_header(cid_json, "invalid response: %s" % e), b""
        except Exception as e:
            return _error_header(
                cid_json,
                "handler returned a value that cannot be serialised (%s): %s: %s"
                % (type(res).__name__, type(e).__name__, e),
            ), b""
    if len(b) > MAX_BODY or len(h) > MAX_HEADER:
        return _error_header(
            cid_json,
            "invalid response: %d bytes of headers and %d bytes of body exceed the platform's limits "
            "(%d and %d bytes)" % (len(h), len(b), MAX_HEADER, MAX_BODY),
        ), b""
    return h, b


def _send(h, b=b""):
    """Write one frame, whole, under the write lock. h: header JSON (UTF-8 bytes); b: body bytes."""
    bl = len(b)
    try:
        if bl <= SMALL_BODY:
            data = b"".join((_pack(len(h)), h, _pack(bl), b))
            with _wlock:
                n = _oswrite(CTRL_FD, data)
                if n != len(data):
                    _write_rest(data, n)
        else:
            data = b"".join((_pack(len(h)), h, _pack(bl)))
            with _wlock:
                _write_rest(data, 0)
                _write_rest(b, 0)
    except OSError:
        # The platform closed the control channel: nobody is left to answer to.
        _die(0)


_NOT_AWAITABLE = frozenset((str, bytes, dict, list, type(None), int, float, bool))


def _invoke(handler, msg, body):
    """Run one call (sync handler, or an awaitable result run via _await); send its frames."""
    cid = msg.get("id")
    cid_json = _enc_str(cid) if type(cid) is str else _encode(cid)
    call = _Call(cid_json)
    token = _cur_set(call)
    try:
        res = handler(Request(msg, body))
        if type(res) not in _NOT_AWAITABLE and hasattr(res, "__await__"):
            res = _await(res)
        h, b = _result(cid_json, res)
    except (Exception, SystemExit) as e:
        h, b = _error_header(cid_json, _format_exc(e)), b""
    finally:
        _cur_reset(token)
        call.done = True
        if call.partial is not None:
            call.flush_partial()
    _send(h, b)


async def _ainvoke(handler, msg, body):
    """_invoke for an async handler, awaited directly inside the serving coroutine."""
    cid = msg.get("id")
    cid_json = _enc_str(cid) if type(cid) is str else _encode(cid)
    call = _Call(cid_json)
    token = _cur_set(call)
    try:
        res = handler(Request(msg, body))
        if type(res) not in _NOT_AWAITABLE and hasattr(res, "__await__"):
            res = await res
        h, b = _result(cid_json, res)
    except (Exception, SystemExit) as e:
        h, b = _error_header(cid_json, _format_exc(e)), b""
    finally:
        _cur_reset(token)
        call.done = True
        if call.partial is not None:
            call.flush_partial()
    _send(h, b)


def _frames():
    """Yield (header dict, body) for each invoke frame; return on shutdown or EOF."""
    rf = io.open(CTRL_FD, "rb", buffering=256 * 1024, closefd=False)
    read = rf.read
    unpack = _unpack
    unpack_from = _unpack_from
    scan = _scan_once
    while True:
        try:
            b = read(4)
            if len(b) != 4:
                return
            hl = unpack(b)[0]
            hb = read(hl + 4)
            if len(hb) != hl + 4:
                return
            bl = unpack_from(hb, hl)[0]
            if bl:
                body = read(bl)
                if len(body) != bl:
                    return
            else:
                body = b""
        except OSError:
            return
        try:
            msg = scan(hb[:hl].decode(), 0)[0]
            t = msg["t"]
        except Exception:
            sys.__stderr__.write("strata bootstrap: bad frame header %r\n" % (hb[:200],))
            _die(1)
        if t == "invoke":
            yield msg, body
        elif t == "shutdown":
            return
        else:
            sys.__stderr__.write("strata bootstrap: ignoring unknown frame type %r\n" % (t,))


def _is_coroutine_function(fn):
    """`async def` function or method, or an instance whose __call__ is one."""
    code = getattr(fn, "__code__", None)
    if code is None and not isinstance(fn, type):
        code = getattr(getattr(type(fn), "__call__", None), "__code__", None)
    return code is not None and bool(code.co_flags & 0x80)  # inspect.CO_COROUTINE


def _serve(handler, concurrency):
    global _loop
    if concurrency > 1:
        # A pool of worker threads; the main thread only reads frames.
        submit = _start_pool(handler, concurrency)
        for item in _frames():
            submit(item)
    elif _is_coroutine_function(handler):
        # `async def` handler, one call at a time: the frame loop itself runs as a
        # coroutine on one event loop and awaits each call directly (no Task per call).
        import asyncio

        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)

        async def serve():
            ainvoke = _ainvoke
            for msg, body in _frames():
                await ainvoke(handler, msg, body)

        _loop.run_until_complete(serve())
    else:
        invoke = _invoke
        for msg, body in _frames():
            invoke(handler, msg, body)
    _die(0)


def _start_pool(handler, n):
    import threading
    from _queue import SimpleQueue  # what queue.SimpleQueue is

    global _loop_thread_mode
    _loop_thread_mode = True
    q = SimpleQueue()

    def worker():
        get = q.get
        invoke = _invoke
        try:
            while True:
                msg, body = get()
                invoke(handler, msg, body)
        except BaseException:
            import traceback

            traceback.print_exc(file=sys.__stderr__)
            _die(1)

    for i in range(n):
        threading.Thread(target=worker, name="strata-worker-%d" % i, daemon=True).start()
    return q.put


# ------------------------------------------------------------------------- init


def _load_handler(spec):
    mod_name, sep, fn_name = spec.rpartition(":")
    if not sep:
        mod_name, fn_name = spec, "handle"
    mod_name = mod_name.strip()
    fn_name = fn_name.strip() or "handle"
    if mod_name.endswith(".py"):
        mod_name = mod_name[:-3]
    mod_name = mod_name.replace("/", ".").strip(".")
    if not mod_name:
        raise ValueError("STRATA_HANDLER %r: expected \"module:function\"" % spec)
    __import__(mod_name)  # importlib.import_module without importing importlib
    mod = sys.modules[mod_name]
    fn = mod
    for part in fn_name.split("."):
        try:
            fn = getattr(fn, part)
        except AttributeError:
            raise AttributeError(
                "handler %r: module %r (%s) has no attribute %r"
                % (spec, mod_name, getattr(mod, "__file__", "?"), fn_name)
            ) from None
    if not callable(fn):
        raise TypeError("handler %r is not callable (it is a %s)" % (spec, type(fn).__name__))
    return fn


def setup(runtime_dir=None):
    """Prepare this interpreter to load and serve a handler: the import path (platform, code,
    dependency layer), the working directory and the captured streams. Returns (handler spec,
    concurrency). runtime_dir: where strata.py is (default: this file's folder)."""
    global Response
    runtime_dir = runtime_dir or _dirname(_abspath(__file__))
    code_dir = _abspath(_env("STRATA_CODE_DIR") or "/code")
    spec = _env("STRATA_HANDLER") or "main:handle"
    try:
        concurrency = int(_env("STRATA_CONCURRENCY") or "1")
    except ValueError:
        concurrency = 1
    concurrency = max(1, concurrency)

    # `strata` is imported from the runtime dir before the code dir goes on the
    # path, so the platform's module always wins; the code dir comes first for
    # everything else, like a script's own directory.
    sys.path.insert(0, runtime_dir)
    import strata

    Response = strata.Response
    sys.path.insert(0, code_dir)
    deps = _env("STRATA_DEPS")
    if deps:
        # The function's dependency layer: after its own code, before the standard library.
        sys.path.insert(1, deps)
    try:
        posix.chdir(code_dir)
    except OSError:
        pass

    # Line-buffer the real streams so output outside calls reaches the platform promptly.
    for s in (sys.__stdout__, sys.__stderr__):
        try:
            s.reconfigure(line_buffering=True)
        except Exception:
            pass
    sys.stdout = _Stream(sys.__stdout__, "stdout")
    sys.stderr = _Stream(sys.__stderr__, "stderr")
    return spec, concurrency


def load(spec):
    """Import the handler: (handler, import ms), or (None, the error message)."""
    t0 = time.perf_counter()
    try:
        handler = _load_handler(spec)
    except BaseException as e:  # SyntaxError, ImportError, SystemExit, ... all fail the init
        return None, _clip(_format_exc(e))
    return handler, (time.perf_counter() - t0) * 1000.0


def serve(handler, concurrency, import_ms):
    """Announce readiness on the control channel and serve calls until it closes."""
    _send(('{"t":"ready","import_ms":%.3f}' % import_ms).encode())
    _serve(handler, concurrency)


def main(runtime_dir=None):
    """Serve as an instance. runtime_dir: where strata.py is (default: this file's folder)."""
    try:
        posix.fstat(CTRL_FD)
    except OSError:
        sys.stderr.write("strata bootstrap: fd 3 (the control channel) is not open\n")
        sys.exit(2)
    spec, concurrency = setup(runtime_dir)
    handler, got = load(spec)
    if handler is None:
        _send(('{"t":"init_error","message":%s}' % _encode(got)).encode("utf-8", "replace"))
        _die(1)
    serve(handler, concurrency, got)


if __name__ == "__main__":
    main()
