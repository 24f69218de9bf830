"""`flowsr` CLI: model init, sr on real photos, kept outputs, and a one-line error for every bad input."""

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import varied_tiny
from PIL import Image
from skimage import data

from flowsr.core.model_dir import Manifest
from flowsr.core.sr_model import OneStepSR
from flowsr.runtime import default_models
from flowsr.runtime.cli import main
from flowsr.runtime.super_resolver import SuperResolver


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny"
    assert main(["model", "init", "--preset", "tiny", "-o", str(path)]) == 0
    return path


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    Image.fromarray(data.astronaut()[::8, ::8]).save(folder / "astronaut.png")
    Image.fromarray(data.chelsea()[::6, ::6]).save(folder / "sub" / "chelsea.jpg", quality=90)
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("flowsr:")]


def test_model_init_is_labelled_untrained(model_dir, capsys):
    assert Manifest.read(model_dir).trained is False
    assert main(["model", "init", "--preset", "tiny", "-o", str(model_dir)]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "already exists" in lines[0] and "--overwrite" in lines[0]


def test_sr_without_packaged_model_says_so(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(default_models, "DEFAULT_SR_MODEL", tmp_path / "missing")
    assert main(["sr", str(photos), "-o", str(tmp_path / "out")]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and "--model" in lines[0]
    assert not (tmp_path / "out").exists()


def test_model_convert_to_float16(model_dir, tmp_path):
    half = tmp_path / "half"
    assert main(["model", "convert", "--model", str(model_dir), "-o", str(half)]) == 0
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert (half / weights).stat().st_size < 0.6 * (model_dir / weights).stat().st_size
    assert Manifest.read(half).t_star == Manifest.read(model_dir).t_star
    reference = OneStepSR.from_pretrained(model_dir)
    converted = OneStepSR.from_pretrained(half)  # loaded back as float32
    image = torch.from_numpy(data.astronaut()[:64, :64]).permute(2, 0, 1)[None].float() / 127.5 - 1
    t = torch.full((1,), reference.t_star)
    with torch.no_grad():
        error = (converted(image, t) - reference(image, t)).abs().max().item()
        strength_error = (converted.estimate_strength(image) - reference.estimate_strength(image)).abs().max().item()
    assert 0 < error < 0.02  # fp16 rounding of the weights, nothing more
    assert strength_error < 0.01  # the estimator is converted too


def test_sr_folder_and_files(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sr", str(photos), "-o", str(out), "--model", str(model_dir), "--scale", "2"]) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    astronaut = Image.open(out / "astronaut.png")
    assert astronaut.size == (128, 128)
    height, width = data.chelsea()[::6, ::6].shape[:2]
    assert Image.open(out / "sub" / "chelsea.png").size == (2 * width, 2 * height)
    assert sorted(p.name for p in out.rglob("*")) == ["astronaut.png", "chelsea.png", "sub"]  # no temp files


def test_existing_outputs_are_kept_unless_overwrite(model_dir, photos, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "astronaut.png").write_bytes(b"the user's own file")
    source = str(photos / "astronaut.png")
    assert main(["sr", source, "-o", str(out), "--model", str(model_dir), "--scale", "2"]) == 0
    assert (out / "astronaut.png").read_bytes() == b"the user's own file"
    assert "1 skipped" in capsys.readouterr().err
    assert main(["sr", source, "-o", str(out), "--model", str(model_dir), "--scale", "2", "--overwrite"]) == 0
    assert Image.open(out / "astronaut.png").size == (128, 128)


def test_every_bad_file_gets_one_line_and_the_rest_still_run(model_dir, photos, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.png").write_bytes(b"")
    (bad / "text.png").write_text("hello, I am not a picture")
    good = (photos / "astronaut.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    Image.fromarray(np.zeros((600, 600, 3), np.uint8)).save(bad / "large.png")
    os.mkfifo(bad / "pipe.png")
    (bad / "link.png").symlink_to(bad / "gone.png")
    inputs = [
        str(bad / name) for name in ("empty.png", "text.png", "truncated.png", "large.png", "pipe.png", "link.png")
    ]
    inputs += [str(tmp_path / "missing.png"), str(photos / "astronaut.png")]
    out = tmp_path / "out"
    code = main(["sr", *inputs, "-o", str(out), "--model", str(model_dir), "--scale", "2", "--max-megapixels", "0.5"])
    assert code == 1
    lines = error_lines(capsys)
    expectations = {
        "empty.png": "empty",
        "text.png": "not an image",
        "truncated.png": "truncated",
        "large.png": "limit",
        "pipe.png": "not a regular file",
        "link.png": "no such file",
        "missing.png": "no such file",
    }
    failed = [line for line in lines if not line.startswith("flowsr: warning")]
    assert len(failed) == len(expectations)
    for name, words in expectations.items():
        matching = [line for line in failed if name in line]
        assert len(matching) == 1 and words in matching[0].lower(), (name, matching)
    assert [p.name for p in out.iterdir()] == ["astronaut.png"]


def test_unreadable_file(model_dir, photos, tmp_path_factory, capsys):
    """A file without read permission; as root, the check runs with the effective uid of `nobody`."""
    shared = tmp_path_factory.mktemp("shared")
    for folder in (shared, *shared.parents):
        if folder == Path(tempfile.gettempdir()):
            break
        folder.chmod(folder.stat().st_mode | 0o711)  # let `nobody` reach its own files below
    model = shutil.copytree(model_dir, shared / "model")
    for path in [model, *model.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    locked = shared / "locked.png"
    locked.write_bytes((photos / "astronaut.png").read_bytes())
    locked.chmod(0)
    out = shared / "out"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    with unprivileged():
        code = main(["sr", str(locked), "-o", str(out), "--model", str(model)])
    assert code == 1
    assert "permission" in error_lines(capsys)[-1].lower()


@contextlib.contextmanager
def unprivileged():
    if os.geteuid() != 0:
        yield
        return
    nobody = pwd.getpwnam("nobody")
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def test_usage_errors_exit_2_with_one_line(model_dir, photos, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["sr", str(photos), "-o", str(blocker), "--model", str(model_dir)]) == 2
    assert main(["sr", str(photos), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope")]) == 2
    assert main(["sr", str(photos), "-o", str(tmp_path / "o"), "--model", str(model_dir), "--tile", "258"]) == 2
    lines = [line for line in error_lines(capsys) if line.startswith("flowsr: error")]
    assert len(lines) == 3 and "not a folder" in lines[0] and "does not exist" in lines[1] and "stride" in lines[2]


@pytest.mark.parametrize("value", ["1.5", "abc"])
def test_a_strength_outside_0_to_1_is_one_line(model_dir, photos, tmp_path, capsys, value):
    with pytest.raises(SystemExit) as exit:  # argparse refuses it before any work
        main(["sr", str(photos), "-o", str(tmp_path / "o"), "--model", str(model_dir), "--strength", value])
    assert exit.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--strength" in lines[0] and "auto" in lines[0], lines
    assert not (tmp_path / "o").exists()


def test_strength_sets_every_images_start_time(photos, tmp_path):
    """--strength S restores every image at the start time of S; auto (the default) at the one its estimator reads."""
    model = varied_tiny()
    model.save_pretrained(tmp_path / "model")
    source = str(photos / "astronaut.png")
    written = {}
    for strength in (None, "auto", "0", "1"):
        out = tmp_path / f"out-{strength}"
        extra = [] if strength is None else ["--strength", strength]
        assert main(["sr", source, "-o", str(out), "--model", str(tmp_path / "model"), "--scale", "2", *extra]) == 0
        written[strength] = np.asarray(Image.open(out / "astronaut.png")).astype(int)
    lr = np.asarray(Image.open(source))
    for strength in ("auto", "0", "1"):
        resolver = SuperResolver(
            model, scale=2, device="cpu", strength=strength if strength == "auto" else float(strength)
        )
        assert np.abs(written[strength] - resolver(lr).astype(int)).max() <= 1, strength
    assert np.array_equal(written[None], written["auto"])
    assert np.abs(written["0"] - written["1"]).mean() > 5


def test_duplicate_output_names_are_refused(model_dir, photos, tmp_path, capsys):
    twin = tmp_path / "astronaut.jpg"
    Image.open(photos / "astronaut.png").save(twin)
    out = tmp_path / "out"
    assert (
        main(
            ["sr", str(photos / "astronaut.png"), str(twin), "-o", str(out), "--model", str(model_dir), "--scale", "2"]
        )
        == 1
    )
    assert "would overwrite the output" in error_lines(capsys)[-1]
    assert [p.name for p in out.iterdir()] == ["astronaut.png"]


def test_console_script_is_installed(model_dir, photos, tmp_path):
    flowsr = os.path.join(os.path.dirname(sys.executable), "flowsr")
    result = subprocess.run(
        [flowsr, "sr", str(photos / "astronaut.png"), "-o", str(tmp_path / "out"), "--model", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert Image.open(tmp_path / "out" / "astronaut.png").size == (256, 256)
