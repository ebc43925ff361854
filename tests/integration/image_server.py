"""A local http server for image fetching tests: it counts every request it gets."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from tests.integration.images import encode, picture


class ImageServer:
    def __init__(self) -> None:
        self.png = encode(picture(72, 56, seed=21), "PNG")
        self.hits: Counter[str] = Counter()
        self.port = 0
        self._runner: web.AppRunner | None = None

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.hits[name] += 1
        if name == "image.png":
            return web.Response(body=self.png, content_type="image/png")
        if name == "redirect":
            raise web.HTTPFound("/image.png")
        if name == "loop":
            raise web.HTTPFound("/loop")
        if name == "page.html":
            return web.Response(text="<html>not an image</html>", content_type="text/html")
        if name == "huge.png":  # over the test stack's 1 MiB limit, without a Content-Length
            response = web.StreamResponse(headers={"Content-Type": "image/png"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(40):
                await response.write(b"\0" * 65536)
            await response.write_eof()
            return response
        raise web.HTTPNotFound()
