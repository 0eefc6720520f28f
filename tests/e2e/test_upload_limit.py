"""End to end: the server itself refuses an upload over the app's limit, not only the upload widget.

A real session uploads a small image through the sidebar's widget; the test then replays that request
(same session, same XSRF token) with 25 MB, as a client that skips the widget's check would, and once
more with 1 MB to show the replay itself is accepted. `attnscope app` sets server.maxUploadSize.
"""

from __future__ import annotations

import io
import uuid

import pytest

pytestmark = pytest.mark.e2e

TIMEOUT = 150_000


def png_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 32), "white").save(buf, format="PNG")
    return buf.getvalue()


def test_server_refuses_an_upload_over_the_limit(server, browser, artifacts):
    from app.session import MAX_UPLOAD_MB

    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    puts = []
    page.on("request", lambda r: puts.append(r) if r.method == "PUT" and "/_stcore/upload_file/" in r.url else None)
    try:
        page.goto(server, timeout=TIMEOUT)
        model = page.locator("[data-testid='stSidebar']").get_by_role("combobox", name="Model", exact=True)
        model.wait_for(timeout=TIMEOUT)
        model.click()
        page.get_by_role("option", name="digits-vit (vit)", exact=True).click()
        uploader = page.locator("[data-testid='stSidebar'] [data-testid='stFileUploader'] input[type=file]")
        uploader.wait_for(state="attached", timeout=TIMEOUT)
        uploader.set_input_files({"name": "small.png", "mimeType": "image/png", "buffer": png_bytes()})
        for _ in range(100):
            if puts and puts[-1].response() is not None:
                break
            page.wait_for_timeout(200)
        assert puts, "the widget's upload request was not seen"
        first = puts[-1]
        assert first.response().ok
        base = first.url.rsplit("/", 1)[0]
        token = first.headers.get("x-xsrftoken", "")

        def put(size_mb: float) -> int:
            body = b"\0" * int(size_mb * 1024 * 1024)
            resp = page.request.put(f"{base}/{uuid.uuid4()}", headers={"X-Xsrftoken": token},
                                    multipart={"file": {"name": "big.png", "mimeType": "image/png", "buffer": body}},
                                    timeout=TIMEOUT)
            return resp.status

        assert put(1) in (200, 204)  # the replay itself is accepted
        assert put(MAX_UPLOAD_MB + 5) == 413  # 25 MB: refused by the server
    finally:
        page.screenshot(path=str(artifacts / "upload_limit.png"))
        context.close()
