"""Configuration check: the hyper-parameters of each layer on both sides, in one convention.

Both sides are read into plain dicts (kernel, stride, padding as pairs; BatchNorm momentum as
its update rule, since torch's ``BatchNorm`` (momentum 0.1) and the book's hand-written one
(momentum 0.9) write the same rule with different numbers), then compared module by module.
The torch side is duck-typed on class names and attributes, so this module never imports torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import flax.linen as nn

from jaxcnn.inspect import torch_type
from jaxcnn.traversal import named_modules


def _pair(v: Any) -> Any:
    if isinstance(v, int):
        return (v, v)
    if isinstance(v, Sequence) and not isinstance(v, str):
        t = tuple(int(i) for i in v)
        return t * 2 if len(t) == 1 else t
    return v  # e.g. torch's padding='same'


def _torch_bn_rule(momentum: float | None) -> str:
    if momentum is None:
        return "None [running = cumulative average of batch stats]"
    return f"{momentum:g} [running = {1 - momentum:.6g}*running + {momentum:.6g}*batch]"


def _book_bn_rule(momentum: float) -> str:
    return f"{momentum:g} [moving = {momentum:.6g}*moving + {1 - momentum:.6g}*batch]"


def _pool(k: Any, s: Any, p: Any, ceil_mode: bool) -> dict[str, Any]:
    return {"kernel_size": _pair(k), "stride": _pair(k if s is None else s),
            "padding": _pair(p), "ceil_mode": bool(ceil_mode)}


def jax_layer_config(m: nn.Module) -> dict[str, Any]:
    """The hyper-parameters of a jaxcnn layer in torch's terms (empty for parameter-free
    layers and containers, whose type says everything)."""
    kind = torch_type(m)
    if kind == "Conv2d":
        return {"in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride),
                "padding": _pair(m.padding), "dilation": (1, 1), "groups": 1,
                "bias": bool(m.use_bias), "padding_mode": "zeros"}
    if kind == "Linear":
        return {"in_features": m.in_features, "out_features": m.out_features,
                "bias": bool(m.use_bias)}
    if kind == "MaxPool2d":
        return {**_pool(m.kernel_size, m.stride, m.padding, m.ceil_mode), "dilation": (1, 1)}
    if kind == "AvgPool2d":
        return {**_pool(m.kernel_size, m.stride, m.padding, m.ceil_mode),
                "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override}
    if kind == "AdaptiveAvgPool2d":
        return {"output_size": _pair(m.output_size)}
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        return {"num_features": m.num_features, "eps": m.eps,
                "momentum": _torch_bn_rule(m.momentum), "affine": m.affine,
                "track_running_stats": True}
    if kind == "BatchNorm":
        return {"num_features": m.num_features, "num_dims": m.num_dims, "eps": m.eps,
                "momentum": _book_bn_rule(m.momentum)}
    if kind == "Dropout":
        return {"p": float(m.p), "inplace": False}
    return {}


def torch_layer_config(m: Any) -> dict[str, Any]:
    """The same dict for a torch module (read from its attributes)."""
    kind = type(m).__name__
    if kind == "Conv2d":
        return {"in_channels": m.in_channels, "out_channels": m.out_channels,
                "kernel_size": _pair(m.kernel_size), "stride": _pair(m.stride),
                "padding": _pair(m.padding), "dilation": _pair(m.dilation), "groups": m.groups,
                "bias": m.bias is not None, "padding_mode": m.padding_mode}
    if kind == "Linear":
        return {"in_features": m.in_features, "out_features": m.out_features,
                "bias": m.bias is not None}
    if kind == "MaxPool2d":
        return {**_pool(m.kernel_size, m.stride, m.padding, m.ceil_mode),
                "dilation": _pair(m.dilation)}
    if kind == "AvgPool2d":
        return {**_pool(m.kernel_size, m.stride, m.padding, m.ceil_mode),
                "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override}
    if kind == "AdaptiveAvgPool2d":
        return {"output_size": _pair(m.output_size)}
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        return {"num_features": m.num_features, "eps": m.eps,
                "momentum": _torch_bn_rule(m.momentum), "affine": m.affine,
                "track_running_stats": m.track_running_stats}
    if kind == "BatchNorm":  # the book's: eps and momentum are constants of its forward
        return {"num_features": m.num_features, "num_dims": m.num_dims,
                "eps": getattr(m, "eps", 1e-5),
                "momentum": _book_bn_rule(getattr(m, "momentum", 0.9))}
    if kind == "Dropout":
        return {"p": float(m.p), "inplace": bool(m.inplace)}
    return {}


@dataclasses.dataclass(frozen=True)
class ConfigMismatch:
    """One difference: module (torch name), what differs (``'type'``, ``'padding'``, or
    ``'module'`` for a module only one side has) and both values."""

    name: str
    field: str
    torch: Any
    jaxcnn: Any

    def __str__(self) -> str:
        def show(v: Any) -> str:
            return v if isinstance(v, str) else repr(v)

        return (f"{self.name or '<model>'}: {self.field}: torch {show(self.torch)} vs "
                f"jaxcnn {show(self.jaxcnn)}")


def compare_configs(torch_model: Any, jax_model: nn.Module
                    ) -> tuple[int, list[ConfigMismatch]]:
    """``(modules compared, mismatches)``, module by module in torch's ``named_modules()``
    order (modules only jaxcnn has come last)."""
    tmods = dict(torch_model.named_modules())
    jmods = dict(named_modules(jax_model))
    out: list[ConfigMismatch] = []
    for name, tm in tmods.items():
        if name not in jmods:
            out.append(ConfigMismatch(name, "module", type(tm).__name__, None))
            continue
        jm = jmods[name]
        ttype, jtype = type(tm).__name__, torch_type(jm)
        if ttype != jtype:
            out.append(ConfigMismatch(name, "type", ttype, jtype))
            continue
        tcfg, jcfg = torch_layer_config(tm), jax_layer_config(jm)
        for key in dict.fromkeys([*tcfg, *jcfg]):
            if tcfg.get(key) != jcfg.get(key):
                out.append(ConfigMismatch(name, key, tcfg.get(key), jcfg.get(key)))
    out += [ConfigMismatch(name, "module", None, torch_type(jm))
            for name, jm in jmods.items() if name not in tmods]
    return len(tmods), out
