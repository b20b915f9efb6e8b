import math
from pathlib import Path

import torch

from training.evaluate import elbo_nll, iwae_nll
from training.likelihood import OnnxLikelihood
from training.loss import kl_divergence, log_normal, reconstruction_nll
from training.model import VAE
from training.run_dir import load_run


def test_closed_form_kl_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    mean, log_var = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    z = VAE.reparameterize(mean.expand(200_000, 3, 4), log_var.expand(200_000, 3, 4), g)
    zero = torch.zeros_like(z)
    monte_carlo = (log_normal(z, mean, log_var) - log_normal(z, zero, zero)).mean(0)
    torch.testing.assert_close(monte_carlo, kl_divergence(mean, log_var), atol=0.03, rtol=0.01)


def test_gradients_flow_through_reparameterisation() -> None:
    mean = torch.zeros(2, 3, requires_grad=True)
    log_var = torch.zeros(2, 3, requires_grad=True)
    VAE.reparameterize(mean, log_var, torch.Generator().manual_seed(0)).pow(2).sum().backward()
    assert mean.grad is not None and log_var.grad is not None
    assert mean.grad.abs().sum() > 0 and log_var.grad.abs().sum() > 0


def test_log_normal_is_the_gaussian_density() -> None:
    value = log_normal(torch.tensor([[0.5]]), torch.tensor([[0.0]]), torch.tensor([[0.0]]))
    assert math.isclose(value.item(), -0.5 * math.log(2 * math.pi) - 0.125, rel_tol=1e-6)


def test_iwae_is_no_worse_than_elbo_and_tightens_with_k(digits_run: Path) -> None:
    model = load_run(digits_run).model
    from training.data import load_digits

    binary = torch.bernoulli(torch.from_numpy(load_digits().test[:100]),
                             generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    elbo = elbo_nll(model, binary, g)
    nll = [iwae_nll(model, binary, k, g)[0] for k in (1, 10, 100)]
    assert abs(nll[0] - elbo) < 2.0  # k=1 is the ELBO, up to sampling noise
    assert nll[2] < nll[1] < nll[0]


def test_onnx_log_likelihood_equals_the_torch_reconstruction_term(digits_run: Path) -> None:
    model = load_run(digits_run).model.eval()
    g = torch.Generator().manual_seed(2)
    # Latents far out in the prior's tail give saturated logits (|logit| >> 20), where a
    # log(sigmoid) formulation turns into -inf in ONNX Runtime.
    z = torch.randn(7, model.config.latent_dim, generator=g) * torch.tensor([[1.0]] * 4 + [[30.0]] * 3)
    x = torch.bernoulli(torch.full((1, *model.config.image_shape), 0.3), generator=g)
    with torch.no_grad():
        expected = -reconstruction_nll(model.decode(z), x.expand(7, *model.config.image_shape))
        saturated = model.decode(z).abs().amax()
    assert saturated > 50, f"the test needs saturated logits, got at most {saturated:.1f}"
    got = OnnxLikelihood(model)(z.numpy(), x.numpy())
    assert got.shape == (7,)
    torch.testing.assert_close(torch.from_numpy(got), expected, atol=1e-3, rtol=1e-5)
