"""LoRA with paddlenlp.peft: wrap a model's Linear layers with adapters, and fold them back into plain weights."""

from __future__ import annotations

from collections.abc import Sequence

from paddle import nn

__all__ = ["apply_lora", "merge_lora"]


def apply_lora(model: nn.Layer, rank: int, alpha: int, dropout: float, targets: Sequence[str]):
    """Wrap the Linear layers named in `targets` with LoRA adapters; only the adapters stay trainable.
    Returns the `paddlenlp.peft.LoRAModel`."""
    from paddlenlp.peft import LoRAConfig, LoRAModel

    config = LoRAConfig(
        target_modules=[rf".*\.{name}$" for name in targets],
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        merge_weights=False,
        base_model_name_or_path=None,
    )
    lora_model = LoRAModel(model, config)
    lora_model.mark_only_lora_as_trainable()
    return lora_model


def merge_lora(lora_model) -> nn.Layer:
    """Fold the LoRA updates into the base weights and swap every LoRA layer back to a plain `nn.Linear`
    (keeping the original bias or its absence), returning the base model with the merged weights."""
    from paddlenlp.peft.lora.lora_layers import LoRALinear

    lora_model.merge()
    base = lora_model.model
    for name, layer in list(base.named_sublayers()):
        if isinstance(layer, LoRALinear):
            _replace_sublayer(base, name, _plain_linear(layer))
    for param in base.parameters():
        param.stop_gradient = False
    return base


def _plain_linear(layer) -> nn.Linear:
    in_features, out_features = layer.weight.shape
    plain = nn.Linear(in_features, out_features, bias_attr=None if layer.bias is not None else False)
    plain.weight = layer.weight
    if layer.bias is not None:
        plain.bias = layer.bias
    return plain


def _replace_sublayer(root: nn.Layer, name: str, new: nn.Layer) -> None:
    *path, attr = name.split(".")
    parent = root
    for part in path:
        parent = getattr(parent, part)
    setattr(parent, attr, new)
