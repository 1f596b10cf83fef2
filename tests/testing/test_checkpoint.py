"""The tiny checkpoint: real mlx_vlm.load()/generate() on it, caching, determinism.

No mocks: every test builds real files, and the model tests run the installed
mlx-vlm release.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import textwrap
from typing import Any

import pytest

from mlx_vlm_safe.testing import (
    _checkpoint,
    build_tiny_checkpoint,
    default_cache_dir,
    tiny_image,
    tiny_image_path,
    tiny_prompt,
)

MARKER = _checkpoint._MARKER
FILES = _checkpoint._FILES
REPO = pathlib.Path(__file__).resolve().parents[2]


def _digest(path: pathlib.Path) -> dict[str, str]:
    return {
        f.name: hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(path.iterdir())
    }


def _mlx_vlm() -> Any:
    """The real mlx_vlm module, typed loosely: its API differs between releases."""
    import mlx_vlm

    return mlx_vlm


def _stamp(path: pathlib.Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return build_tiny_checkpoint(tmp_path_factory.mktemp("shared") / "ckpt")


# --------------------------------------------------------------------------- model


@pytest.mark.model
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("image_kind", ["path", "pil"])
def test_real_generate_runs_exactly_to_max_tokens(
    tmp_path: pathlib.Path, dtype: str, image_kind: str
) -> None:
    mlx_vlm = _mlx_vlm()

    path = build_tiny_checkpoint(tmp_path / "ckpt", dtype=dtype)
    model, processor = mlx_vlm.load(str(path))
    prompt = tiny_prompt(processor, model.config, "Describe the image.")
    image: Any = (
        str(tiny_image_path(tmp_path)) if image_kind == "path" else tiny_image()
    )
    result = mlx_vlm.generate(
        model, processor, prompt, image=[image], max_tokens=8, verbose=False
    )
    assert result.generation_tokens == 8
    assert isinstance(result.text, str)
    assert result.text.strip()
    assert result.prompt_tokens > 16  # 16 image tokens + BOS + text


@pytest.mark.model
@pytest.mark.parametrize("max_tokens", [1, 3, 64])
def test_never_stops_early(ckpt: pathlib.Path, max_tokens: int) -> None:
    mlx_vlm = _mlx_vlm()

    model, processor = mlx_vlm.load(str(ckpt))
    prompt = tiny_prompt(processor, model.config, "What is this?")
    result = mlx_vlm.generate(
        model,
        processor,
        prompt,
        image=[str(tiny_image_path(ckpt.parent))],
        max_tokens=max_tokens,
        verbose=False,
    )
    assert result.generation_tokens == max_tokens
    assert result.text


@pytest.mark.model
def test_greedy_text_is_repeatable_within_a_release(ckpt: pathlib.Path) -> None:
    mlx_vlm = _mlx_vlm()

    model, processor = mlx_vlm.load(str(ckpt))
    prompt = tiny_prompt(processor, model.config, "hello")
    image = [str(tiny_image_path(ckpt.parent))]
    texts = {
        mlx_vlm.generate(
            model, processor, prompt, image=image, max_tokens=16, verbose=False
        ).text
        for _ in range(2)
    }
    assert len(texts) == 1


@pytest.mark.model
def test_prompt_is_image_token_plus_text(ckpt: pathlib.Path) -> None:
    mlx_vlm = _mlx_vlm()

    model, processor = mlx_vlm.load(str(ckpt))
    assert tiny_prompt(processor, model.config, "hi") == "<image>hi"


# ------------------------------------------------------------------- the files


def test_writes_every_file_and_is_small(ckpt: pathlib.Path) -> None:
    names = {p.name for p in ckpt.iterdir()}
    assert names == {*FILES, MARKER}
    total = sum(p.stat().st_size for p in ckpt.iterdir())
    assert total < 2 * 1024 * 1024
    # No leftover temporary siblings from the atomic build.
    assert [p.name for p in ckpt.parent.iterdir() if p.name.startswith(".")] == []


def test_tokenizer_has_specials_at_fixed_ids_and_full_vocab(ckpt: pathlib.Path) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(ckpt / "tokenizer.json"))
    assert tok.get_vocab_size() == 512
    for i, name in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]):
        assert tok.token_to_id(name) == i
    ids = tok.encode("Kongum chel bido.").ids
    assert ids[0] == 2  # BOS prepended by the post-processor
    assert tok.decode(ids) == "Kongum chel bido."


def test_eos_and_byte_rows_are_zero(ckpt: pathlib.Path) -> None:
    import mlx.core as mx

    weights: dict[str, Any] = mx.load(str(ckpt / "model.safetensors"))  # type: ignore[assignment]
    embed = weights["language_model.model.embed_tokens.weight"]
    assert embed.shape == (512, 64)
    assert mx.all(embed[: 5 + 256] == 0).item()
    assert mx.all(mx.any(embed[5 + 256 :] != 0, axis=1)).item()


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_dtype_is_stored(tmp_path: pathlib.Path, dtype: str) -> None:
    import mlx.core as mx

    path = build_tiny_checkpoint(tmp_path / dtype, dtype=dtype)
    weights: dict[str, Any] = mx.load(str(path / "model.safetensors"))  # type: ignore[assignment]
    assert {w.dtype for w in weights.values()} == {getattr(mx, dtype)}


def test_bad_arguments(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        build_tiny_checkpoint(tmp_path / "a", dtype="int8")
    with pytest.raises(ValueError, match="seed"):
        build_tiny_checkpoint(tmp_path / "b", seed=-1)
    assert not (tmp_path / "a").exists()
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------ caching and reuse


def test_reuses_complete_checkpoint(tmp_path: pathlib.Path) -> None:
    path = build_tiny_checkpoint(tmp_path / "ckpt")
    before = {p.name: _stamp(p) for p in path.iterdir()}
    again = build_tiny_checkpoint(tmp_path / "ckpt")
    assert again == path
    assert {p.name: _stamp(p) for p in path.iterdir()} == before


def test_force_rebuilds(tmp_path: pathlib.Path) -> None:
    path = build_tiny_checkpoint(tmp_path / "ckpt")
    marker_before = _stamp(path / MARKER)
    digest_before = _digest(path)
    build_tiny_checkpoint(tmp_path / "ckpt", force=True)
    assert _stamp(path / MARKER) != marker_before
    assert _digest(path) == digest_before  # rebuilt, to the same bytes


def test_other_seed_or_dtype_in_same_dir_rebuilds(tmp_path: pathlib.Path) -> None:
    path = build_tiny_checkpoint(tmp_path / "ckpt", seed=0)
    first = _digest(path)
    build_tiny_checkpoint(tmp_path / "ckpt", seed=1)
    assert _digest(path)["model.safetensors"] != first["model.safetensors"]
    build_tiny_checkpoint(tmp_path / "ckpt", seed=1, dtype="float16")
    assert (path / "model.safetensors").stat().st_size < 400_000


@pytest.mark.parametrize("leftover", ["empty", "no_marker", "truncated"])
def test_half_built_dir_is_rebuilt(tmp_path: pathlib.Path, leftover: str) -> None:
    reference = _digest(build_tiny_checkpoint(tmp_path / "ref"))
    target = tmp_path / "ckpt"
    target.mkdir()
    if leftover != "empty":
        build_tiny_checkpoint(tmp_path / "tmp")
        for f in (tmp_path / "tmp").iterdir():
            if f.name != MARKER:
                (target / f.name).write_bytes(f.read_bytes())
    if leftover == "truncated":
        (target / "model.safetensors").write_bytes(b"\0" * 10)
    build_tiny_checkpoint(target)
    assert _digest(target) == reference


def test_refuses_to_replace_unrelated_directory(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "mine"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(target)
    assert (target / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in target.iterdir()) == ["notes.txt"]


def test_default_location_uses_cache_env(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLX_VLM_SAFE_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    path = build_tiny_checkpoint(seed=3, dtype="float16")
    assert path == tmp_path / "cache" / "tiny-paligemma-v1-s3-float16"
    assert (path / MARKER).is_file()
    image = tiny_image_path()
    assert image.parent == tmp_path / "cache"


def test_default_location_falls_back_to_xdg_then_home(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLX_VLM_SAFE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "mlx_vlm_safe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "mlx_vlm_safe"


# ----------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_weights(tmp_path: pathlib.Path) -> None:
    a = build_tiny_checkpoint(tmp_path / "a", seed=0)
    b = build_tiny_checkpoint(tmp_path / "b", seed=0)
    c = build_tiny_checkpoint(tmp_path / "c", seed=1)
    assert (a / "model.safetensors").read_bytes() == (
        b / "model.safetensors"
    ).read_bytes()
    assert _digest(a) == _digest(b)
    assert (a / "model.safetensors").read_bytes() != (
        c / "model.safetensors"
    ).read_bytes()
    assert (a / "tokenizer.json").read_bytes() != (c / "tokenizer.json").read_bytes()


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=300,
    )


@pytest.mark.subprocess
def test_same_bytes_in_another_interpreter(tmp_path: pathlib.Path) -> None:
    # A different PYTHONHASHSEED changes dict/set ordering in the other process.
    here = _digest(build_tiny_checkpoint(tmp_path / "here"))
    proc = _run(
        f"""
        from mlx_vlm_safe.testing import build_tiny_checkpoint
        build_tiny_checkpoint({str(tmp_path / "there")!r})
        """,
        PYTHONHASHSEED="12345",
    )
    assert proc.returncode == 0, proc.stderr
    assert _digest(tmp_path / "there") == here


@pytest.mark.subprocess
def test_concurrent_builders_never_expose_a_partial_checkpoint(
    tmp_path: pathlib.Path,
) -> None:
    target = tmp_path / "ckpt"
    code = f"""
        import pathlib
        from mlx_vlm_safe.testing import build_tiny_checkpoint
        from mlx_vlm_safe.testing._checkpoint import _FILES
        p = build_tiny_checkpoint({str(target)!r})
        missing = [n for n in _FILES if not (p / n).is_file()]
        assert not missing, missing
        """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert _digest(target) == _digest(build_tiny_checkpoint(tmp_path / "ref"))


@pytest.mark.subprocess
def test_importing_testing_package_is_cheap() -> None:
    proc = _run(
        """
        import sys
        import mlx_vlm_safe
        before = set(sys.modules)
        import mlx_vlm_safe.testing
        heavy = {"mlx", "mlx_vlm", "numpy", "tokenizers", "PIL", "transformers"}
        new = {m.split(".")[0] for m in set(sys.modules) - before}
        assert not new & heavy, sorted(new & heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr


# ----------------------------------------------------------------------- images


def test_tiny_image_is_deterministic_rgb() -> None:
    img = tiny_image()
    assert img.mode == "RGB"
    assert img.size == (32, 32)
    assert img.tobytes() == tiny_image().tobytes()
    assert img.tobytes() != tiny_image(seed=1).tobytes()
    assert tiny_image(48).size == (48, 48)


def test_tiny_image_path_is_stable_png(tmp_path: pathlib.Path) -> None:
    from PIL import Image

    first = tiny_image_path(tmp_path)
    stamp = _stamp(first)
    second = tiny_image_path(tmp_path)
    assert first == second
    assert _stamp(second) == stamp  # not rewritten
    assert first.suffix == ".png"
    with Image.open(first) as img:
        assert img.format == "PNG"
        assert img.convert("RGB").tobytes() == tiny_image().tobytes()
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
