"""Latent normalization and 2x2 token packing."""

import pytest
import torch

from flowsr.core import latents


@pytest.mark.parametrize("shape", [(1, 16, 2, 2), (3, 4, 6, 10), (2, 16, 18, 14)])
def test_pack_unpack_round_trip(shape):
    z = torch.randn(shape)
    tokens = latents.pack(z)
    assert tokens.shape == (shape[0], shape[2] // 2 * shape[3] // 2, shape[1] * 4)
    assert torch.equal(latents.unpack(tokens, shape[2], shape[3]), z)


def test_pack_layout_matches_flux_convention():
    # token (row, col) holds channels c*4 + dy*2 + dx of the 2x2 patch at (2*row + dy, 2*col + dx)
    z = torch.arange(2 * 4 * 6, dtype=torch.float32).view(1, 2, 4, 6)
    tokens = latents.pack(z)
    row, col, c, dy, dx = 1, 2, 1, 1, 0
    assert tokens[0, row * 3 + col, c * 4 + dy * 2 + dx] == z[0, c, 2 * row + dy, 2 * col + dx]


def test_position_ids_follow_token_order():
    ids = latents.image_position_ids(4, 6)
    assert ids.shape == (6, 3)
    assert ids[:, 0].eq(0).all()
    assert ids[4].tolist() == [0.0, 1.0, 1.0]  # token 4 of a 2x3 grid is row 1, column 1
    assert latents.text_position_ids(5).eq(0).all()


def test_pack_rejects_odd_latent():
    with pytest.raises(ValueError, match="multiple of 2"):
        latents.pack(torch.zeros(1, 4, 3, 4))


def test_normalization_round_trip_and_values():
    norm = latents.LatentNormalization(shift=0.1159, scale=0.3611)
    raw = torch.randn(2, 16, 4, 4)
    torch.testing.assert_close(norm.denormalize(norm.normalize(raw)), raw)
    assert norm.normalize(torch.tensor(1.1159)).item() == pytest.approx(0.3611)
