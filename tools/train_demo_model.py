"""Train the demo model from a seed on a CPU: first the VAE, then the UNet and the text encoder jointly, with
epsilon prediction for the first `--eps-share` of the diffusion phase and v-prediction after it.

    python tools/train_demo_model.py [--seed S] [--minutes M] [--out DIR] [--work DIR]

The run follows a wall-clock budget (learning-rate schedules are cosine over the budget's elapsed share), logs
to WORK/train.log, and every few minutes writes an atomic resumable checkpoint to WORK and the current EMA
weights to OUT, so an interrupted run leaves usable weights. Running the same command again resumes. With
`--steps N` the diffusion phase runs exactly N steps instead (reproducible step for step).

A tool for the maintainers, outside the installed package: users load the shipped weights (erasure_core/demo/).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, safe_open

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erasure_core.demo import WEIGHTS_DIR, world  # noqa: E402
from erasure_core.demo.architecture import build_scheduler, build_text_encoder, build_unet, build_vae  # noqa: E402
from erasure_core.files import atomic_save_safetensors, atomic_write_json, atomic_write_text  # noqa: E402
from erasure_core.models import SDModel, denoising_target, load_clip_tokenizer, make_scheduler  # noqa: E402

log = logging.getLogger("train_demo_model")


@dataclass
class TrainConfig:
    seed: int = 0
    minutes: float = 90.0  # whole run: data, VAE, latents, diffusion
    out: Path = WEIGHTS_DIR
    work: Path = Path("runs/demo_train")
    n_images: int = 10000
    vae_share: float = 0.2  # of the budget
    vae_batch: int = 32
    vae_crop: int = 32  # the VAE is fully convolutional: training on crops costs a quarter per sample
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    batch: int = 32  # on a shared CPU, more small steps beat fewer large ones
    lr: float = 1e-3
    warmup: int = 200
    min_lr_ratio: float = 0.05
    ema_decay: float = 0.9995
    min_snr_gamma: float = 5.0  # Min-SNR cap at low noise: converges faster on the few steps a CPU affords
    # Share of the diffusion phase trained with epsilon prediction before the switch to v-prediction (the
    # shipped model's). Measured here: epsilon learns the shapes fast but never the background and colour
    # words; v-prediction from scratch learns backgrounds and colours but hardly any shape in the same time;
    # epsilon first, then v, learnt all of them.
    eps_share: float = 0.45
    offset_noise: float = 0.05  # lets the model reach pure white and pure black backgrounds
    steps: int | None = None  # fixed diffusion step count instead of the time budget
    extend_minutes: float = 0.0  # on resume: lengthen the diffusion phase's budget (its cosine stretches)
    threads: int = 1  # an oversubscribed CPU makes 2 OpenMP threads several times slower than 1
    checkpoint_every_s: float = 480.0
    started: float = field(default_factory=time.time)


# ---------------------------------------------------------------------------------------------- schedule


class Budget:
    """Progress in [0, 1] of one phase, by steps if a step count is set, else by its share of wall time."""

    def __init__(self, seconds: float, steps: int | None = None, elapsed: float = 0.0):
        self.seconds, self.steps, self.elapsed_before = seconds, steps, elapsed
        self.t0 = time.time()

    @property
    def elapsed(self) -> float:
        return self.elapsed_before + time.time() - self.t0

    def progress(self, step: int) -> float:
        if self.steps:
            return step / self.steps
        return self.elapsed / max(self.seconds, 1e-9)


def lr_factor(step: int, progress: float, warmup: int, min_ratio: float) -> float:
    """Linear warm-up, then cosine decay over the phase's progress."""
    warm = min(1.0, (step + 1) / warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return warm * (min_ratio + (1 - min_ratio) * cosine)


# ---------------------------------------------------------------------------------------------- data


def render_dataset(n: int, seed: int) -> tuple[torch.Tensor, list[dict[str, str]]]:
    """`n` renders (uint8 [n, 3, 64, 64]) with balanced attribute combinations, and their attributes."""
    rng = random.Random(seed)
    attrs = [world.random_attrs(rng) for _ in range(n)]
    images = [world.render(a, rng) for a in attrs]
    pixels = (world.to_tensor_batch(images) * 255).round().to(torch.uint8)
    return pixels, attrs


def to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.float().div(127.5).sub(1.0)


class CaptionTokens:
    """Fresh captions each time an image is drawn, tokenised once per distinct caption (SD1 padding to 77)."""

    def __init__(self, attrs: list[dict[str, str]], seed: int):
        self.attrs, self.rng = attrs, random.Random(seed)
        self.tokenizer = load_clip_tokenizer()
        self.cache: dict[str, torch.Tensor] = {}

    def ids(self, text: str) -> torch.Tensor:
        if text not in self.cache:
            self.cache[text] = self.tokenizer(text, padding="max_length", max_length=77, truncation=True,
                                              return_tensors="pt").input_ids[0]
        return self.cache[text]

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.ids(world.caption(self.attrs[i], self.rng)) for i in indices.tolist()])


# ---------------------------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, modules: dict, optimizer, ema: EMAModel | None, meta: dict):
    """Weights, optimiser and EMA state in one safetensors file (written atomically) for resuming."""
    tensors = {f"{name}.{k}": v for name, m in modules.items() for k, v in m.state_dict().items()}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for k, v in state.items():
            tensors[f"opt.{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    if ema is not None:
        tensors.update({f"ema.{i}": p for i, p in enumerate(ema.shadow_params)})
        meta = {**meta, "ema_step": ema.optimization_step}
    meta = {**meta, "param_groups": opt_state["param_groups"]}
    atomic_save_safetensors(tensors, path, metadata=meta)


def load_checkpoint(path: Path, modules: dict, optimizer, ema: EMAModel | None) -> dict:
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) if v[:1] in "[{0123456789" else v for k, v in f.metadata().items()}
    for name, m in modules.items():
        prefix = f"{name}."
        m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith("opt."):
            _, pid, k = key.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    if ema is not None:
        ema.shadow_params = [tensors[f"ema.{i}"] for i in range(len(ema.shadow_params))]
        ema.optimization_step = int(meta["ema_step"])
    return meta


# ---------------------------------------------------------------------------------------------- export


def _save_diffusers_module(module, folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(module.to_json_string(), folder / "config.json")
    state = {k: v.half() for k, v in module.state_dict().items()}
    atomic_save_safetensors(state, folder / "diffusion_pytorch_model.safetensors", metadata={"format": "pt"})


def _save_text_encoder(text_encoder, folder: Path):
    """Keys written as `text_model.*` whatever the transformers version: the layout ComfyUI detects."""
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(text_encoder.config.to_json_string(), folder / "config.json")
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.half()
             for k, v in text_encoder.state_dict().items()}
    atomic_save_safetensors(state, folder / "model.safetensors", metadata={"format": "pt"})


def export_weights(out: Path, text_encoder=None, unet=None, vae=None, info: dict | None = None, scheduler=None):
    """The shipped layout: a diffusers folder of fp16 safetensors (tokenizer: erasure_core/data); `scheduler`
    (default: the shipped model's) records the prediction type the weights were trained for."""
    if vae is not None:
        _save_diffusers_module(vae, out / "vae")
    if unet is not None:
        _save_diffusers_module(unet, out / "unet")
    if text_encoder is not None:
        _save_text_encoder(text_encoder, out / "text_encoder")
    scheduler = scheduler or build_scheduler()
    (out / "scheduler").mkdir(parents=True, exist_ok=True)
    atomic_write_text(scheduler.to_json_string(), out / "scheduler" / "scheduler_config.json")
    index = {"_class_name": "StableDiffusionPipeline", "text_encoder": ["transformers", "CLIPTextModel"],
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "scheduler": ["diffusers", "DDIMScheduler"], "tokenizer": ["transformers", "CLIPTokenizer"]}
    atomic_write_json(index, out / "model_index.json")
    if info is not None:
        atomic_write_json(info, out / "training.json")


# ---------------------------------------------------------------------------------------------- VAE


def random_crop(batch: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    top, left = torch.randint(0, batch.shape[-1] - size + 1, (2,), generator=gen).tolist()
    return batch[..., top:top + size, left:left + size]


def vae_step(vae, batch: torch.Tensor, kl_weight: float) -> torch.Tensor:
    x = to_model_range(batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample.float()
    # L1 keeps edges and thin stripes sharper than MSE alone; the KL term only keeps latents bounded.
    # The 8x-pooled term weighs flat colour, which the VAE otherwise learns long after luminance and edges.
    colour = F.mse_loss(F.avg_pool2d(recon, 8), F.avg_pool2d(x, 8))
    return F.l1_loss(recon, x) + 0.5 * F.mse_loss(recon, x) + colour + kl_weight * posterior.kl().mean()


def train_vae(cfg: TrainConfig, pixels: torch.Tensor):
    path = cfg.work / "vae.safetensors"
    vae = build_vae()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    meta = {"step": 0, "elapsed": 0.0, "done": 0}
    if path.exists():
        meta = load_checkpoint(path, {"vae": vae}, optimizer, None)
        log.info("VAE: resumed at step %s (done=%s)", meta["step"], meta["done"])
    budget = Budget(cfg.minutes * 60 * cfg.vae_share, elapsed=float(meta["elapsed"]))
    gen = torch.Generator().manual_seed(cfg.seed + 1 + int(meta["step"]))
    step, last_save, losses, t_log = int(meta["step"]), time.time(), [], time.time()
    while not int(meta["done"]) and budget.progress(step) < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = cfg.vae_lr * lr_factor(step, budget.progress(step), 50, cfg.min_lr_ratio)
        batch = pixels[torch.randint(len(pixels), (cfg.vae_batch,), generator=gen)]
        loss = vae_step(vae, random_crop(batch, cfg.vae_crop, gen), cfg.vae_kl_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step, losses = step + 1, losses + [loss.item()]
        if step % 25 == 0:
            log.info("VAE step %d loss %.4f %.2f s/step %.0f%%", step, sum(losses) / len(losses),
                     (time.time() - t_log) / 25, 100 * budget.progress(step))
            losses, t_log = [], time.time()
        if time.time() - last_save > cfg.checkpoint_every_s:
            save_checkpoint(path, {"vae": vae}, optimizer, None, {"step": step, "elapsed": budget.elapsed, "done": 0})
            last_save = time.time()
    if not int(meta["done"]):
        save_checkpoint(path, {"vae": vae}, optimizer, None, {"step": step, "elapsed": budget.elapsed, "done": 1})
        log.info("VAE: done after %d steps, %.1f min", step, budget.elapsed / 60)
    vae.eval().requires_grad_(False)
    log.info("VAE: reconstruction error %.4f (mean abs, [0, 1] scale)", reconstruction_check(vae, cfg))
    return vae


@torch.no_grad()
def reconstruction_check(vae, cfg: TrainConfig, n: int = 24) -> float:
    """Mean absolute reconstruction error on fresh renders; originals over reconstructions in a PNG."""
    from PIL import Image

    rng = random.Random(cfg.seed + 99)
    x = world.to_tensor_batch([world.render(world.random_attrs(rng), rng) for _ in range(n)])
    recon = (vae.decode(vae.encode(x * 2 - 1).latent_dist.mean).sample / 2 + 0.5).clamp(0, 1)
    grid = torch.cat([torch.cat(list(x.permute(0, 2, 3, 1)), 1), torch.cat(list(recon.permute(0, 2, 3, 1)), 1)])
    Image.fromarray((grid * 255).round().byte().numpy()).save(cfg.work / "vae_reconstruction.png")
    return (recon - x).abs().mean().item()


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Posterior means of the whole dataset, scaled to unit std; the scale goes into the VAE's config."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        means = torch.cat([vae.encode(to_model_range(pixels[i:i + batch])).latent_dist.mean.float()
                           for i in range(0, len(pixels), batch)])
    scale = 1.0 / means.std().item()
    vae.register_to_config(scaling_factor=scale)
    log.info("latents: mean %.3f std %.3f -> scaling_factor %.4f", means.mean(), means.std(), scale)
    return means * scale


# ---------------------------------------------------------------------------------------------- diffusion


def loss_weights(scheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR weights for the scheduler's prediction type, in clean-image (x0) terms:

    - epsilon: x0 weight min(SNR, gamma), the published Min-SNR-gamma;
    - v-prediction: x0 weight min(SNR + 1, gamma + 1), i.e. 1 on the v-MSE at high noise, where v-MSE is
      about the clean-image MSE: the background and colour words keep their full weight there."""
    alpha_bar = scheduler.alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    if scheduler.config.prediction_type == "epsilon":
        return torch.clamp(snr, max=gamma) / snr
    return torch.clamp(snr + 1, max=gamma + 1) / (snr + 1)


def diffusion_step(cfg, unet, text_encoder, scheduler, latents, ids, gen) -> torch.Tensor:
    noise = torch.randn(latents.shape, generator=gen)
    noise += cfg.offset_noise * torch.randn(latents.shape[0], latents.shape[1], 1, 1, generator=gen)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=gen)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = denoising_target(scheduler, latents, noise, timesteps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cond = text_encoder(ids)[0]
        pred = unet(noisy, timesteps, cond).sample.float()
    per_sample = F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * loss_weights(scheduler, timesteps, cfg.min_snr_gamma)).mean()


@torch.no_grad()
def sample_grid(unet, text_encoder, vae, scheduler, path: Path, seed: int):
    """16 samples for fixed prompts (DDIM 20, CFG 5) as a PNG, to watch the run."""
    from PIL import Image

    from ..sampling import encode_prompts, generate

    model = SDModel(load_clip_tokenizer(), text_encoder, unet, vae, scheduler, name="demo")
    prompts = [f"a {c} {s}" for c, s in zip(world.WORLD["colour"] * 4, sum([[s] * 4 for s in world.WORLD["shape"]], []))]
    prompts[1::4] = [p + " on a black background" for p in prompts[1::4]]
    prompts[2::4] = [p + " in outline style" for p in prompts[2::4]]
    prompts[3::4] = [p.replace("a ", "a striped ", 1) for p in prompts[3::4]]
    images = generate(model, encode_prompts(model, prompts), range(seed, seed + 16), steps=20, guidance=5.0)
    grid = Image.new("RGB", (4 * 64, 4 * 64))
    for i, img in enumerate(images):
        pil = Image.fromarray((img.permute(1, 2, 0) * 255).round().byte().numpy())
        grid.paste(pil, ((i % 4) * 64, (i // 4) * 64))
    grid.save(path)


def train_diffusion(cfg: TrainConfig, vae, latents: torch.Tensor, attrs: list[dict]):
    path = cfg.work / "diffusion.safetensors"
    torch.manual_seed(cfg.seed + 2)
    unet, text_encoder = build_unet(), build_text_encoder()
    v_scheduler = build_scheduler()
    eps_scheduler = make_scheduler(prediction_type="epsilon")  # the same SD1 schedule
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.99))
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
    modules = {"unet": unet, "text_encoder": text_encoder}
    meta = {"step": 0, "elapsed": 0.0}
    if path.exists():
        meta = load_checkpoint(path, modules, optimizer, ema)
        log.info("diffusion: resumed at step %s", meta["step"])
    remaining = cfg.minutes * 60 - (time.time() - cfg.started) - 60  # keep a minute for the final export
    seconds = float(meta["budget"]) if meta.get("budget") else float(meta["elapsed"]) + remaining
    budget = Budget(seconds + 60 * cfg.extend_minutes, cfg.steps, elapsed=float(meta["elapsed"]))
    captions = CaptionTokens(attrs, cfg.seed + 3 + int(meta["step"]))
    gen = torch.Generator().manual_seed(cfg.seed + 4 + int(meta["step"]))
    step, last_save, losses, t_log = int(meta["step"]), time.time(), [], time.time()
    log.info("diffusion: budget %.1f min, unet %.2fM, text encoder %.2fM parameters", budget.seconds / 60,
             sum(p.numel() for p in unet.parameters()) / 1e6, sum(p.numel() for p in text_encoder.parameters()) / 1e6)

    def phase_scheduler():
        """Epsilon prediction for the first `eps_share` of the phase, then v-prediction (see TrainConfig)."""
        return eps_scheduler if budget.progress(step) < cfg.eps_share else v_scheduler

    def checkpoint(final: bool = False):
        save_checkpoint(path, modules, optimizer, ema, {"step": step, "elapsed": budget.elapsed, "budget": budget.seconds})
        ema.store(params)
        ema.copy_to(params)
        info = {"seed": cfg.seed, "diffusion_steps": step, "minutes": round((time.time() - cfg.started) / 60, 1),
                "final": final, "config": {k: str(v) for k, v in asdict(cfg).items() if k != "started"}}
        export_weights(cfg.out, text_encoder, unet, vae, info, scheduler=phase_scheduler())
        sample_grid(unet.eval(), text_encoder.eval(), vae, phase_scheduler(), cfg.work / f"samples_{step:06d}.png",
                    cfg.seed)
        unet.train(), text_encoder.train()
        ema.restore(params)
        log.info("checkpoint at step %d: %s, weights -> %s", step, path, cfg.out)

    unet.train(), text_encoder.train()
    while budget.progress(step) < 1.0:
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(step, budget.progress(step), cfg.warmup, cfg.min_lr_ratio)
        idx = torch.randint(len(latents), (cfg.batch,), generator=gen)
        loss = diffusion_step(cfg, unet, text_encoder, phase_scheduler(), latents[idx], captions.batch(idx), gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.step(params)
        step, losses = step + 1, losses + [loss.item()]
        if step % 25 == 0:
            log.info("diffusion step %d loss %.4f lr %.2e %.2f s/step %.0f%%", step, sum(losses) / len(losses),
                     optimizer.param_groups[0]["lr"], (time.time() - t_log) / 25, 100 * budget.progress(step))
            losses, t_log = [], time.time()
        if time.time() - last_save > cfg.checkpoint_every_s:
            checkpoint()
            last_save = time.time()
    checkpoint(final=True)
    log.info("diffusion: done after %d steps, %.1f min", step, budget.elapsed / 60)


# ---------------------------------------------------------------------------------------------- main


def run(cfg: TrainConfig):
    cfg.work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    pixels, attrs = render_dataset(cfg.n_images, cfg.seed)
    log.info("rendered %d images in %.1f s", len(pixels), time.time() - t0)
    torch.manual_seed(cfg.seed + 1)
    vae = train_vae(cfg, pixels)
    latents = encode_latents(vae, pixels)
    export_weights(cfg.out, vae=vae)
    train_diffusion(cfg, vae, latents, attrs)
    log.info("all done in %.1f min (this session)", (time.time() - cfg.started) / 60)


def parse_args(argv=None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python tools/train_demo_model.py", description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--minutes", type=float, default=90.0, help="wall-clock budget of the whole run")
    p.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="where the fp16 weights go")
    p.add_argument("--work", type=Path, default=Path("runs/demo_train"), help="checkpoints, log, sample grids")
    p.add_argument("--steps", type=int, default=None, help="fixed diffusion steps instead of the time budget")
    p.add_argument("--eps-share", type=float, default=0.45,
                   help="share of the diffusion phase trained with epsilon prediction before v-prediction")
    p.add_argument("--extend-minutes", type=float, default=0.0,
                   help="when resuming: add this many minutes to the diffusion phase's budget")
    p.add_argument("--images", type=int, default=10000, help="size of the pre-rendered dataset")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--checkpoint-every", type=float, default=480.0, help="seconds between checkpoints")
    a = p.parse_args(argv)
    return TrainConfig(seed=a.seed, minutes=a.minutes, out=a.out, work=a.work, steps=a.steps, n_images=a.images,
                       threads=a.threads, checkpoint_every_s=a.checkpoint_every, extend_minutes=a.extend_minutes,
                       eps_share=a.eps_share)


def main(argv=None):
    cfg = parse_args(argv)
    cfg.work.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s",
                        handlers=[logging.FileHandler(cfg.work / "train.log"), logging.StreamHandler()])
    log.info("config: %s", {k: str(v) for k, v in asdict(cfg).items()})
    run(cfg)


if __name__ == "__main__":
    main()
