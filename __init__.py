"""ComfyUI entry point of the Robust Erasure node pack (this folder, dropped into ComfyUI/custom_nodes).

Outside ComfyUI this file is never imported: `erasure_core` is the Python package, and `pip install .` ships only
that. Inside ComfyUI it makes `erasure_core` importable (appending this folder to sys.path when the package is not
installed) and hands ComfyUI the V3 extension. One entry style only: no NODE_CLASS_MAPPINGS here, because a
module defining both makes ComfyUI ignore `comfy_entrypoint`.
"""

import importlib.util
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

# The before/after slider and the live loss chart (served at /extensions/<pack folder>/...).
WEB_DIRECTORY = "./web"

if importlib.util.find_spec("erasure_core") is None:
    sys.path.append(_HERE)


async def comfy_entrypoint():
    from .nodes import RobustErasureExtension

    return RobustErasureExtension()
