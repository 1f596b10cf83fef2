"""The vision service under memory pressure: concurrent large uploads, all whole.

The seed-shaped app (``apps/vision_app.py``, a sync endpoint in Starlette's
thread pool) runs unmodified under ``mlx-vlm-safe run`` with
``MLX_VLM_SAFE_MEMORY_LIMIT`` sized to hold one large request and not two.
Before admission with reservations, such uploads at once came back shortened
to the ladder's 512/256 tokens as plain 200s, or as 500s with
``MemoryError``, although each fits alone.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tools.matrix import Expected

from ..conftest import Tiny
from ..patch.test_memory_load import _one_fits
from .test_service import _answer, _serving, png  # noqa: F401 - the png fixture

pytestmark = pytest.mark.model
TOKENS = 150
UPLOADS = 8


def test_concurrent_large_uploads_that_fit_one_at_a_time_are_all_served_whole(
    tmp_path_factory: pytest.TempPathFactory,
    release: Expected,
    tiny: Tiny,
    png: bytes,  # noqa: F811 - the fixture imported above
) -> None:
    limit = str(_one_fits(tiny, TOKENS))  # one fits, two do not
    workdir = tmp_path_factory.mktemp("service-memory")
    with _serving(workdir, release, MLX_VLM_SAFE_MEMORY_LIMIT=limit) as service:
        alone = _answer(*service.post("/sync", png, max_tokens=TOKENS))
        with ThreadPoolExecutor(UPLOADS) as pool:
            replies = list(
                pool.map(
                    lambda _: service.post("/sync", png, max_tokens=TOKENS),
                    range(UPLOADS),
                )
            )
        statuses = [status for status, _ in replies]
        assert statuses == [200] * UPLOADS, service.log_tail()
        assert [_answer(*reply) for reply in replies] == [alone] * UPLOADS
        assert service.proc.poll() is None  # the server is alive
        # Whole because they took turns: the ledger made them wait. (Without
        # it, an in-flight check of a call this short sees no growth to
        # refuse, so the answers alone cannot tell that it ran.)
        with urllib.request.urlopen(service.url + "/memory-wait") as response:
            assert json.load(response)["seconds"] > 0
