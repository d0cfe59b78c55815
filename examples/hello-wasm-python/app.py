"""Hello on the WebAssembly tier, in Python: a wasi:http component made by componentize-py.

Build: cargo xtask examples (or, with the WASI HTTP WIT files in ./wit:
    componentize-py -d wit -w wasi:http/proxy@0.2.12 componentize app -o hello.wasm)

    curl -d world 127.0.0.1:8080/function/hello-wasm-python      -> Hello from Python, world!
    curl '127.0.0.1:8080/function/hello-wasm-python/json?a=1'      -> the request as JSON
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import types as http
from wit_world.imports.streams import StreamError_Closed


def read_body(request: http.IncomingRequest) -> bytes:
    body = request.consume()
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(65536))
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    break
                raise
    http.IncomingBody.finish(body)
    return b"".join(chunks)


def respond(out: http.ResponseOutparam, status: int, content_type: str, data: bytes) -> None:
    response = http.OutgoingResponse(http.Fields.from_list([("content-type", content_type.encode())]))
    response.set_status_code(status)
    body = response.body()
    http.ResponseOutparam.set(out, Ok(response))
    with body.write() as stream:
        for i in range(0, len(data), 4096):
            stream.blocking_write_and_flush(data[i : i + 4096])
    http.OutgoingBody.finish(body, None)


def method_name(method: http.Method) -> str:
    if isinstance(method, http.Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: http.IncomingRequest, response_out: http.ResponseOutparam) -> None:
        path, _, query = (request.path_with_query() or "/").partition("?")
        method = method_name(request.method())
        headers = {k: v.decode(errors="replace") for k, v in request.headers().entries()}
        body = read_body(request)
        if path == "/json":
            echo = {"method": method, "path": path, "query": query, "headers": headers, "body": body.decode(errors="replace")}
            respond(response_out, 200, "application/json", json.dumps(echo).encode())
            return
        name = body.decode(errors="replace").strip() or "world"
        print(f"greeting {name}")
        respond(response_out, 200, "text/plain", f"Hello from Python, {name}!\n".encode())
