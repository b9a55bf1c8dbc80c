"""What one erasure run costs: UNet evaluations, seconds and memory, next to the public AdvUnlearn code.

    python bench/erase_cost.py --model tiny
    python bench/erase_cost.py --sd15-shaped --latent 16 [--no-reuse-latents] [--estimate-512]

Our figures are measured by running `erasure_core.training.erase` for a few iterations (counts are also derived
from the config and checked against the measured counts). The public code's figures are RE-DERIVED by counting
the UNet calls its training script makes at its defaults (the script prints how), and its time is composed
from seconds per UNet call measured here on the same model, so both columns share one machine and one model.

UNet evaluation = one latent through the UNet forward (a CFG call on a batch of 2 latents counts 2).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from erasure_core.errors import ErasureError  # noqa: E402
from erasure_core.files import atomic_write_json, prepare_output  # noqa: E402
from erasure_core.latents import UNetRunner  # noqa: E402
from erasure_core.layouts import sd1_text_config  # noqa: E402
from erasure_core.models import SDModel, build_tiny_model, load_clip_tokenizer, make_scheduler  # noqa: E402
from erasure_core.presets import load_retain_prompts  # noqa: E402
from erasure_core.training import EraseConfig, erase  # noqa: E402

GB = 1024**3


# ----- counting -----
def mean_partial_steps(num_ddim_steps: int) -> float:
    """Partial DDIM sampling runs i steps, i uniform in [0, num_ddim_steps): mean (S - 1) / 2."""
    return (num_ddim_steps - 1) / 2


def our_counts(config: EraseConfig, concepts: int = 1, retain_prompts: int | None = None) -> dict:
    """UNet evaluations of `erase` for this config (expected values when latents are re-sampled).

    retain_prompts: how many retain prompts the alignment check (retain_max_alignment) scores; by default the
    config's retain list (its name filter can only lower this, by the few prompts that name the concept)."""
    batch, steps, attack = config.retain_batch, config.num_ddim_steps, config.attack.steps
    retain_on = batch > 0 and config.retain_weight > 0
    early_on = retain_on and config.retain_early_weight > 0  # a second retain batch, from the first steps
    retain_points = (2 * batch if early_on else batch) if retain_on else 0  # student points a step
    points, attack_points = config.concept_batch, config.attack_batch
    if config.reuse_latents:
        pool = 2 * steps * (concepts * config.concept_pool_size + (config.retain_pool_size if retain_on else 0))
        # the caption trajectories' latents taught with the bare word: one evaluation each (every concept has captions)
        pool += concepts * steps * round(config.concept_pool_size * config.concept_pool_captions)
        warm = points + retain_points
        per_attack_step = attack_points
    else:
        mean = mean_partial_steps(steps)
        pool = 0
        warm = (2 * mean * points + 2 * points + points) + ((2 * batch * mean + batch + batch) if retain_on else 0)
        if early_on:
            warm += 2 * batch * mean_partial_steps(config.retain_early_step_count) + batch + batch
        per_attack_step = 2 * mean * attack_points + attack_points + attack_points
    if retain_on and config.retain_max_alignment is not None:
        from erasure_core.training.retain import ALIGNMENT_POINTS, ALIGNMENT_TRAJECTORIES

        count = retain_prompts if retain_prompts is not None else len(
            config.retain_prompts if config.retain_prompts is not None else load_retain_prompts(config.retain_set))
        pool += concepts * (2 * steps * ALIGNMENT_TRAJECTORIES + count * ALIGNMENT_POINTS)
    adversarial_iters = max(0, config.iterations - config.warmup_iterations) if config.method == "advunlearn" else 0
    warm_iters = config.iterations - adversarial_iters
    refreshes = -(-adversarial_iters // config.attack_every)
    # per refresh: every start runs `attack` steps; with several starts each one's final objective is evaluated
    starts = config.attack.restarts
    refresh_cost = starts * attack * per_attack_step + (starts * per_attack_step if starts > 1 else 0)
    plain = points if config.plain_weight > 0 else 0  # the plain prompt beside the attacked one after warm-up
    extra = caption_counts(config, points, attack_points, attack, starts)
    warm += extra["step"]
    refresh_cost += extra["refresh"]
    adversarial = warm + plain + extra["attacked_target"]
    grad = warm_iters * (points + retain_points + extra["step_grad"]) \
        + adversarial_iters * (points + plain + retain_points + extra["step_grad"]) \
        + refreshes * starts * attack * attack_points
    return dict(pool=pool, warmup_iteration=warm, adversarial_iteration=adversarial + refresh_cost,
                per_run=pool + warm * warm_iters + adversarial * adversarial_iters + refresh_cost * refreshes,
                with_backward_per_run=grad)


def caption_counts(config: EraseConfig, points: int, attack_points: int, attack: int, starts: int) -> dict:
    """The UNet evaluations the caption options add (training/captions.py), assuming every concept has captions
    (a concept whose retain list names it; the demo's do). Per step: plain_contrast's word prediction (points),
    the caption target (2 x points, caption and contrast in one call), the caption and concept-vector terms
    (points each, back-propagated). attack_captions: the attacked caption's target each adversarial step
    (2 x points) and, each refresh, its teacher prediction for every attack step's points."""
    captions = config.caption_weight > 0
    step = (points if config.plain_contrast else 0) + (2 * points if captions else 0)
    step_grad = (points if captions else 0) + (points if captions and config.vector_weight > 0 else 0)
    attacked = config.attack_captions  # which needs caption_weight > 0 (config.py)
    # each restart's queue of attack points is filled once per `attack` objective calls (see loop._attack_points)
    calls = starts * attack + (starts if starts > 1 else 0)
    refresh = -(-calls // attack) * attack * attack_points if attacked and attack else 0
    return dict(step=step + step_grad, step_grad=step_grad, attacked_target=2 * points if attacked else 0,
                refresh=refresh)


def public_counts(iterations=1000, warmup=200, attack_steps=30, retain_batch=5, ddim_steps=50) -> dict:
    """The public AdvUnlearn script at its defaults (text encoder training, retain batch 5, attack every
    iteration after warm-up, 30 attack steps), counted call by call."""
    mean = mean_partial_steps(ddim_steps)
    concept = 2 * mean + 2 + 1  # partial CFG sampling of a fresh latent, e_0 and e_p (frozen copy), student
    retain = 2 * retain_batch * mean + retain_batch + retain_batch  # sampling, teacher, student (batch 5)
    attack_step = 2 * mean + 2 + 1  # fresh partial sampling EVERY step, e_0 (unused) and e_p, student
    warm = concept + retain
    adversarial = warm + attack_steps * attack_step
    return dict(pool=0, warmup_iteration=warm, adversarial_iteration=adversarial,
                per_run=warm * warmup + adversarial * (iterations - warmup),
                with_backward_per_run=(1 + retain_batch) * iterations + attack_steps * (iterations - warmup),
                attack_step=attack_step)


PUBLIC_EXPLANATION = """How the public AdvUnlearn code's count is derived (train-scripts/AdvUnlearn.py,
utils/get_loss.py, utils/attack_util.py at their defaults: 1000 iterations, warm-up 200, attack every
iteration, 30 attack steps, retain batch 5, DDIM 50 steps, guidance 3):
- every loss evaluation draws t_enc uniform in 0..49 and runs t_enc DDIM steps with classifier-free guidance
  from new noise (2 latents per step): 49 evaluations on average per latent;
- training loss: concept latent 49 + frozen copy e_0, e_p 2 + student 1 = 52; retain batch 5: 5 x 49 sampling
  + 5 teacher + 5 student = 255; so 307 per iteration (6 of them back-propagated);
- attack step: fresh sampling 49 + e_0 (computed, unused) + e_p 2 + student 1 = 52, x 30 steps = 1,560;
- run: 200 x 307 + 800 x (307 + 1,560) = 1,555,000 evaluations, 30,000 of them back-propagated.
It also keeps two fp32 copies of the SD model and lets gradients reach the UNet weights (3.4 GB at SD1.5)."""


# ----- models -----
def build_sd15_shaped(latent: int) -> SDModel:
    """Random weights with SD1.5's UNet and ViT-L/14 text encoder shapes (no VAE needed for training)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = load_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(**sd1_text_config()))
    unet = UNet2DConditionModel(
        sample_size=latent, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    return SDModel(tokenizer, text_encoder, unet, None, make_scheduler(), name="sd15-shaped-random",
                   source="random").freeze()


# ----- measuring -----
def peak_memory_gb(device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / GB, "CUDA peak allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, "peak RSS of this process"


def seconds_per_unet_call(model: SDModel, reps: int = 3) -> dict:
    """Seconds for one latent: no-grad forward; forward + backward into the conditioning only (ours: the UNet
    is frozen); forward + backward with UNet weight gradients too (the public code leaves them on)."""
    runner = UNetRunner(model.unet)
    latent = torch.randn(1, 4, model.latent_size, model.latent_size, device=model.device)
    width = model.text_encoder.config.hidden_size
    cond = torch.randn(1, 77, width, device=model.device)
    t = torch.tensor([500], device=model.device)

    timed = lambda fn: _seconds(fn, model.device, reps)  # noqa: E731

    grad_cond = cond.clone().requires_grad_(True)
    backward = lambda: runner(latent, t, grad_cond).square().mean().backward()  # noqa: E731
    with torch.no_grad():
        forward = timed(lambda: runner(latent, t, cond))
    input_only = timed(backward)
    model.unet.requires_grad_(True)
    try:
        with_weights = timed(backward)
    finally:
        model.unet.requires_grad_(False)
        for param in model.unet.parameters():
            param.grad = None
    return dict(forward=forward, backward_input_only=input_only, backward_with_weights=with_weights)


def _seconds(fn, device, reps: int = 1) -> float:
    """Mean seconds of `fn` over `reps` calls, after one untimed call (first kernels, allocations)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / reps


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def saved_activation_bytes(model: SDModel, latent: int, dtype: torch.dtype | None) -> int:
    """Bytes autograd saves for backward in one UNet forward (one latent, gradient wanted for the
    conditioning only): the activation memory a training step holds, independent of the device."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    x = torch.randn(1, 4, latent, latent, device=model.device)
    cond = torch.randn(1, 77, model.text_encoder.config.hidden_size, device=model.device, requires_grad=True)
    autocast = torch.autocast(model.device.type, dtype=dtype) if dtype else torch.autocast(model.device.type,
                                                                                         enabled=False)
    with autocast, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.unet(x, torch.tensor([500]), encoder_hidden_states=cond)
    return total


def gpu_estimate_512(model: SDModel, config: EraseConfig) -> dict:
    """Estimated peak GPU memory at 512 px (64x64 latent) for our default memory mode, by parts."""
    params = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    unet_params, encoder_params = params(model.unet), params(model.text_encoder)
    from erasure_core.training import select_trainable_parameters

    trainable = sum(p.numel() for _, p in select_trainable_parameters(model.text_encoder, config.layers,
                                                                    config.train_final_layer_norm,
                                                                    config.train_biases_and_norms))
    activations = saved_activation_bytes(model, 64, torch.bfloat16) * config.max_unet_batch
    parts = {
        "UNet weights fp32 (one copy, no grads)": unet_params * 4,
        "UNet weights bf16 autocast cache": unet_params * 2,
        "original + trained text encoder fp32": 2 * encoder_params * 4,
        "encoder grads + Adam moments (trainable)": 3 * trainable * 4,
        f"UNet activations, {config.max_unet_batch} latent(s) at 64x64, bf16 (measured)": activations,
        "CUDA context + allocator slack (assumed)": int(1.0 * GB),
    }
    return {k: v / GB for k, v in parts.items()}


def public_gpu_estimate_512(model: SDModel) -> dict:
    params = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    unet_params, encoder_params = params(model.unet), params(model.text_encoder)
    activations = saved_activation_bytes(model, 64, None) * 6  # fp32, concept + retain batch 5 in one graph
    parts = {
        "two fp32 SD copies (UNet + text encoder; VAE 0.3 GB not counted)": 2 * (unet_params + encoder_params) * 4,
        "UNet weight grads fp32 (computed though frozen)": unet_params * 4,
        "encoder grads + Adam moments": 3 * encoder_params * 4,
        "UNet activations, 6 latents at 64x64, fp32 (measured)": activations,
        "CUDA context + allocator slack (assumed)": int(1.0 * GB),
    }
    return {k: v / GB for k, v in parts.items()}


def phase(message: str):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def measure_run(model: SDModel, config: EraseConfig, concepts: list[str]) -> dict:
    """Run `erase` and time warm-up and adversarial iterations separately (from the progress callback)."""
    stamps = []

    def progress(step, total, logs):
        stamps.append(time.perf_counter())
        phase(f"iteration {step}/{total} done")

    phase("erase: set-up and pools")
    started = time.perf_counter()
    result = erase(model, concepts, config, progress=progress)
    phase("timing a pool build")
    per_pool_evaluation = pool_seconds_per_evaluation(model, result.metadata["mixed_precision"], config.num_ddim_steps)
    first = started + 0.0
    durations, previous = [], None
    for stamp in stamps:
        durations.append(stamp - (previous if previous is not None else first))
        previous = stamp
    pool_seconds = durations[0] - 0.0  # the first interval also holds set-up and pool building
    warm = [d for d, h in zip(durations[1:], result.history[1:]) if not h["adversarial"]]
    adversarial = [d for d, h in zip(durations[1:], result.history[1:]) if h["adversarial"]]
    return dict(result=result, warm=warm, adversarial=adversarial, first_interval=pool_seconds,
                pool_seconds_per_evaluation=per_pool_evaluation)


def attack_reuse_comparison(model: SDModel, concept: str, repeats: int = 3, steps: int = 30) -> list[str]:
    """Does drawing the attack's latents from a pool weaken it? Erase with ESD (so there is something to
    attack), then run the inner attack with pooled vs freshly sampled latents and score both on held-out
    latents the attack never saw (the attack objective: lower = concept brought back better)."""
    from erasure_core.attacks import SoftPromptConfig, optimize_adversarial_embeddings
    from erasure_core.latents import LatentPool, sample_noisy_latents
    from erasure_core.losses import mse
    from erasure_core.prompts import encode_slotted, slot_prompt
    from erasure_core.sampling import encode_prompts

    erased = erase(model, [concept], EraseConfig(method="esd", iterations=40, lr=3e-3, checkpoint_every=0,
                                                 concept_pool_size=4, retain_pool_size=8)).text_encoder
    runner = UNetRunner(model.unet)
    uncond, cond = encode_prompts(model, [""]), encode_prompts(model, [concept])
    def pool_of(trajectories, seed):
        return LatentPool.build(model, runner, cond, uncond, torch.zeros(trajectories, dtype=torch.long),
                                generator=torch.Generator().manual_seed(seed), keep_uncond=False)
    heldout, train_pool = pool_of(8, 999), pool_of(16, 1)
    slotted = slot_prompt(model.tokenizer, concept, 1)

    @torch.no_grad()
    def heldout_loss(embeds):
        encoded = encode_slotted(erased, slotted, adv_embeds=embeds)
        n, steps_ = heldout.latents.shape[:2]
        eps = runner(heldout.latents.flatten(0, 1), heldout.timesteps.repeat(n), encoded)
        return float(mse(eps, heldout.eps_cond.flatten(0, 1)))

    def objective_for(mode, rng):
        def objective(encoded):
            if mode == "pool":
                point = train_pool.draw(1, rng)
                x, t, target = point.latents, point.timesteps, point.eps_cond
            else:
                index = int(torch.randint(50, (1,), generator=rng))
                x, t = sample_noisy_latents(model, cond, uncond, index, generator=rng, runner=runner)
                with torch.no_grad():
                    target = runner(x, t, cond)
            return mse(runner(x, t, encoded), target)
        return objective

    rows = {"none (random init)": [], "pool": [], "fresh": []}
    for repeat in range(repeats):
        for mode in ("pool", "fresh"):
            config = SoftPromptConfig(k=1, steps=steps, lr=1e-3)
            objective = objective_for(mode, torch.Generator().manual_seed(repeat))
            result = optimize_adversarial_embeddings(erased, slotted, objective, config,
                                                     generator=torch.Generator().manual_seed(repeat))
            rows[mode].append(heldout_loss(result.embeds))
        init = SoftPromptConfig(k=1, steps=0)
        rows["none (random init)"].append(heldout_loss(optimize_adversarial_embeddings(
            erased, slotted, objective_for("pool", torch.Generator()), init,
            generator=torch.Generator().manual_seed(repeat)).embeds))
    lines = [f"attack on an ESD-erased tiny encoder, {steps} steps, k=1, {repeats} seeds; held-out attack loss "
             "(8 unseen trajectories x 50 steps; lower = stronger attack):"]
    lines += [f"  {mode:<20} " + "  ".join(f"{v:.6f}" for v in values) + f"   mean {_mean(values):.6f}"
              for mode, values in rows.items()]
    return lines


def main(argv=None):
    args = parse_args(argv)
    try:
        _measure_and_report(args)
    except ErasureError as err:
        hint = " (--preset demo: pass --concept with a shape or colour, e.g. circle)" if args.preset == "demo" else ""
        print(f"error: {err}{hint}", file=sys.stderr)
        sys.exit(2)


def _measure_and_report(args):
    if args.json:
        prepare_output(args.json)  # a bad --json is reported now, not after minutes of measuring
    torch.set_num_threads(max(1, args.threads or torch.get_num_threads()))
    device = torch.device(args.device)
    if args.sd15_shaped:
        phase("building the SD1.5-shaped random model")
        model = build_sd15_shaped(args.latent)
        millions = lambda module: sum(p.numel() for p in module.parameters()) / 1e6  # noqa: E731
        description = (f"SD1.5-shaped random weights (UNet {millions(model.unet):.0f}M, "
                       f"text encoder {millions(model.text_encoder):.0f}M), "
                       f"latent {args.latent}x{args.latent} ({args.latent * 8} px)"
                       + ("" if args.latent == 64 else ", NOT the 64x64 latent of 512 px"))
    else:
        model = build_tiny_model(latent_size=args.latent)
        description = f"tiny SD1-architecture random model, latent {args.latent}x{args.latent}"
    if device.type != "cpu":
        model.to(device=device)
    defaults = EraseConfig.from_preset(args.preset, reuse_latents=not args.no_reuse_latents,
                                       mixed_precision=args.mixed_precision, seed=0, checkpoint_every=0)
    overrides = dict(iterations=args.measure_warmup + args.measure_adversarial, warmup_iterations=args.measure_warmup,
                     attack_steps=args.attack_steps if args.attack_steps is not None else defaults.attack.steps,
                     concept_pool_size=args.concept_pool or defaults.concept_pool_size,
                     retain_pool_size=args.retain_pool or defaults.retain_pool_size,
                     num_ddim_steps=args.ddim_steps or defaults.num_ddim_steps)
    measured_config = EraseConfig.from_dict({**defaults.to_dict(), **overrides})
    run = measure_run(model, measured_config, args.concept)
    report(args, model, description, defaults, measured_config, run)
    if args.compare_attack_reuse:
        phase("attack with pooled vs fresh latents")
        print("\n" + "\n".join(attack_reuse_comparison(model, args.concept[0])))


def report(args, model, description, defaults, measured_config, run):
    result = run["result"]
    expected = our_counts(measured_config, len(args.concept))
    measured_total = result.unet_evaluations
    check = "matches" if measured_config.reuse_latents and measured_total == expected["per_run"] else (
        "differs" if measured_config.reuse_latents else "random (latents re-sampled: expected values only)")
    ours, public = our_counts(defaults, len(args.concept)), public_counts()
    memory, memory_kind = peak_memory_gb(model.device)  # before the timing below, which adds UNet grads
    phase("timing single UNet calls")
    timing = seconds_per_unet_call(model)
    t_fwd, t_public_bwd = timing["forward"], timing["backward_with_weights"]
    per_attack_step = _per_attack_step_seconds(run, measured_config)
    warm_s = _mean(run["warm"])
    adv_s = warm_s + defaults.attack.steps * per_attack_step if per_attack_step is not None else None
    public_warm_s = (public["warmup_iteration"] - 6) * t_fwd + 6 * t_public_bwd
    public_adv_s = (public["adversarial_iteration"] - 36) * t_fwd + 36 * t_public_bwd
    ours_run_s = _run_seconds(defaults, warm_s, per_attack_step, _pool_seconds(run, ours))
    public_run_s = 200 * public_warm_s + 800 * public_adv_s
    lines = [
        f"model: {description}",
        f"device: {model.device}, threads {torch.get_num_threads()}, "
        f"mixed precision {result.metadata['mixed_precision']}",
        f"our config: preset {defaults.preset}, reuse_latents={defaults.reuse_latents}"
        + (f", pools {defaults.concept_pool_size} concept + {defaults.retain_pool_size} retain trajectories x "
           f"{defaults.num_ddim_steps} steps" if defaults.reuse_latents else " (every point re-sampled)")
        + f", retain batch {defaults.retain_batch}, {defaults.attack.steps} attack steps",
        f"measured: {measured_config.iterations} iterations ({measured_config.warmup_iterations} warm-up), "
        f"attack steps {measured_config.attack.steps}, pools {measured_config.concept_pool_size}+"
        f"{measured_config.retain_pool_size} x {measured_config.num_ddim_steps} steps: "
        f"{measured_total} UNet evaluations, the count formula says {expected['per_run']:.0f} ({check})",
        "",
        "UNet evaluations (forward, per latent)      ours (defaults)    public AdvUnlearn defaults",
        f"  set-up pool, once                          {ours['pool']:>12,.0f}    {0:>12,}",
        f"  warm-up iteration                          {ours['warmup_iteration']:>12,.1f}    "
        f"{public['warmup_iteration']:>12,.1f}",
        f"  adversarial iteration                      {ours['adversarial_iteration']:>12,.1f}    "
        f"{public['adversarial_iteration']:>12,.1f}",
        f"  per run ({defaults.iterations} / 1000 iterations)            {ours['per_run']:>12,.0f}    "
        f"{public['per_run']:>12,.0f}"
        f"   -> {public['per_run'] / ours['per_run']:.1f}x fewer",
        f"  of which back-propagated                   {ours['with_backward_per_run']:>12,.0f}    "
        f"{public['with_backward_per_run']:>12,.0f}",
        "",
        f"seconds (this machine), one latent: UNet forward {t_fwd:.3f} s; forward+backward to the conditioning "
        f"{timing['backward_input_only']:.3f} s (ours); with UNet weight grads {t_public_bwd:.3f} s (public)",
        f"  warm-up iteration: ours {warm_s:.2f} s (measured)      public {public_warm_s:.1f} s (composed)",
        f"  attack step: ours {per_attack_step:.3f} s (measured)" if per_attack_step is not None else
        "  attack step: not measured (no adversarial iteration)",
        f"  iteration with an attack refresh (ours {defaults.attack.steps} steps, public 30): ours {adv_s:.1f} s      "
        f"public {public_adv_s:.1f} s (composed)"
        if adv_s is not None else "",
        f"  set-up + pool building + first iteration: {run['first_interval']:.1f} s (pools as measured)",
        f"  pool building at default size: ours {_pool_seconds(run, ours):.0f} s ({ours['pool']:,.0f} evaluations x "
        f"{run['pool_seconds_per_evaluation']:.4f} s, timed in a separate pool build)",
        f"  per run (ours {defaults.iterations} iterations, public 1000): ours {ours_run_s:.0f} s, "
        f"public {public_run_s:.0f} s"
        f"   -> {public_run_s / ours_run_s:.1f}x less time",
        "  (public times are composed from one-latent timings; its batched calls make it somewhat faster on a GPU)",
        f"peak memory: {memory:.2f} GB ({memory_kind}, whole process: model build included)",
        "",
        PUBLIC_EXPLANATION,
    ]
    if args.estimate_512:
        phase("measuring saved activations at 64x64")
        lines += ["", "ESTIMATE (not measured on a GPU) of peak GPU memory at a 64x64 latent (512 px for SD1.5; "
                  "meaningful with --sd15-shaped), our default memory mode:"]
        ours_gpu = gpu_estimate_512(model, defaults)
        lines += [f"  {k}: {v:.2f} GB" for k, v in ours_gpu.items()]
        lines += [f"  total ~ {sum(ours_gpu.values()):.1f} GB"]
        lines += ["same estimate for the public code (fp32, two copies, UNet grads, 6 latents in one graph):"]
        public_gpu = public_gpu_estimate_512(model)
        lines += [f"  {k}: {v:.2f} GB" for k, v in public_gpu.items()]
        lines += [f"  total ~ {sum(public_gpu.values()):.1f} GB"]
    print("\n".join(line for line in lines if line is not None))
    if args.json:
        atomic_write_json(dict(ours=ours, public=public, measured_total=measured_total, warm_s=warm_s,
                               attack_step_s=per_attack_step, timing=timing, ours_run_s=ours_run_s,
                               public_run_s=public_run_s,
                               pool_seconds_per_evaluation=run["pool_seconds_per_evaluation"],
                               peak_memory_gb=memory), args.json)


def _mean(values):
    return sum(values) / len(values) if values else float("nan")


def _per_attack_step_seconds(run, config):
    """The timed adversarial iterations' time beyond a warm-up iteration, per attack step they ran (with
    attack_every > 1 only every attack_every-th iteration refreshes the attack)."""
    if not run["adversarial"] or not config.attack.steps:
        return None
    refreshes = -(-len(run["adversarial"]) // config.attack_every)
    extra = sum(run["adversarial"]) - len(run["adversarial"]) * _mean(run["warm"])
    return max(0.0, extra / (refreshes * config.attack.steps))


def _pool_seconds(run, counts):
    """Pool building at the default pool size: its UNet evaluations x the seconds one costs in a pool build.
    Not the set-up interval scaled: on an H200 (SD1.5 shape, 512 px) that interval was 24.8 s for 80 pool
    evaluations, nearly all of it one-off start-up (first CUDA kernels, copies of the encoder), and scaling it
    to the 6,400 of the nudity preset gave 1,917 s."""
    return counts["pool"] * run["pool_seconds_per_evaluation"]


def pool_seconds_per_evaluation(model: SDModel, precision: str, steps: int, trajectories: int = 4) -> float:
    """Seconds per UNet evaluation of a pool build (latents.LatentPool.build: CFG pairs of `trajectories`
    latents, `steps` DDIM steps), timed on its second run so that start-up is not counted."""
    from erasure_core.latents import LatentPool

    runner = UNetRunner(model.unet)
    width = model.text_encoder.config.hidden_size
    cond = torch.randn(1, 77, width, device=model.device)
    uncond = torch.randn(1, 77, width, device=model.device)
    index = torch.zeros(trajectories, dtype=torch.long)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    autocast = torch.autocast(device_type=model.device.type, dtype=dtype) if dtype else nullcontext()

    def build():
        with torch.no_grad(), autocast:
            LatentPool.build(model, runner, cond, uncond, index, num_inference_steps=steps,
                             generator=torch.Generator().manual_seed(0), keep_uncond=False)

    before = runner.evaluations
    seconds = _seconds(build, model.device)  # one untimed build, one timed
    return seconds / max(1, (runner.evaluations - before) // 2)


def _run_seconds(config: EraseConfig, warm_s, per_attack_step, pool_s):
    """Pools, every iteration at the warm-up's time, and the attack refreshes' steps."""
    adversarial = max(0, config.iterations - config.warmup_iterations) if config.method == "advunlearn" else 0
    refreshes = -(-adversarial // config.attack_every)
    attack_s = refreshes * config.attack.restarts * config.attack.steps * (per_attack_step or 0.0)
    return pool_s + config.iterations * warm_s + attack_s


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=["tiny"], help="the tiny test model (default)")
    parser.add_argument("--sd15-shaped", action="store_true", help="SD1.5-shaped random weights built here")
    parser.add_argument("--latent", type=int, default=None, help="latent side (default 8 tiny, 16 SD1.5-shaped)")
    parser.add_argument("--preset", default="nudity", choices=["nudity", "style", "object", "demo"],
                        help="demo: the demo preset (captions, the caption attack, the concept-vector term); its "
                        "concept must be a shape or colour, whose captions its retain set holds (default circle)")
    parser.add_argument("--concept", action="append", default=None)
    parser.add_argument("--no-reuse-latents", action="store_true", help="re-sample latents for every step")
    parser.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "bf16", "fp16"])
    parser.add_argument("--measure-warmup", type=int, default=3, help="warm-up iterations to time")
    parser.add_argument("--measure-adversarial", type=int, default=2, help="adversarial iterations to time")
    parser.add_argument("--attack-steps", type=int, default=None, help="attack steps in the timed run")
    parser.add_argument("--concept-pool", type=int, default=None, help="pool size in the timed run")
    parser.add_argument("--retain-pool", type=int, default=None, help="pool size in the timed run")
    parser.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps of the timed run's pools")
    parser.add_argument("--estimate-512", action="store_true", help="estimate GPU memory at 512 px by parts")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0))
    parser.add_argument("--compare-attack-reuse", action="store_true",
                        help="also compare the attack with pooled vs freshly sampled latents (tiny model)")
    parser.add_argument("--json", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    args.latent = args.latent or (16 if args.sd15_shaped else 8)
    # the demo preset trains on its retain set's captions of the concept: shapes and colours have them, nudity not
    args.concept = args.concept or (["circle"] if args.preset == "demo" else ["nudity"])
    return args


if __name__ == "__main__":
    main()
