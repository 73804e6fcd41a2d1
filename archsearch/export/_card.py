"""The model card (``README.md``) of an exported encoder: what it is, where it came from, how to load it."""
from __future__ import annotations

import json
from typing import List

from ..spec import ArchSpec
from ._timm import EXTENSION_MODEL

__all__ = ["card", "snippets"]


def snippets(result) -> dict:
    """The two loading snippets, as code that runs from the folder's parent (the tests run them)."""
    h, w = result.resolution
    pre = "import archsearch  # registers the timm model this folder names\n" if result.needs_archsearch else ""
    timm_code = (f"{pre}import timm, torch\n\nmodel = timm.create_model(\"local-dir:{result.out.name}/timm\", "
                 f"pretrained=True).eval()\n"
                 f"with torch.no_grad():\n    features = model.forward_features(torch.randn(1, 3, {h}, {w}))\n"
                 f"print(features.shape)  # (1, {result.grid and ''}C, {result.grid[0]}, {result.grid[1]})\n")
    ort_code = ("import numpy as np, onnxruntime as ort\n\n"
                f"session = ort.InferenceSession(\"{result.out.name}/onnx/model.onnx\", providers=[\"CPUExecutionProvider\"])\n"
                f"x = np.random.default_rng(0).standard_normal((2, 3, {h}, {w}), dtype=np.float32)\n"
                "(features,) = session.run(None, {\"pixel_values\": x})\n"
                f"print(features.shape)  # (2, C, {result.grid[0]}, {result.grid[1]}): the visual tokens\n")
    return {"timm": timm_code.replace(f"{result.grid and ''}", ""), "onnx": ort_code}


def _num(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def card(spec: ArchSpec, result, origin) -> str:
    h, w = result.resolution
    gh, gw = result.grid
    lines: List[str] = [
        f"# {spec.name or spec.code} at {h}x{w} px", "",
        f"A FastViT-family vision encoder exported by archsearch from {origin.source}.", "",
        "| | |", "| --- | --- |",
        f"| arch | `{spec.code}` (spec hash `{spec.spec_hash}`) |",
        f"| resolution | {h}x{w} px |",
        f"| output grid | {gh}x{gw} = {gh * gw} visual tokens, {spec.out_channels} channels (output stride {spec.output_stride}) "
        f"|",
        f"| params | {result.params:,} (training form) |",
        f"| MACs | {result.macs / 1e9:.3f} G (deploy form, batch 1) |",
        f"| formats | {', '.join(result.formats)} |",
    ]
    if result.onnx_max_abs_diff is not None:
        lines.append(f"| ONNX check | ONNX Runtime against torch on a random batch of 2: max abs difference "
                     f"{result.onnx_max_abs_diff:.2e} (opset 17, dynamic batch axis) |")
    lines += ["", "## Where it came from", ""]
    if origin.study:
        lines += [f"Study `{origin.study}` in `{origin.storage}`, trial {origin.trial}.", "",
                  "| objective | value |", "| --- | ---: |", *(f"| {k} | {_num(v)} |" for k, v in origin.objectives.items())]
        extra = {k: v for k, v in origin.metrics.items() if k not in origin.objectives}
        if extra:
            lines += ["", "Also measured: " + ", ".join(f"{k} {_num(v)}" for k, v in extra.items()) + "."]
        if origin.latency_conditions:
            lines += ["", f"Latency conditions: `{json.dumps(origin.latency_conditions, sort_keys=True)}`."]
    else:
        lines += [f"{origin.source[0].upper()}{origin.source[1:]}; no search measured it (`archsearch measure` does)."]
    lines += ["", "Trained accuracy: " + (f"top-1 per seed {origin.trained_top1} (`archsearch verify`)." if origin.trained_top1
                                           else "none yet: the weights are the initial ones, to be trained."), ""]
    lines += ["## Load it", ""]
    if "timm" in result.formats:
        if result.needs_archsearch:
            lines += [f"**This folder needs archsearch**: the spec uses one of its extensions to timm's FastViT (a width "
                      f"change without downsampling, or an attention head size other than 32), so `timm/config.json` names "
                      f"`{EXTENSION_MODEL}`, which `import archsearch` registers with timm.", ""]
        else:
            lines += ["`timm/` is plain timm: no archsearch needed.", ""]
        lines += ["```python", snippets(result)["timm"].rstrip(), "```", "",
                  f"Train it with timm: `python train.py --model local-dir:{result.out.name}/timm --pretrained --num-classes N "
                  f"...` "
                  "(`pretrained` loads `model.safetensors`, as it does for any timm folder; without it timm builds the "
                  "same encoder with fresh weights; the classifier head is new).", ""]
    if "onnx" in result.formats:
        lines += ["```python", snippets(result)["onnx"].rstrip(), "```", ""]
    lines += ["## Spec", "", "```yaml", spec.to_yaml().rstrip(), "```", ""]
    return "\n".join(lines)
