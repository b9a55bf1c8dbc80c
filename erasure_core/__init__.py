"""Robust Erasure: adversarially robust concept erasure for Stable Diffusion 1.x text encoders.

    from erasure_core import load_model, EraseConfig, erase, save_encoder
    model = load_model("demo")
    result = erase(model, ["circle"], EraseConfig.from_preset("demo"))
    save_encoder(result.text_encoder, "no_circles.safetensors")

The public names below are imported lazily so that `import erasure_core` stays fast.
"""

__version__ = "0.1.0"

_PUBLIC = {
    "load_model": "loading",
    "SDModel": "models",
    "EraseConfig": "training",
    "erase": "training",
    "EraseResult": "training",
    "erase_to_file": "jobs",
    "load_robust_text_encoder": "encoders",
    "save_encoder": "encoders",
    "read_encoder": "encoders",
    "convert_encoder": "encoders",
    "swap_text_encoder": "swap",
    "bake": "swap",
    "generate": "sampling",
    "encode_prompts": "sampling",
    "evaluate": "evaluate",
    "build_probe": "attacks.registry",
    "build_judge": "judges.registry",
    "write_report": "report",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        module = importlib.import_module(f".{_PUBLIC[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'erasure_core' has no attribute {name!r}")
