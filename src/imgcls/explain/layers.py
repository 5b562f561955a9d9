"""Which layers to explain: spatial feature maps of CNNs and patch-token grids of vision transformers.

Everything here comes from one forward and one backward pass of a random image through the
network, so any architecture imgcls builds (built-in CNNs, timm CNNs, timm ViTs) is handled
without a table per model family:

  candidates  modules whose output is a map: (B, C, h, w), or tokens (B, N, C) whose patch
              tokens (after the model's `num_prefix_tokens` class/register tokens) fill a
              square grid. Identity, dropout and in-place activations are left out: their
              output is their input.
  default     the last feature block: the layer whose output timm's `forward_features` returns
              (every model imgcls builds is a timm model), or, where that output does not reach
              the logits, the deepest layer before it of the same shape that does. In a ViT with a
              class token the final patch tokens do not (only the class token goes on), so the map
              comes from the last block's input norm, the layer pytorch-grad-cam recommends for ViTs.
  blocks      one layer per resolution in a CNN (the shallowest module at it), and every block of
              a transformer, for "how the important regions evolve through the network".

Names are paths inside the architecture (`Classifier.net`), e.g. 'layer4', 'blocks.2'.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ImgclsError, UsageError, did_you_mean

# Modules whose output equals their input (in eval mode) show nothing new.
PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Flatten)
PROBE_SEED = 0  # the probe image is random, not zeros: a zero image leaves ReLU networks without gradients


@dataclass(frozen=True)
class Layer:
    name: str  # path inside the architecture, e.g. 'blocks.2'
    shape: tuple[int, ...]  # output for one image: (C, h, w), or (N, C) for transformer tokens
    grid: tuple[int, int]  # (h, w) of its map
    prefix_tokens: int | None  # tokens before the patch grid (class, registers); None for a CNN map
    reaches_output: bool  # the logits have a gradient at its spatial positions
    depth: int  # enclosing modules, not counting plain nn.Sequential lists
    ends_features: bool  # its output is what the model's forward_features returns

    @property
    def tokens(self) -> bool:
        return self.prefix_tokens is not None


class TokenGrid(nn.Module):
    """Shows the patch tokens (B, N, C) as a (B, C, h, w) map.

    Captum's layer methods are written for CNN feature maps; hooked in after a transformer
    layer (see `hooked`), this module is the layer they attribute to, and its output flows on
    into the rest of the network, so the gradients they read are the true ones."""

    def __init__(self, prefix_tokens: int, grid: tuple[int, int]):
        super().__init__()
        self.prefix_tokens, self.grid = prefix_tokens, grid

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, N, C) -> (B, C, h, w)
        patches = tokens[:, self.prefix_tokens:]
        return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.grid)


def _patch_grid(net: nn.Module, n_tokens: int) -> tuple[int, int] | None:
    patches = n_tokens - getattr(net, "num_prefix_tokens", 0)
    side = math.isqrt(max(patches, 0))
    return (side, side) if side > 1 and side * side == patches else None


def _as_map(net: nn.Module, output) -> tuple[tuple[int, int], int | None] | None:
    """(grid, prefix tokens) when `output` is a map we can draw, else None."""
    if not isinstance(output, torch.Tensor):
        return None
    # imgcls inputs are square, so a (B, C, h, w) map has h == w; this also leaves out the
    # channels-last (B, h, w, C) tensors inside ConvNeXt blocks, which are no (B, C, h, w) map
    if output.dim() == 4 and output.shape[2] == output.shape[3] > 1:
        return (output.shape[2], output.shape[3]), None
    if output.dim() == 3 and (grid := _patch_grid(net, output.shape[1])) is not None:
        return grid, getattr(net, "num_prefix_tokens", 0)
    return None


def _depth(net: nn.Module, name: str) -> int:
    parts = name.split(".")
    return sum(type(net.get_submodule(".".join(parts[:i]))) is not nn.Sequential for i in range(1, len(parts)))


def _reaches(grad: torch.Tensor | None, prefix_tokens: int | None) -> bool:
    if grad is None:
        return False
    patches = grad if prefix_tokens is None else grad[:, prefix_tokens:]
    return bool(patches.abs().sum() > 0)


def _named_once(net: nn.Module, outputs: list[tuple[str, object, int]]) -> list[tuple[str, torch.Tensor]]:
    """One name per distinct output tensor, in completion order.

    A module returning a tensor it got from a child is one layer under several names. Only the
    names whose hook saw the tensor's final value qualify (a ResNet block changes its last BN's
    output in place with `x += shortcut`); of those, the outermost, except a plain nn.Sequential,
    which is only a list of layers: 'blocks.5' rather than 'blocks'."""
    final_version = {id(out): version for _, out, version in outputs}
    names: dict[int, list[str]] = {}
    for name, out, version in outputs:
        if version == final_version[id(out)]:
            names.setdefault(id(out), []).append(name)
    chosen = {key: next((n for n in reversed(group) if type(net.get_submodule(n)) is not nn.Sequential), group[0])
              for key, group in names.items()}
    return [(name, out) for name, out, _ in outputs if chosen.get(id(out)) == name]


def find_layers(model: nn.Module, img_size: int) -> list[Layer]:
    """Every candidate layer of `model.net` (a Classifier's timm model), in the order their outputs are complete."""
    net = model.net
    device = next(model.parameters()).device
    outputs: list[tuple[str, object, int]] = []

    def keep(_module, _inputs, out, name):
        if isinstance(out, torch.Tensor):
            outputs.append((name, out, out._version))

    hooks = [module.register_forward_hook(lambda m, i, out, name=name: keep(m, i, out, name))
             for name, module in net.named_modules()
             if name and not isinstance(module, PASS_THROUGH) and not getattr(module, "inplace", False)]
    probe = torch.rand(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(PROBE_SEED)).to(device)
    try:
        with torch.enable_grad():
            features = net.forward_features(model.normalize(probe.requires_grad_()))
            logits = net.forward_head(features)
            maps = [(name, out, *found) for name, out in _named_once(net, outputs)
                    if (found := _as_map(net, out)) is not None]
            grads = torch.autograd.grad(logits.square().sum(), [m[1] for m in maps], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
    return [Layer(name, tuple(out.shape[1:]), grid, prefix, _reaches(grad, prefix), _depth(net, name), out is features)
            for (name, out, grid, prefix), grad in zip(maps, grads)]


def _deepest_reaching(layers: list[Layer], shape: tuple[int, ...]) -> Layer | None:
    return next((layer for layer in reversed(layers) if layer.reaches_output and layer.shape == shape), None)


def default_layer(layers: list[Layer]) -> Layer:
    if not layers:
        raise ImgclsError("this model has no layer with a spatial output (no feature map, no patch tokens) to explain; "
                          "use --method saliency, smoothgrad or integrated-gradients")
    # where forward_features ends in a function rather than a module, no layer gives its output: the last map
    last_block = next((index for index, layer in enumerate(layers) if layer.ends_features), len(layers) - 1)
    up_to_features = layers[: last_block + 1]
    layer = (_deepest_reaching(up_to_features, layers[last_block].shape)
             or next((l for l in reversed(up_to_features) if l.reaches_output), None))
    if layer is None:
        raise ImgclsError("no layer of this model passes gradients back to its spatial positions; "
                          "use --method saliency, smoothgrad or integrated-gradients")
    return layer


def block_layers(net: nn.Module, layers: list[Layer]) -> list[Layer]:
    """One layer per CNN resolution and one per transformer block, shallow to deep."""
    chosen: dict[object, Layer] = {}
    for layer in layers:
        if layer.tokens:
            parent = net.get_submodule(layer.name.rpartition(".")[0]) if "." in layer.name else net
            if isinstance(parent, (nn.Sequential, nn.ModuleList)):
                chosen[layer.name] = layer
        else:  # the shallowest module at each resolution is the stage; on a tie, the later one
            best = chosen.get(layer.grid)
            if best is None or layer.depth <= best.depth:
                chosen[layer.grid] = layer
    blocks = []
    for layer in chosen.values():
        if not layer.reaches_output:  # e.g. a ViT's last block: use its deepest part that still reaches
            inside = [l for l in layers if l.name.startswith(layer.name + ".")]
            layer = _deepest_reaching(inside, layer.shape)
        if layer is not None and layer not in blocks:
            blocks.append(layer)
    order = {layer.name: index for index, layer in enumerate(layers)}
    return sorted(blocks, key=lambda layer: order[layer.name])


def pick_layer(layers: list[Layer], name: str | None) -> Layer:
    """The named candidate, or the default one."""
    if name is None:
        return default_layer(layers)
    by_name = {layer.name: layer for layer in layers}
    if name not in by_name:
        raise UsageError(f"unknown layer '{name}'{did_you_mean(name, by_name)} "
                         f"(this model's layers with a map: {', '.join(list(by_name)[-8:]) or 'none'}; "
                         "list them all with `imgcls layers BUNDLE`)")
    return by_name[name]


@contextmanager
def hooked(net: nn.Module, layer: Layer):
    """The module to hand to Captum for `layer`: the layer itself for a CNN map, or a TokenGrid
    spliced in after a transformer layer for the time of the `with` block.

    The splice is a forward hook on the shared model: do not run other forwards of the same
    model concurrently while it is in place."""
    module = net.get_submodule(layer.name)
    if not layer.tokens:
        yield module
        return
    grid, prefix = TokenGrid(layer.prefix_tokens, layer.grid), layer.prefix_tokens

    def splice(_module, _inputs, tokens):
        patches = grid(tokens)  # Captum's hooks on `grid` read (and may replace) this map
        return torch.cat([tokens[:, :prefix], patches.flatten(2).transpose(1, 2)], dim=1)

    handle = module.register_forward_hook(splice)
    try:
        yield grid
    finally:
        handle.remove()


def describe_layers(model: nn.Module, img_size: int) -> list[dict]:
    """Every candidate layer as {'name', 'shape', 'map', 'default', 'block', 'reaches_output'}, for listing."""
    layers = find_layers(model, img_size)
    default = default_layer(layers) if layers else None
    blocks = set(block_layers(model.net, layers))
    return [{"name": layer.name, "shape": list(layer.shape), "map": list(layer.grid),
             "default": layer == default, "block": layer in blocks, "reaches_output": layer.reaches_output}
            for layer in layers]
