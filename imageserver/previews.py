"""Partial images while a pipeline denoises: the latents of a step, decoded cheaply on the worker thread.

Two decoders. By default a linear latent-to-RGB map (one weight per latent channel and colour, plus a bias), fitted
once at load by least squares to what the model's own VAE encoder makes of a few smooth synthetic colour fields: it
costs one small matrix product per preview, at latent resolution (1/8 of the image's side; the stream upscales it).
With args.preview_vae, a small AutoencoderTiny decodes full-size previews (sharper, a few ms a preview on a GPU).
Latents are the pipeline's own (scaled, shifted, normalised as it keeps them); packed latents (FLUX, Qwen-Image) are
unpacked with the pipeline's own _unpack_latents; FLUX.2's (patchified 2x2, batch-normed, packed in raster order)
are put back as its decode does. A pipeline whose latents cannot be read sends no partial images; its streams carry
the progress comments and the completed events.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("imageserver")

FIT_SIDE = 64  # px: the synthetic images the linear map is fitted on


class NoPreview(Exception):
    """These latents cannot be turned into a preview."""


def spatial(pipe: Any, latents: Any, width: int, height: int) -> Any:
    """(batch, channels, h, w) latents from what a pipeline keeps (packed sequences, video frames)."""
    if latents.ndim == 3 and hasattr(pipe, "_unpatchify_latents") and hasattr(getattr(pipe, "vae", None), "bn"):
        return _flux2_spatial(pipe, latents, width, height)
    if latents.ndim == 3:
        unpack = getattr(pipe, "_unpack_latents", None)
        if unpack is None:
            raise NoPreview(f"{type(pipe).__name__} keeps packed latents that it has no _unpack_latents for")
        latents = unpack(latents, height, width, pipe.vae_scale_factor)
    if latents.ndim == 5:  # (batch, channels, frames, h, w): image pipelines on a video VAE have one frame
        latents = latents[:, :, -1]
    if latents.ndim != 4:
        raise NoPreview(f"latents of shape {tuple(latents.shape)}")
    return latents


def _flux2_spatial(pipe: Any, latents: Any, width: int, height: int) -> Any:
    """FLUX.2's packed latents as VAE latents: its tokens are the 2x2-patchified latents in raster order (the
    pipeline's _prepare_latent_ids), normalised by the VAE's batch-norm statistics; undone as its decode does."""
    import torch

    side = pipe.vae_scale_factor * 2
    rows, cols = height // side, width // side
    batch, tokens, channels = latents.shape
    if tokens != rows * cols:
        raise NoPreview(f"{tokens} latent tokens for a {width}x{height} image ({rows}x{cols} expected)")
    x = latents.permute(0, 2, 1).reshape(batch, channels, rows, cols)
    bn = pipe.vae.bn
    mean = bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
    std = torch.sqrt(bn.running_var.view(1, -1, 1, 1) + pipe.vae.config.batch_norm_eps).to(x.device, x.dtype)
    return to_pipeline_space(pipe._unpatchify_latents(x * std + mean), pipe.vae.config)


def to_pipeline_space(z: Any, config: Any) -> Any:
    """VAE latents as a pipeline keeps them: (z - mean) * scale / std, or (z - shift) * scale (Diffusers' rules)."""
    import torch

    scale = getattr(config, "scaling_factor", None) or 1.0
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        shape = (1, -1, *([1] * (z.ndim - 2)))
        mean = torch.tensor(mean, dtype=z.dtype, device=z.device).view(shape)
        std = torch.tensor(std, dtype=z.dtype, device=z.device).view(shape)
        return (z - mean) * scale / std
    return (z - (getattr(config, "shift_factor", None) or 0.0)) * scale


def _to_images(rgb: Any) -> list[Any]:
    """PIL images from (batch, h, w, 3) values in -1..1."""
    from PIL import Image

    arr = ((rgb.float() + 1) * 127.5).clamp(0, 255).round().to("cpu").byte().numpy()
    return [Image.fromarray(a) for a in arr]


class LinearPreviewer:
    """Latents to RGB by one fitted (channels + 1) x 3 matrix, at latent resolution."""

    kind = "linear"

    def __init__(self, weight: Any) -> None:
        self.weight = weight  # (channels + 1, 3), float32 on the CPU; the last row is the bias

    @classmethod
    def fit(cls, vae: Any) -> LinearPreviewer:
        """Fit the map to `vae`: encode smooth random colour fields and solid colours, regress RGB on the latents."""
        import torch
        import torch.nn.functional as F

        g = torch.Generator().manual_seed(0)
        fields = F.interpolate(torch.rand(12, 3, 3, 3, generator=g), size=(FIT_SIDE, FIT_SIDE), mode="bicubic",
                               align_corners=False).clamp(0, 1)
        corners = torch.tensor([[r, gr, b] for r in (0, 1) for gr in (0, 1) for b in (0, 1)], dtype=torch.float32)
        solids = corners.view(8, 3, 1, 1).expand(8, 3, FIT_SIDE, FIT_SIDE)
        x = torch.cat([fields, solids]) * 2 - 1
        param = next(vae.parameters())
        video = any(isinstance(m, torch.nn.Conv3d) for m in vae.modules())
        with torch.no_grad():
            inp = x.to(param.device, param.dtype)
            out = vae.encode(inp.unsqueeze(2) if video else inp)
            z = out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latents
            z = to_pipeline_space(z, vae.config)
        if z.ndim == 5:
            z = z[:, :, 0]
        z = z.float().cpu()
        target = F.interpolate(x, size=z.shape[-2:], mode="area")
        feats = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
        feats = torch.cat([feats, torch.ones(len(feats), 1)], dim=1)
        weight = torch.linalg.lstsq(feats, target.permute(0, 2, 3, 1).reshape(-1, 3)).solution
        return cls(weight)

    def decode(self, pipe: Any, latents: Any, width: int, height: int) -> list[Any]:
        """Small previews of each latent of the batch slice."""
        lat = spatial(pipe, latents, width, height).float()
        w = self.weight.to(lat.device)
        rgb = lat.permute(0, 2, 3, 1) @ w[:-1] + w[-1]
        return _to_images(rgb)


class TinyVaePreviewer:
    """Latents to RGB by a small AutoencoderTiny (args.preview_vae), full size."""

    kind = "vae"

    def __init__(self, vae: Any) -> None:
        self.vae = vae

    @classmethod
    def load(cls, source: str, device: str, dtype: Any) -> TinyVaePreviewer:
        """The AutoencoderTiny at `source` (a folder or a repo id), on `device`."""
        from diffusers import AutoencoderTiny

        vae = AutoencoderTiny.from_pretrained(source, dtype=dtype)
        vae.to(device)
        vae.eval()
        return cls(vae)

    def decode(self, pipe: Any, latents: Any, width: int, height: int) -> list[Any]:
        """Full-size previews of each latent of the batch slice."""
        import torch

        cfg = self.vae.config
        lat = spatial(pipe, latents, width, height)
        param = next(self.vae.parameters())
        lat = lat.to(param.device, param.dtype) / (cfg.scaling_factor or 1.0) + (getattr(cfg, "shift_factor", 0) or 0)
        with torch.no_grad():
            out = self.vae.decode(lat).sample
        return _to_images(out.permute(0, 2, 3, 1))


def make_previewer(pipe: Any, preview_vae: str | None, device: str, dtype: Any
                   ) -> LinearPreviewer | TinyVaePreviewer | None:
    """The previewer of a loaded pipeline; None (no partial images, logged) when none can be made."""
    try:
        if preview_vae:
            return TinyVaePreviewer.load(preview_vae, device, dtype)
        vae = getattr(pipe, "vae", None)
        if vae is None or not hasattr(vae, "encode"):
            raise NoPreview(f"{type(pipe).__name__} has no VAE to fit a preview map to")
        return LinearPreviewer.fit(vae)
    except Exception as err:
        if preview_vae and not isinstance(err, NoPreview):
            raise RuntimeError(f"args.preview_vae: cannot load {preview_vae!r} as an AutoencoderTiny: {err}") from err
        log.warning("no partial images for this model: %s: %s", type(err).__name__, err)
        return None
