"""Device choice: a device this machine lacks is refused in one line before a model loads, by sr and degrade alike."""

import pytest
import torch
from PIL import Image
from skimage import data

from flowsr.runtime import devices
from flowsr.runtime.cli import main
from flowsr.runtime.devices import DeviceError, resolve_device


def test_default_and_valid_devices():
    assert resolve_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("foo", "unknown device 'foo'"),
        ("", "unknown device ''"),
        ("mps", "cpu or cuda"),
        ("meta", "cpu or cuda"),
        ("cuda:99", "cuda:99"),
    ],
)
def test_devices_this_machine_lacks_are_refused(device, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(device)


def test_cuda_index_is_checked_against_the_gpus_present(monkeypatch):
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(devices.torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(DeviceError, match="has 2 CUDA device"):
        resolve_device("cuda:2")
    monkeypatch.setattr(devices.torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("command", [["sr"], ["degrade", "--scale", "2"]])
@pytest.mark.parametrize("device", ["foo", "cuda:99"])
def test_cli_refuses_a_missing_device_in_one_line(tmp_path, capsys, command, device):
    photo = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()[::8, ::8]).save(photo)
    out = tmp_path / "out"
    assert main([command[0], str(photo), "-o", str(out), "--device", device, *command[1:]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("flowsr: error:") and repr(device) in err[0], err
    assert not out.exists()
