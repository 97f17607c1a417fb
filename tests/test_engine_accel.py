"""Optional accelerators: where tinycudann / nerfacc and CUDA exist, they must match the pure-PyTorch path."""

import importlib.util

import pytest
import torch

from engine.accel import want
from engine.render.primitives import render_weights_from_alpha

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_auto_never_selects_accelerators_on_cpu():
    cpu = torch.device("cpu")
    assert not want("auto", "tinycudann", cpu) and not want("auto", "nerfacc", cpu)
    assert not want(False, "nerfacc", cpu)
    with pytest.raises(Exception, match="nerfacc"):
        want(True, "nerfacc", cpu)


@cuda
@pytest.mark.skipif(importlib.util.find_spec("nerfacc") is None, reason="nerfacc not installed")
def test_nerfacc_weights_match_pure_torch():
    from engine.accel import nerfacc_weights

    counts = torch.randint(0, 50, (300,))
    ray_idx = torch.repeat_interleave(torch.arange(300), counts).cuda()
    alphas = torch.rand(int(counts.sum()), device="cuda")
    w_ref, t_ref = render_weights_from_alpha(alphas, ray_idx, 300)
    w, t = nerfacc_weights(alphas, ray_idx, 300)
    torch.testing.assert_close(w, w_ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(t, t_ref, atol=1e-5, rtol=1e-4)


@cuda
@pytest.mark.skipif(importlib.util.find_spec("tinycudann") is None, reason="tinycudann not installed")
def test_tcnn_hashgrid_fits_like_pure_torch():
    # The two grids lay out their vertices differently, so compare what matters: fitting the same signal.
    from engine.accel import TcnnHashGrid
    from engine.fields.encodings import HashGrid

    kw = dict(n_levels=8, n_features_per_level=2, log2_hashmap_size=16, base_resolution=8, per_level_scale=1.5)

    def fit(encoding) -> float:
        torch.manual_seed(0)
        head = torch.nn.Linear(encoding.output_dim, 1).cuda()
        opt = torch.optim.Adam(list(encoding.parameters()) + list(head.parameters()), lr=1e-2)
        for _ in range(300):
            x = torch.rand(4096, 3, device="cuda")
            target = torch.sin(6 * x).prod(-1, keepdim=True)
            loss = ((head(encoding(x)[0]) - target) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return float(loss)

    loss_tcnn, loss_ours = fit(TcnnHashGrid(**kw).cuda()), fit(HashGrid(**kw).cuda())
    assert loss_tcnn < 2e-3 and loss_ours < 2e-3
    assert abs(loss_tcnn - loss_ours) < 1e-3
