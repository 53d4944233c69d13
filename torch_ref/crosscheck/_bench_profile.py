"""Where a training step's time goes: jaxcnn per layer (XLA profiler trace, each compiled op
attributed to the layer named in its metadata), torch per operator (``torch.profiler``).
Used by ``jaxcnn bench --profile``."""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import torch

_INSTRUCTION = re.compile(r"^\s+(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"")


def _layer_of(op_name: str) -> tuple[str, str]:
    """``(layer, pass)`` of an op's metadata name, e.g. ``'jit(train_step)/transpose(jvp(
    ConvThenFC))/conv/3/dot_general'`` -> ``('conv.3', 'backward')``."""
    parts = op_name.split("/")
    for i, part in enumerate(parts):
        m = re.fullmatch(r"(transpose\()?jvp\((\w+)\)\)?", part)
        if m:
            path = [p for p in parts[i + 1:-1] if "(" not in p]
            return ".".join(path) or "(model)", "backward" if m.group(1) else "forward"
    if "preprocess" in op_name:
        return "(preprocess)", "forward"
    return "(loss, optimizer, metrics)", "-"


def jax_layer_profile(step: Callable[[], Any], hlo_text: str, steps: int = 3
                      ) -> list[tuple[str, str, float]]:
    """``(layer, pass, ms per step)`` of ``steps`` calls of ``step`` (a compiled jaxcnn step
    whose optimised HLO is ``hlo_text``), largest first. Needs jax's profiler."""
    from jax._src.lib import _profile_data

    names = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            names[m.group(1)] = m.group(2)
    jax.block_until_ready(step())
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            for _ in range(steps):
                out = step()
            jax.block_until_ready(out)
        (path,) = glob.glob(f"{tmp}/**/*.xplane.pb", recursive=True)
        data = _profile_data.ProfileData.from_file(path)
    total: collections.Counter[tuple[str, str]] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            for event in line.events:
                if event.name in names:
                    total[_layer_of(names[event.name])] += event.duration_ns
    return [(layer, kind, ns / 1e6 / steps) for (layer, kind), ns in total.most_common()]


def torch_op_profile(step: Callable[[], Any], steps: int = 3, top: int = 12
                     ) -> list[tuple[str, float]]:
    """``(operator, self CPU ms per step)`` of ``steps`` calls of ``step``, largest first."""
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3 / steps) for e in rows[:top]]


def format_profiles(model: str, layers: list[tuple[str, str, float]],
                    modules: dict[str, str], ops: list[tuple[str, float]]) -> str:
    """Markdown tables of both profiles; ``modules`` maps layer names to module types."""
    total = sum(ms for _, _, ms in layers) or 1.0
    lines = [f"#### {model}: jaxcnn per layer (ms per training step, XLA profiler)", "",
             "| layer | module | pass | ms | share |", "|---|---|---|---|---|"]
    for layer, kind, ms in layers:
        lines.append(f"| {layer} | {modules.get(layer, '')} | {kind} | {ms:.2f} | "
                     f"{ms / total:.0%} |")
    lines += ["", f"#### {model}: torch eager per operator (self CPU ms per training step)", "",
              "| operator | ms |", "|---|---|"]
    lines += [f"| {name} | {ms:.2f} |" for name, ms in ops]
    return "\n".join(lines)
