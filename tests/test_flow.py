"""Flow math against closed forms and hand-computed values."""

import math

import pytest
import torch

from flowsr.core import flow


def test_tstar_matches_closed_form_for_one_sample():
    torch.manual_seed(0)
    z_hr = torch.randn(1, 4, 8, 8)
    for noise_level in (0.05, 0.3, 1.0, 3.0):
        z_lr = z_hr + noise_level * torch.randn_like(z_hr)
        signal, degradation = flow.snr_statistics(z_lr, z_hr)
        expected = math.sqrt(degradation.item()) / (1 + math.sqrt(degradation.item()))
        grid = 1000
        # The grid search can only be as fine as its spacing.
        assert abs(flow.snr_start_time(signal, degradation, grid) - expected) <= 1.0 / (grid + 1)


def test_each_pairs_own_start_time_is_the_grid_search_on_that_pair_alone():
    torch.manual_seed(1)
    z_hr = torch.randn(3, 4, 8, 8)
    z_lr = z_hr + torch.tensor([0.05, 0.5, 2.0])[:, None, None, None] * torch.randn_like(z_hr)
    own = flow.pair_start_time(z_lr, z_hr)
    for index in range(3):
        signal, degradation = flow.snr_statistics(z_lr[index : index + 1], z_hr[index : index + 1])
        assert abs(own[index].item() - flow.snr_start_time(signal, degradation, 1000)) <= 1.0 / 1001


def test_tstar_minimizes_mean_abs_snr_gap_over_samples():
    signal = torch.tensor([1.0, 2.0, 0.5])
    degradation = torch.tensor([0.1, 0.4, 0.02])
    t_star = flow.snr_start_time(signal, degradation, grid_size=999)

    def cost(t):
        return (
            sum(
                abs((1 - t) ** 2 / t**2 * s - s / d) for s, d in zip(signal.tolist(), degradation.tolist(), strict=True)
            )
            / 3
        )

    brute = min((k / 10000 for k in range(1, 10000)), key=cost)
    assert cost(t_star) <= cost(brute) + 1e-3 * cost(brute) + 1e-6
    assert abs(t_star - brute) < 2e-3


def test_tstar_rejects_identical_pairs():
    with pytest.raises(ValueError, match="D = 0"):
        flow.snr_start_time(torch.tensor([1.0]), torch.tensor([0.0]))


def test_euler_and_interpolation_by_hand():
    z = torch.tensor([[1.0, -2.0]])
    v = torch.tensor([[0.5, 4.0]])
    assert torch.equal(flow.one_step_sr(z, v, 0.25), torch.tensor([[0.875, -3.0]]))
    assert torch.equal(flow.euler_step(z, v, 0.5), torch.tensor([[1.25, 0.0]]))
    a = torch.tensor([[2.0, 0.0], [4.0, 1.0]])
    b = torch.tensor([[6.0, 8.0], [0.0, 1.0]])
    # per-sample s: row 0 at s=0.25, row 1 at s=0.5
    assert torch.equal(flow.interpolate(a, b, torch.tensor([0.25, 0.5])), torch.tensor([[3.0, 2.0], [2.0, 1.0]]))
    z_t, target = flow.linear_path(a, b, 0.5)
    assert torch.equal(z_t, torch.tensor([[4.0, 4.0], [2.0, 1.0]]))
    assert torch.equal(target, b - a)


def test_one_step_from_exact_velocity_recovers_data():
    torch.manual_seed(1)
    z0, noise = torch.randn(3, 4, 6, 6), torch.randn(3, 4, 6, 6)
    t = torch.tensor([0.2, 0.5, 0.9])
    z_t, v = flow.linear_path(z0, noise, t)
    torch.testing.assert_close(flow.one_step_sr(z_t, v, t), z0)


def test_fatc_point_and_target():
    z_hr = torch.tensor([[0.0, 2.0]])
    z_lr = torch.tensor([[4.0, -2.0]])
    z_t, target = flow.fatc_point(z_hr, z_lr, t=0.1, t_star=0.4)
    # s = t / t* = 0.25
    torch.testing.assert_close(z_t, torch.tensor([[1.0, 1.0]]))
    torch.testing.assert_close(target, torch.tensor([[10.0, -10.0]]))
    # At t = t* the point is z_L and one Euler step of the target lands exactly on z_H.
    z_end, target = flow.fatc_point(z_hr, z_lr, t=0.4, t_star=0.4)
    torch.testing.assert_close(z_end, z_lr)
    torch.testing.assert_close(flow.one_step_sr(z_end, target, 0.4), z_hr)


def test_atm_direction_by_hand():
    z_sr = torch.tensor([[1.0, 1.0]])
    z_gen = torch.tensor([[0.0, 2.0]])
    v_sr = torch.tensor([[2.0, 0.0]])
    v_gen = torch.tensor([[1.0, 1.0]])
    z_hat = torch.tensor([[1.0, 3.0]])
    z_hr = torch.tensor([[0.0, 2.0]])  # mean |z_hat - z_hr| = 1 -> w = 1
    g = flow.atm_direction(z_sr, z_gen, v_sr, v_gen, 0.5, z_hat, z_hr)
    # (z_sr - z_gen) - t (v_sr - v_gen) = (1, -1) - 0.5 * (1, -1) = (0.5, -0.5)
    torch.testing.assert_close(g, torch.tensor([[0.5, -0.5]]))
    g2 = flow.atm_direction(z_sr, z_gen, v_sr, v_gen, 0.5, 2 * z_hat - z_hr, z_hr)  # w halves
    torch.testing.assert_close(g2, g / 2)
    assert not g.requires_grad


def test_per_sample_shape_is_checked():
    with pytest.raises(ValueError, match="per-sample"):
        flow.interpolate(torch.zeros(2, 3), torch.ones(2, 3), torch.tensor([0.1, 0.2, 0.3]))
