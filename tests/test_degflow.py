"""DegFlow math (core.degflow) against closed forms and scipy, the RAE, the degradation model and its solvers."""

import numpy as np
import pytest
import torch
from scipy.interpolate import CubicSpline

from flowsr.core import degflow, spline
from flowsr.core.degradation_model import DegradationModel
from flowsr.core.model_dir import ModelDirError
from flowsr.core.sr_model import OneStepSR
from flowsr.training.degflow import DegFlowObjective, FlowSettings, RAEObjective, along_flow, calibrate_rae_latents

TIMES = (0.0, 1 / 3, 1.0)  # x1, x2, x4 with s_max = 4


def test_scale_time_mapping():
    assert degflow.scale_to_time(1, 4) == 0 and degflow.scale_to_time(4, 4) == 1
    assert degflow.scale_to_time(3, 4) == pytest.approx(2 / 3)
    assert degflow.time_to_scale(degflow.scale_to_time(2.7, 4), 4) == pytest.approx(2.7)
    with pytest.raises(ValueError, match=r"outside \[1, 4\]"):
        degflow.scale_to_time(4.5, 4)


def test_lookahead_weight_matches_hand_computed_values():
    t = torch.tensor([0.1, 0.5, 1 / 3, 0.0, 1.0], dtype=torch.float64)
    # t=0.1: segment [0, 1/3], r = (1/3 - 0.1) / (1/3) = 0.7;  t=0.5: [1/3, 1], r = 0.5 / (2/3) = 0.75
    # t=1/3 sits on a knot: the next knot is 1, r = 1;  t=0: r = 1;  t=1: last segment, r = 1e-3 / (2/3) = 0.0015
    expected = [1 / 0.701, 1 / 0.751, 1 / 1.001, 1 / 1.001, 1 / (0.0015 + 0.001)]
    np.testing.assert_allclose(degflow.lookahead_weight(t, TIMES).numpy(), expected, rtol=1e-9)
    t_l, t_r, index = degflow.neighbour_knots(t, TIMES)
    np.testing.assert_allclose(t_l.numpy(), [0, 1 / 3, 1 / 3, 0, 1 / 3])
    np.testing.assert_allclose(t_r.numpy(), [1 / 3, 1, 1, 1 / 3, 1])
    assert index.tolist() == [1, 2, 2, 1, 2]


def test_lookahead_with_the_spline_velocity_lands_on_the_next_knot():
    knots = torch.randn(4, 3, 2, 5, dtype=torch.float64)
    second = spline.second_derivatives(TIMES, knots)
    t = torch.tensor([0.05, 0.2, 0.4, 0.9], dtype=torch.float64)
    z, dz, d2z, d3z = spline.evaluate(TIMES, knots, second, t, derivatives=3)
    _, t_r, index = degflow.neighbour_knots(t, TIMES)
    ahead = degflow.lookahead(z, dz, d2z, d3z, t_r - t)
    torch.testing.assert_close(ahead, knots[torch.arange(4), index], rtol=1e-10, atol=1e-10)


def test_average_velocity_is_the_secant_of_the_natural_spline():
    knots = torch.randn(3, 3, 6, dtype=torch.float64)
    t = torch.tensor([0.0, 0.25, 0.6], dtype=torch.float64)
    r = torch.tensor([0.8, 0.25, 1.0], dtype=torch.float64)
    u = degflow.average_velocity(TIMES, knots, spline.second_derivatives(TIMES, knots), t, r)
    for sample in range(3):
        curve = CubicSpline(TIMES, knots[sample].numpy(), axis=0, bc_type="natural")
        ti, ri = t[sample].item(), r[sample].item()
        expected = curve(ti, 1) if ti == ri else (curve(ri) - curve(ti)) / (ri - ti)
        np.testing.assert_allclose(u[sample].numpy(), expected, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = DegradationModel.from_preset("tiny")
    manifest = model.manifest
    with torch.no_grad():  # a decoder that is not the identity on the HR image, so outputs depend on the latent
        for parameter in model.rae.to_image[-1].parameters():
            parameter.normal_(std=0.05)
    return model, manifest


def test_rae_shapes_skips_and_residual(model):
    rae = model[0].rae
    image = torch.rand(2, 3, 48, 80) * 2 - 1
    latent, skips = rae.encode(image)
    assert latent.shape == (2, 4, 6, 10)
    assert [tuple(f.shape[-2:]) for f in skips.features] == [(48, 80), (24, 40), (12, 20)]
    assert torch.equal(skips.image, image)
    with torch.no_grad():
        rae.to_image[-1].weight.zero_()
        bias = rae.to_image[-1].bias.clone()
        rae.to_image[-1].bias.zero_()
        assert torch.equal(rae.decode(latent, skips), image)  # a zero residual gives the HR image back
        rae.to_image[-1].weight.normal_(std=0.05)
        rae.to_image[-1].bias.copy_(bias)
    with pytest.raises(ValueError, match="multiples of 8"):
        rae.encode(torch.zeros(1, 3, 30, 32))


def test_calibrated_latents_have_unit_statistics(model):
    rae = model[0].rae
    samples = torch.rand(4, 3, 3, 32, 32) * 2 - 1
    calibrate_rae_latents(rae, samples)
    latents = rae.encode(samples.flatten(0, 1))[0]
    assert abs(latents.mean().item()) < 1e-4 and abs(latents.std().item() - 1) < 1e-4


def test_save_load_round_trip_and_kind_check(model, tmp_path):
    module, manifest = model
    module.save_pretrained(tmp_path / "deg")
    loaded = DegradationModel.from_pretrained(tmp_path / "deg")
    loaded_manifest = loaded.manifest
    assert loaded_manifest.knot_scales == [1.0, 2.0, 4.0] and loaded.stride == 16
    hr = torch.rand(2, 3, 32, 48) * 2 - 1
    r = torch.tensor([0.2, 0.9])
    with torch.no_grad():
        assert torch.equal(module(hr, r), loaded(hr, r))
    with pytest.raises(ModelDirError, match="holds a 'degradation' model"):
        OneStepSR.from_pretrained(tmp_path / "deg")


def test_one_step_uses_one_evaluation_and_euler_converges_to_the_adaptive_solution(model):
    module = model[0]
    calls = []
    handle = module.unet.register_forward_hook(lambda *_: calls.append(1))
    hr = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        module(hr, torch.tensor([0.6]))
        assert len(calls) == 1
        reference, evaluations = module.solve(hr, 0.6)  # dopri5
        assert evaluations > 6
        errors = [(module.solve(hr, 0.6, steps=steps)[0] - reference).abs().mean().item() for steps in (1, 4, 16)]
    handle.remove()
    assert errors[0] > errors[1] > errors[2]  # Euler converges to the adaptive reference


def test_objectives_train_only_their_part(model):
    module = model[0]
    batch = torch.rand(3, 3, 3, 32, 32) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    rae_losses = RAEObjective(module)(batch, generator)
    rae_losses["loss"].backward()
    assert all(p.grad is not None for p in module.rae.parameters() if p.requires_grad)
    assert all(p.grad is None for p in module.unet.parameters())
    module.zero_grad(set_to_none=True)
    objective = DegFlowObjective(module, FlowSettings(average_share=0.5, lookahead=1.0))
    losses = objective(batch, torch.Generator().manual_seed(3))
    assert {"flow", "lookahead"} <= set(losses)
    losses["loss"].backward()
    assert all(p.grad is None for p in module.rae.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.unet.parameters())
    module.zero_grad(set_to_none=True)


def test_meanflow_target_reproduces_the_flow_map_of_a_linear_ode():
    # dz/dt = a z has the flow map z(r) = z(t) e^{a (r - t)}, so u(z, t, r) = z (e^{a (r - t)} - 1) / (r - t).
    a = torch.tensor(-1.7, dtype=torch.float64)
    z = torch.randn(3, 2, 4, dtype=torch.float64)
    t = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64)
    r = torch.tensor([0.9, 0.7, 0.5], dtype=torch.float64)

    def flow_map(z, t, gap):  # u for r = t + gap; gap = 0 is v itself
        gap = gap[:, None, None]
        return torch.where(gap == 0, a * z, z * torch.expm1(a * gap) / torch.where(gap == 0, 1, gap))

    def wrong_map(z, t, gap):  # the first-order secant guess, which is not the flow map
        return a * z * (1 + a * gap[:, None, None] / 3)

    for u_of, exact in ((flow_map, True), (wrong_map, False)):
        value, du_dt = torch.func.jvp(lambda z, t, u_of=u_of: u_of(z, t, r - t), (z, t), (a * z, torch.ones_like(t)))
        residual = (degflow.meanflow_target(a * z, du_dt, t, r) - value).abs().max().item()
        assert (residual < 1e-12) == exact


def test_along_flow_is_the_derivative_along_the_trajectory(model):
    module = model[0]
    generator = torch.Generator().manual_seed(1)
    z = torch.randn(2, 4, 8, 8, generator=generator)
    t, r = torch.tensor([0.1, 0.4]), torch.tensor([0.8, 0.9])
    v = torch.randn(2, 4, 8, 8, generator=generator)
    u, du_dt = along_flow(module, z, t, r, v)
    with torch.no_grad():
        torch.testing.assert_close(u, module.velocity(z, t, r), rtol=1e-5, atol=1e-5)
        step = 1e-3  # central differences in z and t; t's embedding (x 1000) is sinusoidal, so a small step in t
        finite = (module.velocity(z + step * v, t, r) - module.velocity(z - step * v, t, r)) / (2 * step)
        finite += (module.velocity(z, t + step / 10, r) - module.velocity(z, t - step / 10, r)) / (step / 5)
    assert ((du_dt - finite).norm() / finite.norm()).item() < 0.01
    assert not any(m._forward_pre_hooks for m in module.unet.modules())  # the GroupNorm hooks are gone


def test_lookahead_term_is_the_mean_of_weight_times_distance():
    t = torch.tensor([0.1, 0.5, 1.0], dtype=torch.float64)  # weights 1/0.701, 1/0.751, 1/0.0025 (see above)
    distance = torch.tensor([0.2, 0.4, 0.01], dtype=torch.float64)
    expected = (0.2 / 0.701 + 0.4 / 0.751 + 0.01 / 0.0025) / 3
    assert degflow.lookahead_term(distance, t, TIMES).item() == pytest.approx(expected, rel=1e-9)
    assert degflow.lookahead_term(distance, t, TIMES, weighting=False).item() == pytest.approx(0.61 / 3, rel=1e-9)


@pytest.mark.parametrize("target", ["meanflow", "secant"])
def test_flow_objective_adds_a_tenth_of_the_lookahead_term(model, target):
    module = model[0]
    batch = torch.rand(4, 3, 3, 32, 32) * 2 - 1
    losses = DegFlowObjective(module, FlowSettings(average_target=target))(batch, torch.Generator().manual_seed(5))
    assert losses["loss"].item() == pytest.approx((losses["flow"] + 0.1 * losses["lookahead"]).item(), rel=1e-6)
    losses["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.unet.parameters())
    assert all(p.grad is None for p in module.rae.parameters())
    module.zero_grad(set_to_none=True)
