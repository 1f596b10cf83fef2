"""``mlx-vlm-safe run --metrics-port P [--metrics-addr A] -- CMD``: the flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from mlx_vlm_safe._cli import _launch, main


@pytest.fixture
def launched(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """What ``run`` would have exec'd, instead of exec'ing it."""
    seen: list[object] = []

    def launch(
        command: Sequence[str], settings: Mapping[str, str] | None = None
    ) -> int:
        seen.append((list(command), dict(settings or {})))
        return 0

    monkeypatch.setattr(_launch, "launch", launch)
    return seen


def test_the_flags_become_the_programs_environment(launched: list[object]) -> None:
    assert main(["run", "--metrics-port", "9464", "--", "python", "app.py"]) == 0
    assert main(["run", "--metrics-port", "9", "--metrics-addr", "0.0.0.0", "x"]) == 0
    assert launched == [
        (["python", "app.py"], {"MLX_VLM_SAFE_METRICS_PORT": "9464"}),
        (
            ["x"],
            {"MLX_VLM_SAFE_METRICS_PORT": "9", "MLX_VLM_SAFE_METRICS_ADDR": "0.0.0.0"},
        ),
    ]
    env = _launch.environment({}, {"MLX_VLM_SAFE_METRICS_PORT": "9464"})
    assert env["MLX_VLM_SAFE_METRICS_PORT"] == "9464"
    assert env["MLX_VLM_SAFE_AUTOPATCH"] == "1"


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--metrics-port", "0"], "a port is a whole number from 1 to 65535"),
        (["--metrics-port", "http"], "a port is a whole number from 1 to 65535"),
        (["--metrics-addr", "0.0.0.0"], "--metrics-addr needs --metrics-port"),
        (["--metrics-port", "9", "--metrics-addr", "here"], "--metrics-addr"),
    ],
)
def test_bad_flags_are_usage_errors(
    args: list[str],
    says: str,
    launched: list[object],
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["run", *args, "--", "python", "app.py"])
    assert info.value.code == 2
    assert says in capsys.readouterr().err
    assert launched == []
