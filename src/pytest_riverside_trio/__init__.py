"""The pytest plugin of riverside-trio: the ``riverside`` fixture.

pytest loads it through the ``pytest11`` entry point in every run of an environment where
riverside-trio is installed, so it stays inert until a test asks for the fixture: no hooks,
no options, and nothing imported but pytest (``riverside_trio`` itself is imported by the
fixture, when a test uses it). That is why it lives in a module of its own: a module inside
``riverside_trio`` would import the whole framework in every pytest run. ``-p
no:riverside_trio`` turns it off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from riverside_trio.testing import Riverside

__all__ = ["riverside"]


@pytest.fixture
def riverside() -> Riverside:
    """Serve handlers and connect clients in a Trio test (a
    :class:`riverside_trio.testing.Riverside`)::

        async def test_echo(riverside):
            async with riverside.serve(EchoHandler) as server, server.connect() as client:
                await client.send({"hi": 1})
                assert await client.receive() == {"hi": 1}

    The test itself runs under Trio: pytest-trio's ``trio_mode = true``, or
    ``@pytest.mark.trio`` on the test.
    """
    from riverside_trio.testing import Riverside

    return Riverside()
