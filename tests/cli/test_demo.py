"""``mlx-vlm-safe demo``: the side-by-side table on the tiny checkpoint."""

from __future__ import annotations

import io
import pathlib

import pytest

from tools.matrix import Expected


@pytest.mark.model
def test_demo_labels_follow_max_tokens_and_messages_are_whole(
    release: Expected, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlx_vlm_safe._cli import _demo

    monkeypatch.setenv("MLX_VLM_SAFE_CACHE", str(tmp_path))
    out = io.StringIO()
    assert _demo.run(out=out, max_tokens=3) == 0
    text = out.getvalue()
    assert "normal call, max_tokens=3" in text
    assert "max_tokens=8" not in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("call "))
    table = lines[start : lines.index("", start)]
    assert all(len(line) <= 40 + 2 * (_demo.COLUMN + 2) for line in table), text
    joined = " ".join(" ".join(lines).split())  # undo the wrapping
    if release.has("rejects_int_repetition_penalty"):
        assert "must be a non-negative float, got 1" in joined, text
    for legend in _demo.LEGEND:  # the legend, whole
        assert " ".join(legend.split()) in joined, text
    assert "[length]" in text
