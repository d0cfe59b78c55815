'use strict';
// Strata Node runtime bootstrap (protocol v1, see docs/protocol.md).
//
// Run as `/usr/bin/node /strata/runtime/node/bootstrap.js` with fd 3 a connected
// SOCK_STREAM unix socket to the platform. No npm dependencies.
//
// Environment:
//   STRATA_HANDLER      "module:function"; module is a path relative to the code dir
//                       without extension (e.g. "main:handle", "src/app:handler")
//   STRATA_CODE_DIR     directory with the user's code, default /code
//   STRATA_CONCURRENCY  max in-flight invokes, default 1

const fs = require('fs');
const path = require('path');
const util = require('util');
const net = require('net');
const Module = require('module');
const { AsyncLocalStorage } = require('async_hooks');

const CTRL_FD = 3;
const SMALL_BODY = 64 * 1024; // bodies up to this size go out in the same write as the header
// The platform's limits on a frame from an instance (crates/strata-instance/src/protocol.rs);
// a bigger frame is a protocol error that gets the instance killed, so the runtime keeps
// within them: long log lines are split, long error texts are clipped, too-large
// responses become error frames.
const MAX_HEADER = 1 << 20;
const MAX_BODY = 64 << 20;
const LOG_CHUNK = 64 * 1024; // UTF-16 units per log frame (JSON-escaped at most 6 bytes each)
const MAX_MESSAGE = 128 * 1024; // UTF-16 units of an error / init_error message
const RUNTIME_DIR = __dirname;
const STRATA_JS = path.join(RUNTIME_DIR, 'strata.js');
const CODE_DIR = path.resolve(process.env.STRATA_CODE_DIR || '/code');
const HANDLER_SPEC = process.env.STRATA_HANDLER || 'main:handle';
const CONCURRENCY = Math.max(1, parseInt(process.env.STRATA_CONCURRENCY || '1', 10) || 1);

const EMPTY = Buffer.alloc(0);
const H_TEXT = '[["content-type","text/plain; charset=utf-8"]]';
const H_BIN = '[["content-type","application/octet-stream"]]';
const H_JSON = '[["content-type","application/json"]]';
const CT_TEXT = 'text/plain; charset=utf-8';
const CT_BIN = 'application/octet-stream';
const CT_JSON = 'application/json';

// `require('strata')` resolves to our strata.js unless the code ships its own.
const origResolve = Module._resolveFilename;
Module._resolveFilename = function (request, parent, isMain, options) {
  if (request === 'strata') {
    try {
      return origResolve.call(this, request, parent, isMain, options);
    } catch (e) {
      if (e && e.code === 'MODULE_NOT_FOUND') return STRATA_JS;
      throw e;
    }
  }
  return origResolve.call(this, request, parent, isMain, options);
};
const strata = require(STRATA_JS);
const BRAND = strata.RESPONSE_BRAND;

// ------------------------------------------------------------------ control channel
//
// Until the handler is loaded, fd 3 is blocking and written with fs.writeSync.
// Then a net.Socket takes it over for reading, with `onread` so that every read
// lands in one reused buffer (no 64 KiB allocation per read). Frames are still
// written with fs.writeSync while nothing is queued in the socket (one syscall,
// none of the stream machinery); only if the kernel buffer is full (EAGAIN) do
// they go through sock.write, which queues and preserves order.

let sock = null;

try {
  fs.fstatSync(CTRL_FD);
} catch (e) {
  process.stderr.write(`strata bootstrap: fd 3 (the control channel) is not open: ${e.message}\n`);
  process.exit(2);
}

function channelGone(e) {
  // EPIPE / ECONNRESET: the platform went away; nobody is left to answer to.
  if (e.code !== 'EPIPE' && e.code !== 'ECONNRESET') {
    origStderrWrite(`strata bootstrap: control channel error: ${e.message}\n`);
  }
  process.exit(0);
}

// Write buf[0:len]. `scratch`: buf is the shared OUT buffer, so whatever
// cannot be written right away must be copied before it is queued.
function writeOut(buf, len, scratch) {
  let n = 0;
  if (sock === null || sock.writableLength === 0) {
    for (;;) {
      try {
        n += fs.writeSync(CTRL_FD, buf, n, len - n);
      } catch (e) {
        if (e.code === 'EAGAIN' && sock !== null) break;
        if (e.code === 'EINTR' || e.code === 'EAGAIN') continue;
        channelGone(e);
      }
      if (n === len) return;
    }
  }
  const rest = buf.subarray(n, len);
  sock.write(scratch ? Buffer.from(rest) : rest);
}

// Frames are assembled in OUT when they fit (a UTF-8 char is at most 3 bytes per UTF-16 unit).
const OUT = Buffer.allocUnsafe(SMALL_BODY + 64 * 1024);

// Write one frame. header: JSON string; body: Buffer (or undefined).
function send(header, body) {
  const bl = body === undefined ? 0 : body.length;
  if (8 + 3 * header.length + bl <= OUT.length) {
    const hl = OUT.write(header, 4, 'utf8');
    OUT.writeUInt32BE(hl, 0);
    OUT.writeUInt32BE(bl, 4 + hl);
    if (bl !== 0) body.copy(OUT, 8 + hl);
    writeOut(OUT, 8 + hl + bl, true);
    return;
  }
  const hl = Buffer.byteLength(header);
  const prefix = Buffer.allocUnsafe(8 + hl);
  prefix.writeUInt32BE(hl, 0);
  prefix.write(header, 4, hl, 'utf8');
  prefix.writeUInt32BE(bl, 4 + hl);
  writeOut(prefix, prefix.length, false);
  if (bl !== 0) writeOut(body, bl, false);
}

// JSON string literal for a frame header; lone surrogates become U+FFFD so that the
// header stays valid UTF-8 JSON for any strict parser.
function jstr(s) {
  return JSON.stringify(typeof s.toWellFormed === 'function' ? s.toWellFormed() : s);
}

// Frame reader. `pending` holds (copies of) bytes of an incomplete frame; they
// are only concatenated once the whole frame (or length prefix) is there.
let pending = [];
let pendingLen = 0;
let want = 4;
let onFrame = null;

function onRead(nread, readBuf) {
  let buf = readBuf;
  let end = nread;
  let reused = true; // buf is (part of) the shared read buffer, overwritten by the next read
  if (pendingLen !== 0) {
    pendingLen += nread;
    if (pendingLen < want) {
      pending.push(Buffer.from(buf.subarray(0, nread)));
      return;
    }
    pending.push(buf.subarray(0, nread));
    buf = Buffer.concat(pending, pendingLen);
    end = buf.length;
    reused = false;
    pending = [];
    pendingLen = 0;
  }
  let off = 0;
  for (;;) {
    const avail = end - off;
    if (avail < 4) { want = 4; break; }
    const hl = buf.readUInt32BE(off);
    if (avail < 8 + hl) { want = 8 + hl; break; }
    const bl = buf.readUInt32BE(off + 4 + hl);
    const total = 8 + hl + bl;
    if (avail < total) { want = total; break; }
    let msg;
    try {
      msg = JSON.parse(buf.toString('utf8', off + 4, off + 4 + hl));
    } catch (e) {
      origStderrWrite(`strata bootstrap: bad frame header: ${e.message}\n`);
      process.exit(1);
    }
    let body = EMPTY;
    if (bl !== 0) {
      body = buf.subarray(off + 8 + hl, off + total);
      if (reused) body = Buffer.from(body);
    }
    off += total;
    onFrame(msg, body);
  }
  if (off < end) {
    const rest = buf.subarray(off, end);
    pending.push(reused ? Buffer.from(rest) : rest);
    pendingLen = rest.length;
  }
}

function openSocket() {
  sock = new net.Socket({
    fd: CTRL_FD,
    readable: true,
    writable: true,
    allowHalfOpen: false,
    onread: { buffer: Buffer.allocUnsafe(256 * 1024), callback: onRead },
  });
  sock.on('error', channelGone);
  sock.on('end', () => process.exit(0));
  sock.on('close', () => process.exit(0));
}

// ------------------------------------------------------------------- output capture

// Which call is running. With STRATA_CONCURRENCY > 1, an AsyncLocalStorage
// follows each call through its awaits, timers and callbacks, so concurrent calls
// get their own lines. With 1 there is at most one call in flight and a plain
// variable says the same for free (AsyncLocalStorage's promise hooks cost about a
// third of an async call). Either way output from async work an earlier call left
// behind is attributed to the call in flight, as the platform does with raw output.
const als = CONCURRENCY > 1 ? new AsyncLocalStorage() : null;
let current; // the call in flight, when als === null

function currentCall() {
  return als === null ? current : als.getStore();
}

class Call {
  constructor(id) {
    this.id = id;
    this.jid = jstr(String(id)); // JSON-encoded id
    this.done = false;
    this.partOut = '';
    this.partErr = '';
  }

  log(stream, line) {
    if (line.length <= LOG_CHUNK) {
      send(`{"t":"log","id":${this.jid},"stream":"${stream}","line":${jstr(line)}}`);
      return;
    }
    for (let i = 0; i < line.length; i += LOG_CHUNK) {
      send(`{"t":"log","id":${this.jid},"stream":"${stream}","line":${jstr(line.slice(i, i + LOG_CHUNK))}}`);
    }
  }

  write(isErr, s) {
    let part = isErr ? this.partErr : this.partOut;
    let nl = s.indexOf('\n');
    if (nl === -1) {
      if (isErr) this.partErr = part + s; else this.partOut = part + s;
      return;
    }
    const stream = isErr ? 'stderr' : 'stdout';
    let start = 0;
    while (nl !== -1) {
      this.log(stream, part + s.slice(start, nl));
      part = '';
      start = nl + 1;
      nl = s.indexOf('\n', start);
    }
    const tail = s.slice(start);
    if (isErr) this.partErr = tail; else this.partOut = tail;
  }

  // End of the call: flush unterminated lines; later output goes to the real streams.
  finish() {
    this.done = true;
    if (current === this) current = undefined;
    if (this.partOut !== '') { this.log('stdout', this.partOut); this.partOut = ''; }
    if (this.partErr !== '') { this.log('stderr', this.partErr); this.partErr = ''; }
  }
}

function chunkToString(chunk, encoding) {
  if (typeof chunk === 'string') {
    if (!encoding || encoding === 'utf8' || encoding === 'utf-8' || encoding === 'buffer') return chunk;
    return Buffer.from(chunk, encoding).toString('utf8');
  }
  if (chunk instanceof Uint8Array) {
    return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength).toString('utf8');
  }
  return String(chunk);
}

// console.log/info/debug/warn/error/trace/dir/... all end in stream.write, so
// patching the two streams' write catches every console method plus direct writes.
function patchStream(stream, isErr) {
  const orig = stream.write;
  stream.write = function write(chunk, encoding, cb) {
    const call = currentCall();
    if (call === undefined || call.done) return orig.apply(this, arguments);
    if (typeof encoding === 'function') { cb = encoding; encoding = undefined; }
    call.write(isErr, chunkToString(chunk, encoding));
    if (typeof cb === 'function') process.nextTick(cb);
    return true;
  };
  return (s) => orig.call(stream, s);
}
const origStdoutWrite = patchStream(process.stdout, false);
const origStderrWrite = patchStream(process.stderr, true);

// A promise rejected with nobody listening is reported (to the call's log if it
// belongs to one) but does not take the instance down; an uncaught exception does.
process.on('unhandledRejection', (reason) => {
  const text = `Unhandled promise rejection: ${formatError(reason)}\n`;
  const call = currentCall();
  if (call !== undefined && !call.done) call.write(true, text);
  else origStderrWrite(text);
});

// -------------------------------------------------------------------------- requests

function parseQuery(qs) {
  const list = [];
  if (qs) for (const pair of new URLSearchParams(qs)) list.push(pair);
  return list;
}

class Request {
  #hl; #h; #ql; #q;

  constructor(msg, body) {
    this.id = msg.id;
    this.method = msg.method || 'GET';
    this.path = msg.path || '/';
    this.query_string = msg.query || '';
    this.body = body;
    this.#hl = msg.headers || [];
    this.#h = undefined;
    this.#ql = undefined;
    this.#q = undefined;
  }

  /** [[name, value], ...] in arrival order, names lowercase, repeats kept. */
  get header_list() { return this.#hl; }

  /** {name: value}; repeated headers joined with ", ". */
  get headers() {
    let h = this.#h;
    if (h === undefined) {
      h = {};
      for (const [k, v] of this.#hl) h[k] = Object.prototype.hasOwnProperty.call(h, k) ? `${h[k]}, ${v}` : v;
      this.#h = h;
    }
    return h;
  }

  /** [[name, value], ...] decoded from query_string, blanks kept. */
  get query_list() {
    if (this.#ql === undefined) this.#ql = parseQuery(this.query_string);
    return this.#ql;
  }

  /** {name: value}; the last value of a repeated name wins. */
  get query() {
    let q = this.#q;
    if (q === undefined) {
      q = {};
      for (const [k, v] of this.query_list) q[k] = v;
      this.#q = q;
    }
    return q;
  }

  get queryString() { return this.query_string; }
  get headerList() { return this.header_list; }
  get queryList() { return this.query_list; }

  /** The body decoded as UTF-8 (invalid bytes become U+FFFD). */
  text() { return this.body.toString('utf8'); }

  /** The body parsed as JSON. */
  json() { return JSON.parse(this.body.toString('utf8')); }

  toJSON() {
    return {
      id: this.id, method: this.method, path: this.path, query_string: this.query_string,
      header_list: this.#hl, body_length: this.body.length,
    };
  }

  [util.inspect.custom]() {
    return `Request { ${this.method} ${this.path}${this.query_string ? '?' + this.query_string : ''} (${this.body.length} bytes) }`;
  }
}

// ------------------------------------------------------------------------- responses

class BadResult extends Error {}

function toBuffer(v) {
  if (Buffer.isBuffer(v)) return v;
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (v instanceof ArrayBuffer || (typeof SharedArrayBuffer !== 'undefined' && v instanceof SharedArrayBuffer)) return Buffer.from(v);
  return undefined;
}

function headerPair(out, k, v) {
  if (typeof k !== 'string' || k === '') throw new BadResult(`response header name ${util.inspect(k)} is not a non-empty string`);
  if (Array.isArray(v)) {
    for (const x of v) headerPair(out, k, x);
    return;
  }
  const s = typeof v === 'string' ? v : String(v);
  if (/[\r\n\0:]/.test(k) || /[\r\n\0]/.test(s)) {
    throw new BadResult(`response header ${JSON.stringify(k)}: ${JSON.stringify(s)} contains a forbidden character`);
  }
  out.push([k, s]);
}

function normHeaders(headers) {
  const out = [];
  if (headers === null || headers === undefined) return out;
  if (typeof headers !== 'object') throw new BadResult(`response headers must be an object or an array of [name, value] pairs, not ${typeof headers}`);
  if (Array.isArray(headers) || typeof headers[Symbol.iterator] === 'function') {
    for (const pair of headers) {
      if (!Array.isArray(pair) || pair.length !== 2) throw new BadResult(`response header ${util.inspect(pair)} is not a [name, value] pair`);
      headerPair(out, pair[0], pair[1]);
    }
  } else {
    for (const k of Object.keys(headers)) headerPair(out, k, headers[k]);
  }
  return out;
}

function responseHeader(jid, status, headersJson) {
  return `{"t":"response","id":${jid},"status":${status},"headers":${headersJson}}`;
}

function fromParts(jid, status, headers, body) {
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    throw new BadResult(`response status must be an integer in 100..999, not ${util.inspect(status)}`);
  }
  const hl = normHeaders(headers);
  let b, ct;
  if (body === null || body === undefined) { b = EMPTY; ct = null; }
  else if (typeof body === 'string') { b = Buffer.from(body, 'utf8'); ct = CT_TEXT; }
  else if ((b = toBuffer(body)) !== undefined) { ct = CT_BIN; }
  else { b = Buffer.from(jsonOrThrow(body), 'utf8'); ct = CT_JSON; }
  if (b.length && ct !== null && !hl.some(([k]) => k.toLowerCase() === 'content-type')) hl.push(['content-type', ct]);
  return [responseHeader(jid, status, JSON.stringify(hl)), b];
}

function jsonOrThrow(v) {
  const s = JSON.stringify(v);
  if (s === undefined) throw new TypeError(`a ${typeof v} is not JSON-serialisable`);
  return s;
}

function isResponseShaped(v) {
  if (!Number.isInteger(v.status)) return false;
  const proto = Object.getPrototypeOf(v);
  if (proto !== Object.prototype && proto !== null) return false;
  for (const k in v) if (k !== 'status' && k !== 'headers' && k !== 'body') return false;
  return true;
}

// Map a handler's return value to [response header JSON, body Buffer]
// (or a promise of it, for a fetch Response).
function build(jid, v) {
  switch (typeof v) {
    case 'string':
      return [responseHeader(jid, 200, H_TEXT), Buffer.from(v, 'utf8')];
    case 'undefined':
      return [responseHeader(jid, 204, '[]'), EMPTY];
    case 'object': {
      if (v === null) return [responseHeader(jid, 204, '[]'), EMPTY];
      const b = toBuffer(v);
      if (b !== undefined) return [responseHeader(jid, 200, H_BIN), b];
      if (v[BRAND] === true) return fromParts(jid, v.status, v.headers, v.body);
      if (isResponseShaped(v)) return fromParts(jid, v.status, v.headers, v.body);
      // A fetch Response (the global one). Checked last and by shape first:
      // touching globalThis.Response loads undici, which costs startup time.
      if (typeof v.arrayBuffer === 'function' && typeof globalThis.Response === 'function' && v instanceof globalThis.Response) {
        return v.arrayBuffer().then((ab) => {
          const hl = [];
          for (const [k, val] of v.headers) hl.push([k, val]);
          return [responseHeader(jid, v.status, JSON.stringify(hl)), Buffer.from(ab)];
        });
      }
      break;
    }
    default:
      break;
  }
  return [responseHeader(jid, 200, H_JSON), Buffer.from(jsonOrThrow(v), 'utf8')];
}

// Stack lines of the runtime itself (this file, node internals) are noise to the user.
function isOwnFrame(line) {
  const t = line.trimStart();
  return t.startsWith('at ') && (t.includes(__filename + ':') || t.includes('node:internal/'));
}

function formatError(e) {
  if (e instanceof Error) return util.inspect(e).split('\n').filter((l) => !isOwnFrame(l)).join('\n');
  if (typeof e === 'string') return e;
  return `thrown non-Error value: ${util.inspect(e)}`;
}

// ----------------------------------------------------------------------------- calls

let handler = null;
let inflight = 0;
const queued = [];

function clip(text) {
  if (text.length <= MAX_MESSAGE) return text;
  const half = MAX_MESSAGE / 2;
  return `${text.slice(0, half)}\n... (${text.length - 2 * half} characters cut) ...\n${text.slice(-half)}`;
}

function sendError(call, text) {
  send(`{"t":"error","id":${call.jid},"message":${jstr(clip(text))}}`);
}

// [header, body] within the platform's limits, else an error frame is sent (returns false).
function checkSize(call, header, body) {
  const hl = header.length * 3 <= MAX_HEADER ? 0 : Buffer.byteLength(header);
  if (body.length <= MAX_BODY && hl <= MAX_HEADER) return true;
  sendError(call, `invalid response: ${Buffer.byteLength(header)} bytes of headers and ${body.length} bytes of body `
    + `exceed the platform's limits (${MAX_HEADER} and ${MAX_BODY} bytes)`);
  return false;
}

function sendResult(call, res) {
  let out;
  try {
    out = build(call.jid, res);
  } catch (e) {
    sendError(call, e instanceof BadResult
      ? `invalid response: ${e.message}`
      : `handler returned a value that cannot be serialised: ${e && e.message ? e.message : String(e)}`);
    return;
  }
  if (out instanceof Promise) {
    out.then((o) => { if (checkSize(call, o[0], o[1])) send(o[0], o[1]); },
      (e) => sendError(call, `reading the returned Response failed: ${formatError(e)}`)).then(done);
    return true;
  }
  if (checkSize(call, out[0], out[1])) send(out[0], out[1]);
}

function settle(call, value, failed) {
  call.finish();
  if (failed) {
    sendError(call, formatError(value));
  } else if (sendResult(call, value) === true) {
    return; // done() once the fetch Response body has been read
  }
  done();
}

function invoke(msg, body) {
  inflight++;
  const call = new Call(msg.id);
  let res;
  try {
    if (als === null) {
      current = call;
      res = handler(new Request(msg, body));
    } else {
      res = als.run(call, handler, new Request(msg, body));
    }
    if (res !== null && typeof res === 'object' && typeof res.then === 'function') {
      Promise.resolve(res).then((v) => settle(call, v, false), (e) => settle(call, e, true));
      return;
    }
  } catch (e) {
    settle(call, e, true);
    return;
  }
  settle(call, res, false);
}

function done() {
  inflight--;
  if (queued.length !== 0 && inflight < CONCURRENCY) {
    const [m, b] = queued.shift();
    invoke(m, b);
  }
}

function frame(msg, body) {
  switch (msg.t) {
    case 'invoke':
      // The platform never sends more than STRATA_CONCURRENCY; queue if it does.
      if (inflight < CONCURRENCY) invoke(msg, body);
      else queued.push([msg, body]);
      break;
    case 'shutdown':
      process.exit(0);
      break;
    default:
      origStderrWrite(`strata bootstrap: ignoring unknown frame type ${JSON.stringify(msg.t)}\n`);
  }
}

// ------------------------------------------------------------------------------ init

function resolveModule(spec) {
  const base = path.resolve(CODE_DIR, spec);
  try {
    return require.resolve(base);
  } catch (e) {
    if (e.code !== 'MODULE_NOT_FOUND') throw e;
    for (const ext of ['.mjs', '.cjs']) if (fs.existsSync(base + ext)) return base + ext;
    throw e;
  }
}

// The first ESM import registers a tiny resolve hook so that `import ... from 'strata'` works too.
function registerEsmStrata() {
  if (typeof Module.register !== 'function') return;
  const { pathToFileURL } = require('url');
  const target = JSON.stringify(pathToFileURL(STRATA_JS).href);
  const src = `export async function resolve(s, c, next) {
    try { return await next(s, c); }
    catch (e) { if (s === 'strata') return { url: ${target}, shortCircuit: true }; throw e; }
  }`;
  Module.register('data:text/javascript,' + encodeURIComponent(src));
}

async function loadModule(file) {
  if (file.endsWith('.mjs')) return importEsm(file);
  try {
    return require(file);
  } catch (e) {
    if (e && e.code === 'ERR_REQUIRE_ESM') return importEsm(file);
    throw e;
  }
}

async function importEsm(file) {
  registerEsmStrata();
  const { pathToFileURL } = require('url');
  return import(pathToFileURL(file).href);
}

async function loadHandler(spec) {
  const i = spec.lastIndexOf(':');
  let modSpec = i === -1 ? spec : spec.slice(0, i);
  const fnName = (i === -1 ? '' : spec.slice(i + 1)).trim() || 'handle';
  modSpec = modSpec.trim().replace(/\.(c|m)?js$/, '');
  if (!modSpec) throw new Error(`STRATA_HANDLER ${JSON.stringify(spec)}: expected "module:function"`);
  const file = resolveModule(modSpec);
  const mod = await loadModule(file);
  let fn = mod == null ? undefined : mod[fnName];
  if (typeof fn !== 'function' && mod != null && mod.default != null && typeof mod.default === 'object') fn = mod.default[fnName];
  if (typeof fn !== 'function' && typeof mod === 'function' && fnName === 'handle') fn = mod; // module.exports = fn
  if (typeof fn !== 'function') {
    throw new TypeError(`handler ${JSON.stringify(spec)}: ${file} does not export a function named ${JSON.stringify(fnName)}`
      + (fn === undefined ? '' : ` (it is a ${typeof fn})`));
  }
  return fn;
}

async function main() {
  try { process.chdir(CODE_DIR); } catch (e) { /* keep the platform's cwd */ }
  const t0 = performance.now();
  try {
    handler = await loadHandler(HANDLER_SPEC);
  } catch (e) {
    send(`{"t":"init_error","message":${jstr(clip(formatError(e)))}}`); // blocking write
    process.exit(1);
  }
  const importMs = performance.now() - t0;
  send(`{"t":"ready","import_ms":${importMs.toFixed(3)}}`);
  onFrame = frame;
  openSocket();
}

main().catch((e) => {
  origStderrWrite(`strata bootstrap: ${formatError(e)}\n`);
  process.exit(1);
});
