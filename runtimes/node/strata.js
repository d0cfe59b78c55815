'use strict';
// Helpers for Strata Node handlers.
//
//   const { Response } = require('strata');
//   exports.handle = async (req) => new Response(201, { 'content-type': 'text/plain' }, 'created');
//
// The bootstrap makes `require('strata')` resolve to this file (unless the code
// ships its own node_modules/strata). Note that Node 20 also has a global
// `Response` (the fetch API one); the bootstrap accepts that too, but this one
// is synchronous and cheaper.

const BRAND = Symbol.for('strata.response');

/**
 * An explicit HTTP response returned by a handler.
 *
 *   new Response(status = 200, headers = null, body = '')
 *   new Response({ status, headers, body })
 *
 * status:  integer HTTP status code (100-999).
 * headers: object name -> value (an array value gives a repeated header),
 *          an array of [name, value] pairs, a Map or a fetch Headers; null for none.
 * body:    Buffer / Uint8Array / ArrayBuffer (sent as is), string (UTF-8),
 *          null/undefined (empty), or any other JSON-serialisable value (JSON-encoded).
 *
 * When no content-type header is given and the body is not empty, one is added:
 * text/plain; charset=utf-8 for strings, application/json for JSON values,
 * application/octet-stream for binary bodies.
 */
class Response {
  constructor(status = 200, headers = null, body = '') {
    if (status !== null && typeof status === 'object') {
      ({ status = 200, headers = null, body = '' } = status);
    }
    this.status = status;
    this.headers = headers;
    this.body = body;
  }
}
Object.defineProperty(Response.prototype, BRAND, { value: true });

exports.Response = Response;
exports.RESPONSE_BRAND = BRAND;
