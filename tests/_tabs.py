"""Several tabs of one headless Chromium (``tests/test_browser.py``'s ``open_browser`` and
CDP client), driven by the test: type into a page, click, wait for what the page shows,
take a screenshot.

Waiting is event-driven: ``wait_for`` resolves, inside the page, on the first DOM mutation
after which a condition holds (a MutationObserver), and only the test's ``trio.fail_after``
bounds it."""

from __future__ import annotations

import base64
import json
from typing import Any

import trio

from .test_browser import Browser, CDPError

PAGE_TIMEOUT = 30.0  # the bound on one wait, reported with the page's console

_WAIT = """new Promise((resolve) => {
  const test = () => { try { return (CONDITION); } catch (e) { return false; } };
  const check = () => {
    const value = test();
    if (value) { observer.disconnect(); resolve(value); }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {subtree: true, childList: true, characterData: true,
                              attributes: true});
  check();
})"""


class Tab:
    """One page in its own tab (its own sessionStorage)."""

    def __init__(self, browser: Browser, target_id: str, session: str, name: str) -> None:
        self.browser = browser
        self.target_id = target_id
        self.session = session
        self.name = name

    @classmethod
    async def open(
        cls, browser: Browser, url: str, *, name: str = "", width: int = 900, height: int = 640
    ) -> Tab:
        """Open ``url`` in a new tab of ``width`` x ``height`` CSS pixels; return once loaded."""
        cdp = browser.cdp
        target = await cdp.call("Target.createTarget", url="about:blank")
        attached = await cdp.call(
            "Target.attachToTarget", targetId=target["targetId"], flatten=True
        )
        session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            await cdp.call(f"{domain}.enable", session)
        await cdp.call(
            "Emulation.setDeviceMetricsOverride",
            session,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await cdp.call("Page.setLifecycleEventsEnabled", session, enabled=True)
        nav = await cdp.call("Page.navigate", session, url=url)
        assert "errorText" not in nav, f"navigation failed: {nav}\n{browser.diagnostics()}"
        await cdp.wait_event("Page.lifecycleEvent", session, loaderId=nav["loaderId"], name="load")
        return cls(browser, target["targetId"], session, name or url)

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page (a promise is awaited)."""
        result = await self.browser.cdp.call(
            "Runtime.evaluate",
            self.session,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{self.name}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, condition: str, what: str = "") -> Any:
        """Wait until the JavaScript ``condition`` is truthy; return its value."""
        try:
            with trio.fail_after(PAGE_TIMEOUT):
                return await self.evaluate(_WAIT.replace("CONDITION", condition))
        except trio.TooSlowError:
            text = "(unreadable)"
            with trio.move_on_after(5):
                text = await self.text("body")
            raise AssertionError(
                f"{self.name}: not within {PAGE_TIMEOUT} s: {what or condition}\n"
                f"the page shows:\n{text}\n{self.browser.diagnostics()}"
            ) from None

    async def text(self, selector: str) -> str:
        value = await self.evaluate(f"document.querySelector({json.dumps(selector)}).innerText")
        return str(value)

    async def fill(self, selector: str, value: str) -> None:
        await self.evaluate(
            f"document.querySelector({json.dumps(selector)}).value = {json.dumps(value)}"
        )

    async def submit(self, form: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(form)}).requestSubmit()")

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def screenshot(self) -> bytes:
        """A PNG of the viewport (the tab comes to the front: a hidden one draws nothing)."""
        await self.browser.cdp.call("Page.bringToFront", self.session)
        shot = await self.browser.cdp.call("Page.captureScreenshot", self.session, format="png")
        return base64.b64decode(shot["data"])

    async def close(self) -> None:
        await self.browser.cdp.call("Target.closeTarget", targetId=self.target_id)
