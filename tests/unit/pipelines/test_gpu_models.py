"""The full-size architectures of pipelines.fullsize, checked on the meta device (no GPU)."""

import pytest
import torch

from pipelines.fullsize import ARCHITECTURES, BUILDERS, build, family_of

# Published parameter counts (billions), per component.
PUBLISHED = {
    "sdxl": {"unet": 2.567, "text_encoder": 0.123, "text_encoder_2": 0.695, "vae": 0.084},
    "flux-schnell": {"transformer": 11.90, "text_encoder": 0.123, "text_encoder_2": 4.76},
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_full_size_architecture_matches_the_published_model(name: str) -> None:
    pipe = BUILDERS[name](torch.bfloat16, "meta")
    assert torch.get_default_dtype() is torch.float32  # restored
    for component, billions in PUBLISHED[name].items():
        params = list(getattr(pipe, component).parameters())
        assert {p.device.type for p in params} == {"meta"}
        assert {p.dtype for p in params} == {torch.bfloat16}
        assert sum(p.numel() for p in params) / 1e9 == pytest.approx(billions, rel=0.01)
    assert pipe.scheduler.sigmas.device.type == "cpu"  # built outside the meta context
    if name == "flux-schnell":
        assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.latent_channels
        assert pipe.transformer.config.guidance_embeds is False


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_tensor_is_made_on_the_target_device(name: str) -> None:
    """Parameters and buffers alike: nothing is built on the CPU and moved later."""
    pipe = build(name, torch.float16, "meta")
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            tensors = [*component.parameters(), *component.buffers()]
            assert {t.device.type for t in tensors} == {"meta"}, type(component).__name__
    assert family_of(name) in ("sdxl", "flux-schnell")
