"""Stable Diffusion sampling (DDIM or a multistep solver, classifier-free guidance) with the capture step kept.

Every solver here calls the UNet once per step. At the capture step (counted in UNet calls from the end) the
sampler keeps the latent x_t that goes into the UNet and, when asked, the outputs of the UNet's feature layers
for that call (``FeatureCapture``, ``feature_layers``). Features are a pure function of (x_t, t, prompt
embeddings), so ``features_from_latent`` recomputes exactly the same features later with one guided UNet pass,
whatever solver produced x_t.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from stages.prompts import PromptSpec

FEATURE_LAYOUTS = ("official", "blocks")


def _ddim(config):
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(config)


def _dpm_solver_pp(config):
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                   timestep_spacing="linspace")


def _unipc(config):
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler.from_config(config, solver_type="bh2", solver_order=2,
                                               timestep_spacing="linspace")


# The solvers a preset may name: each builds itself from a model's scheduler config (its betas and training
# timesteps). ``ddim``: diffusers' DDIM (eta 0) with the model's own spacing (SD 1.x: "leading" with offset 1,
# so the last of N steps is at t = 1, the paper's). ``dpmsolver++``: DPM-Solver++ (Lu et al., 2022), 2nd-order
# multistep; ``unipc``: UniPC (Zhao et al., NeurIPS 2023), 2nd-order predictor-corrector (bh2). Both with
# diffusers' own defaults for them: "linspace" spacing from t = 999, a first-order final step to t = 0 (so
# the last of N UNet calls is at t ~ 1000/N: 50 for 20 steps, 40 for 25).
SCHEDULERS = {"ddim": _ddim, "dpmsolver++": _dpm_solver_pp, "unipc": _unipc}


def make_scheduler(name: str, config):
    """The solver ``name`` (a key of ``SCHEDULERS``) from a model's scheduler config."""
    if name not in SCHEDULERS:
        raise ValueError(f"scheduler must be one of {tuple(SCHEDULERS)}, not {name!r}")
    return SCHEDULERS[name](config)


def feature_layers(unet, layout: str) -> list:
    """The UNet modules whose outputs are the grounding module's features.

    ``official``: the 25 blocks of the official code for SD 1.x (LDM's 12 input blocks: conv_in, each
    resnet(+attention) layer and each downsampler; the middle block; the 12 output blocks: each
    resnet(+attention) layer, the last of each level ending with its upsampler), so the finest level
    carries encoder features too. ``blocks``: the outputs of the down, mid and up blocks (9 for SD 1.x).
    """
    if layout == "blocks":
        return [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    if layout != "official":
        raise ValueError(f"feature layout must be one of {FEATURE_LAYOUTS}, not {layout!r}")
    layers = [unet.conv_in]
    for block in unet.down_blocks:
        layers += list(getattr(block, "attentions", None) or block.resnets)
        layers += list(block.downsamplers or [])
    layers.append(unet.mid_block)
    for block in unet.up_blocks:
        units = list(getattr(block, "attentions", None) or block.resnets)
        if block.upsamplers:
            units[-1] = block.upsamplers[0]  # runs after the last layer: that output block's result
        layers += units
    return layers


class FeatureCapture:
    """Forward hooks on the feature layers of a UNet; records their outputs while armed."""

    def __init__(self, unet, layout: str = "official"):
        self.armed = False
        self._outputs: list[torch.Tensor] = []
        self._handles = [layer.register_forward_hook(self._record) for layer in feature_layers(unet, layout)]

    def _record(self, _module, _inputs, output):
        if self.armed:
            self._outputs.append(output[0] if isinstance(output, tuple) else output)

    def take(self) -> dict[int, torch.Tensor]:
        """Features of the recorded guided call, grouped by resolution.

        The UNet batch is [unconditional; conditional]; the two halves are concatenated on
        channels, so each sample's features are (2C, r, r) whatever the batch size.
        """
        groups: dict[int, list[torch.Tensor]] = {}
        for out in self._outputs:
            groups.setdefault(out.shape[-1], []).extend(out.chunk(2))  # views: one copy per resolution, below
        self._outputs = []
        return {res: torch.cat(parts, dim=1) for res, parts in sorted(groups.items())}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class Generation:
    images: np.ndarray  # uint8 (B, H, W, 3)
    latents: torch.Tensor  # x_t at the capture step, (B, 4, h, w), float32
    timestep: int  # the UNet timestep of the capture step
    features: dict[int, torch.Tensor] | None  # resolution -> (B, C, r, r), when captured
    finite: np.ndarray  # bool (B,): False where sampling produced NaN/inf


class Diffusion:
    """Sampling with a Stable Diffusion pipeline's components and its own solver, ``scheduler``'s
    (``make_scheduler``, kept in ``solver``), which also becomes the pipeline's scheduler, so the pipeline's own
    ``__call__`` samples with it too."""

    def __init__(self, pipe, steps: int, guidance: float, capture_step: int, features: str = "official",
                 scheduler: str = "ddim"):
        if not 1 <= capture_step <= steps:
            raise ValueError(f"capture_step must be within 1..{steps} (steps from the end)")
        # from the model's own scheduler config, also where an earlier Diffusion replaced the pipeline's scheduler
        # (another solver's config drops DDIM's settings: set_alpha_to_one, clip_sample, its spacing)
        model_config = getattr(pipe.scheduler, "model_config", pipe.scheduler.config)
        self.solver = pipe.scheduler = make_scheduler(scheduler, model_config)
        self.solver.model_config = model_config
        self.pipe, self.steps, self.guidance = pipe, steps, guidance
        self.capture_index = steps - capture_step
        self.capture = FeatureCapture(pipe.unet, features)
        self.device = pipe.unet.device
        self.dtype = pipe.unet.dtype
        self._empty_prompt: torch.Tensor | None = None  # the unconditional embedding, computed once

    @property
    def capture_timestep(self) -> int:
        """The UNet timestep of the capture step (what ``Generation.timestep`` holds)."""
        self.solver.set_timesteps(self.steps)
        return int(self.solver.timesteps[self.capture_index])

    @torch.inference_mode()
    def _embed(self, prompts: list[str]) -> torch.Tensor:
        tok = self.pipe.tokenizer
        ids = tok(list(prompts), padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        return self.pipe.text_encoder(ids.to(self.device))[0]

    @torch.inference_mode()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings of [""] * B + prompts, the guided batch's order; the empty prompt's is
        computed once, so it is the same whatever the batch."""
        if self._empty_prompt is None:
            self._empty_prompt = self._embed([""])
        return torch.cat([self._empty_prompt.expand(len(prompts), -1, -1), self._embed(prompts)])

    def _guided_eps(self, latents, t, embeddings, guidance: float):
        eps = self.pipe.unet(torch.cat([latents, latents]).to(self.dtype), t,
                             encoder_hidden_states=embeddings).sample
        uncond, cond = eps.float().chunk(2)
        return uncond + guidance * (cond - uncond)

    def initial_noise(self, seeds: list[int]) -> torch.Tensor:
        """Per-sample noise from each sample's own seed: independent of batch composition."""
        cfg = self.pipe.unet.config
        shape = (cfg.in_channels, cfg.sample_size, cfg.sample_size)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(noise).to(self.device)

    @torch.inference_mode()
    def generate(self, specs: list[PromptSpec], capture_features: bool, guidance: float | None = None) -> Generation:
        """Sample ``specs``; ``guidance`` overrides the default scale (phase A's data uses its own)."""
        guidance = self.guidance if guidance is None else guidance
        scheduler = self.solver
        scheduler.set_timesteps(self.steps)
        embeddings = self.encode_prompts([s.prompt for s in specs])
        latents = self.initial_noise([s.seed for s in specs]) * scheduler.init_noise_sigma
        kept, features = None, None
        for i, t in enumerate(scheduler.timesteps):
            capturing = i == self.capture_index
            if capturing:
                kept = latents.clone()
                self.capture.armed = capture_features
            try:
                eps = self._guided_eps(latents, t, embeddings, guidance)
            finally:
                self.capture.armed = False
            if capturing and capture_features:
                features = self.capture.take()
            latents = scheduler.step(eps, t, latents).prev_sample  # DDIM's default eta is 0
        finite = torch.isfinite(latents).flatten(1).all(1).cpu().numpy()
        return Generation(images=self.decode(latents), latents=kept.float().cpu(),
                          timestep=int(scheduler.timesteps[self.capture_index]),
                          features=features, finite=finite)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        images = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        images = ((images.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()

    @torch.inference_mode()
    def features_from_latent(self, latents: torch.Tensor, timestep: int, prompts: list[str],
                             capture_features: bool = True) -> dict[int, torch.Tensor] | None:
        """The capture-step features of stored latents: one guided UNet pass, no sampling (the pass alone,
        features None, when not ``capture_features``: what an attention recorder around it records)."""
        embeddings = self.encode_prompts(prompts)
        self.capture.armed = capture_features
        try:
            self._guided_eps(latents.to(self.device), timestep, embeddings, self.guidance)  # the output is unused
        finally:
            self.capture.armed = False
        return self.capture.take() if capture_features else None

    @torch.inference_mode()
    def latents_from_images(self, images: torch.Tensor, timestep: int, seeds: list[int]) -> torch.Tensor:
        """Real images (B, 3, H, W) in [-1, 1] -> x_t at ``timestep``: VAE-encoded (posterior mean),
        scaled, and noised with each sample's own seeded noise, as the forward diffusion does."""
        vae = self.pipe.vae
        clean = vae.encode(images.to(self.device, vae.dtype)).latent_dist.mean.float() * vae.config.scaling_factor
        noise = torch.stack([torch.randn(clean.shape[1:], generator=torch.Generator().manual_seed(s))
                             for s in seeds]).to(clean.device)
        alpha = self.solver.alphas_cumprod[int(timestep)].to(clean.device)  # the same for every solver
        return alpha.sqrt() * clean + (1 - alpha).sqrt() * noise
