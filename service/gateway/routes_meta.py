"""The API's description, its docs page, and metrics."""

import html

from aiohttp import web

from service.gateway.keys import METRICS
from service.gateway.openapi import build_openapi

routes = web.RouteTableDef()


@routes.get("/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(build_openapi())


@routes.get("/docs")
async def docs(request: web.Request) -> web.Response:
    """A self-contained page (no CDN: linkledger often runs where nothing outside is reachable)."""
    spec = build_openapi()
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            rows.append(f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
                        f"<td>{html.escape(op['summary'])}</td><td>{html.escape(op.get('description', 'open'))}</td></tr>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>linkledger API</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{padding:4px 10px;border-bottom:1px solid #ddd}</style></head>"
        f"<body><h1>linkledger API</h1><p>{html.escape(spec['info']['description'])} "
        "Machine-readable: <a href='/openapi.json'>/openapi.json</a>.</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th><th>who</th></tr>" + "".join(rows) + "</table></body></html>"
    )
    return web.Response(text=page, content_type="text/html")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": "text/plain; version=0.0.4"})
