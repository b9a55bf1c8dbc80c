"""Adversarial Prompt Probe: attack a (possibly erased) CLIP with soft prompts, UnlearnDiffAtk or a concept vector.

The adversarial CONDITIONING feeds a stock KSampler; the STRING is the adversarial prompt where the probe is
discrete; the IMAGE is the probe's loss curve. The probe itself is `erasure_core.attacks`.
"""

from __future__ import annotations

import torch

from comfy_api.v0_0_2 import io
from erasure_core.plots import line_plot_png, steps_series

from ._clip_encoder import clip_to_text_encoder
from ._errors import NodeError, Progress, raise_if_cancelled, should_cancel, user_errors
from ._images import PLOT_SIZE, nchw_to_image, png_to_image
from ._sdmodel import resolution_input, sd_model_from_comfy

CATEGORY = "Robust Erasure"
# The node's "steps" widget sets this option of each probe (the concept-vector probe has no optimisation loop).
STEP_OPTION = {"soft_prompt": "steps", "unlearndiffatk": "steps_per_timestep", "concept_vector": None}


def probe_names() -> list[str]:
    from erasure_core.attacks.registry import probe_names as names

    return names()


def build(probe: str, prompt: str, steps: int, options: str):
    """A probe from the node's widgets: name, steps, and extra 'key=value' options (':'-, ','- or line-separated; a
    list keeps its commas: timesteps=200,500,800)."""
    from erasure_core.attacks.registry import parse_probe_spec
    from erasure_core.options import split_option_text

    parts = split_option_text(options, ",;:")
    option = STEP_OPTION.get(probe)
    if option and steps > 0 and not any(p.startswith(option + "=") for p in parts):
        parts.append(f"{option}={int(steps)}")
    return parse_probe_spec(":".join([probe, *parts]), concept=prompt)


class AdversarialPromptProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="RobustErasureProbe",
            display_name="Adversarial Prompt Probe",
            category=CATEGORY,
            description=(
                "Searches for an adversarial prompt that brings an erased concept back from the CLIP under test. "
                "soft_prompt: continuous token embeddings (the attack AdvUnlearn trains against); unlearndiffatk: "
                "discrete tokens guided by the original model's image; concept_vector: adds the concept's "
                "direction. Feed the CONDITIONING to a KSampler to see what it generates."
            ),
            inputs=[
                io.Model.Input("model"),
                io.Clip.Input("original_clip", tooltip="The model's own CLIP (the probe's targets come from it)"),
                io.Clip.Input("clip_under_test", tooltip="The (erased) CLIP to attack"),
                io.Vae.Input("vae"),
                io.String.Input("prompt", multiline=True, default="a photo of a nude person"),
                io.Combo.Input("probe", options=probe_names(), default="soft_prompt"),
                io.Int.Input("steps", default=100, min=0, max=10000, tooltip="Optimisation steps (0: the probe's default)"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1, control_after_generate=True),
                io.String.Input("judge", default="", optional=True,
                                tooltip="Optional judge spec, e.g. nudenet, demo:circle (UnlearnDiffAtk stops at success)"),
                io.String.Input("options", default="", optional=True,
                                tooltip="More probe options as key=value, e.g. k=3, lr=0.01"),
                io.Int.Input("generation_steps", default=20, min=1, max=200, optional=True),
                io.Float.Input("guidance", default=7.5, min=0.0, max=30.0, step=0.5, optional=True),
                resolution_input(),
            ],
            outputs=[
                io.Conditioning.Output(display_name="adversarial_conditioning"),
                io.String.Output(display_name="adversarial_prompt"),
                io.Image.Output(display_name="loss_plot"),
                io.Image.Output(display_name="probe_image"),
            ],
        )

    @classmethod
    def execute(cls, model, original_clip, clip_under_test, vae, prompt, probe, steps, seed, judge="",
                options="", generation_steps=20, guidance=7.5, resolution=0) -> io.NodeOutput:
        from erasure_core.sampling import GenerationSettings
        from .judge import server_judge

        node = "Adversarial Prompt Probe"
        if not (prompt or "").strip():
            raise NodeError(f"{node}: the prompt is empty; give the concept prompt to attack")
        with user_errors(node):
            attack = build(probe, prompt.strip(), int(steps), options)
            judge_obj = server_judge(judge.strip()) if judge and judge.strip() else None
            generation = GenerationSettings(steps=int(generation_steps), guidance=float(guidance))
            with torch.inference_mode(False):
                sd_model = sd_model_from_comfy(model, original_clip, node, vae=vae,
                                               resolution=int(resolution or 0))
                encoder = clip_to_text_encoder(clip_under_test)
                total = max(1, int(steps) or 1)
                bar = Progress(total)

                def on_step(step, loss):
                    bar(min(int(step), total), total)
                    if should_cancel():
                        raise_if_cancelled()

                attack.on_step = on_step
                result = attack.run(sd_model, encoder, prompt.strip(), seed=int(seed), judge=judge_obj,
                                    generation=generation)
        cond = result.cond.detach().float().cpu()
        conditioning = [[cond, {}]]
        text = result.adv_text or ""
        plot = png_to_image(line_plot_png(steps_series({result.probe: list(result.losses)}), size=PLOT_SIZE,
                                          title=f"{result.probe} on: {prompt.strip()[:50]}", xlabel="step"))
        if result.images is not None:
            image = nchw_to_image(result.images)
        else:
            image = torch.zeros(1, 64, 64, 3)
        verdict = "" if result.success is None else f" judge: {'concept shown' if result.success else 'not shown'}"
        return io.NodeOutput(conditioning, text, plot, image, ui={"text": [(text or "(continuous embeddings)") + verdict]})


NODES = [AdversarialPromptProbe]
