"""CIFAR-style VGG19-BN with an rfpool after the first conv, no pooling after blocks 4 and 5.

``conv64, rfpool(k), conv64, M, conv128 x2, M, conv256 x4, M, conv512 x4, conv512 x4``, then
global average pooling and one linear layer. This is the only VGG19 layout whose analytic receptive
field, ``178 k + 2``, matches the paper's measured figures (PAPER.md).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import torch
from timm.layers import create_classifier, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from torch import nn
from torch.nn import functional as F

from ._registry import published_model_kwargs, rfpool_default_cfgs
from timm.models._manipulate import checkpoint_seq

from ._rfpool import create_rfpool, rfpool_output_size

__all__ = ["RfPoolVGG", "VGG19_RFPOOL_CFG"]

RFPOOL = "R"  # the rfpool slot
MAXPOOL = "M"  # a standard 2x2/2 max-pool
VGG19_RFPOOL_CFG: Tuple[Union[int, str], ...] = (
    64, RFPOOL, 64, MAXPOOL,
    128, 128, MAXPOOL,
    256, 256, 256, 256, MAXPOOL,
    512, 512, 512, 512,
    512, 512, 512, 512,
)
_BLOCK_ENDS = (2, 4, 8, 12)  # after which conv (1-based) a block ends, the last block ends the net


class RfPoolVGG(nn.Module):
    """VGG with BatchNorm whose first conv is followed by ``MaxPool2d(rf_pool, stride=rf_pool)``."""

    def __init__(
            self,
            cfg: Sequence[Union[int, str]] = VGG19_RFPOOL_CFG,
            rf_pool: int = 1,
            num_classes: int = 10,
            in_chans: int = 3,
            width_mult: float = 1.0,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            act_layer: Union[str, Type[nn.Module]] = nn.ReLU,
            norm_layer: Union[str, Type[nn.Module]] = nn.BatchNorm2d,
            model_name: Optional[str] = None,
    ) -> None:
        """
        Args:
            cfg: Layer plan: ints are 3x3 conv widths, ``"R"`` the rfpool, ``"M"`` a 2x2 max-pool.
            rf_pool: Kernel and stride of the rfpool; the only difference between variants.
            num_classes: Classifier outputs (0 for none).
            in_chans: Input channels.
            width_mult: Scales every conv width (tiny models for tests and demos).
            global_pool: timm pooling type for the head.
            drop_rate: Dropout before the classifier.
            act_layer: Activation layer.
            norm_layer: Normalization layer.
            model_name: The registered name, for error messages (e.g. a too-large ``rf_pool``).
        """
        super().__init__()
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.rf_pool = rf_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        act_layer = get_act_layer(act_layer)
        norm_layer = get_norm_layer(norm_layer)

        self.min_size_after_pool = 2 ** sum(v == MAXPOOL for v in cfg)
        self.feature_info = []
        self.feature_ends = []  # index into self.features of each feature_info tap
        self.features, self.num_features = self._make_features(cfg, in_chans, width_mult, act_layer, norm_layer,
                                                               model_name or type(self).__name__)
        self.head_hidden_size = self.num_features
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights()

    def _make_features(self, cfg: Sequence[Union[int, str]], in_chans: int, width_mult: float, act_layer,
                       norm_layer, model_name: str) -> Tuple[nn.Sequential, int]:
        """The conv, pool and rfpool layers of ``cfg`` with their feature taps, and the last conv's width."""
        layers: List[nn.Module] = []
        prev_chs, reduction, num_convs = in_chans, 1, 0
        for v in cfg:
            if v == RFPOOL:
                self._add_tap(prev_chs, reduction, len(layers) - 1)  # the stem, before the intervention
                layers.append(create_rfpool(self.rf_pool, self.min_size_after_pool, model_name))
                reduction *= self.rf_pool
            elif v == MAXPOOL:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                reduction *= 2
            else:
                chs = max(1, int(round(int(v) * width_mult)))
                layers += [nn.Conv2d(prev_chs, chs, kernel_size=3, padding=1), norm_layer(chs), act_layer(inplace=True)]
                prev_chs = chs
                num_convs += 1
                if num_convs in _BLOCK_ENDS:
                    self._add_tap(prev_chs, reduction, len(layers) - 1)
        self._add_tap(prev_chs, reduction, len(layers) - 1)
        return nn.Sequential(*layers), prev_chs

    def _add_tap(self, num_chs: int, reduction: int, index: int) -> None:
        self.feature_info.append(dict(num_chs=num_chs, reduction=reduction, module=f"features.{index}"))
        self.feature_ends.append(index)

    @torch.jit.ignore
    def init_weights(self) -> None:
        """Kaiming-normal (fan-out) conv weights and zero conv biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter groups (stem, blocks) for layer-wise learning rates."""
        return dict(stem=r"^features\.0", blocks=r"^features\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def _checkpoint_segments(self) -> List[nn.Module]:
        """conv+BN+ReLU triples and pools: a segment never splits an in-place ReLU from the BN it overwrites."""
        segments, start = [], 0
        for i, layer in enumerate(self.features):
            if not isinstance(layer, (nn.Conv2d, nn.BatchNorm2d)):
                segments.append(self.features[start:i + 1])
                start = i + 1
        return segments

    @torch.jit.ignore
    def get_classifier(self, name_only: bool = False) -> Union[str, nn.Module]:
        """The classifier layer."""
        return "fc" if name_only else self.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """A new classifier for ``num_classes`` (0: none, the model returns pooled features)."""
        self.num_classes = num_classes
        if global_pool is None:
            global_pool = self.global_pool.pool_type
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Stem (before rfpool) and block outputs, timm's ``forward_intermediates`` contract."""
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(len(self.feature_ends), indices)
        last = self.feature_ends[max_index] if stop_early else len(self.features) - 1
        taps = {self.feature_ends[i]: i for i in take_indices}
        intermediates = []
        for i, layer in enumerate(self.features[: last + 1]):
            x = layer(x)
            if i in taps:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the layers after ``indices`` (timm's ``forward_intermediates`` contract)."""
        take_indices, max_index = feature_take_indices(len(self.feature_ends), indices)
        self.features = self.features[: self.feature_ends[max_index] + 1]
        self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < len(self.feature_ends) - 1:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling."""
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self._checkpoint_segments(), x)
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify the feature map (``pre_logits``: the pooled features)."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.forward_head(self.forward_features(x))


def _create_vgg(variant: str, pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    kwargs = published_model_kwargs(variant, pretrained, kwargs)
    out_indices = kwargs.pop("out_indices", tuple(range(6)))
    # the caller's feature_cfg (e.g. feature_cls="fx") adds to ours instead of clashing with it
    feature_cfg = dict(flatten_sequential=True, out_indices=out_indices, **kwargs.pop("feature_cfg", None) or {})
    return build_model_with_cfg(
        RfPoolVGG, variant, pretrained,
        feature_cfg=feature_cfg,
        model_name=variant,
        **kwargs,
    )


def _vgg19_final_side(size: int, k: int) -> int:
    return rfpool_output_size(size, k, halvings=3, ceil=False)  # three 2x2/2 max-pools


default_cfgs = rfpool_default_cfgs("vgg19_rfpool", min_size_after_pool=8, final_side=_vgg19_final_side,
                                   first_conv="features.0", classifier="fc")


# One function per public name, as timm writes them (tests/test_models.py checks they match RFPOOL_KS).

@register_model
def vgg19_rfpool1(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(1, stride=1) after the first conv; analytic RF 180."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=1)
    return _create_vgg("vgg19_rfpool1", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool2(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(2, stride=2) after the first conv; analytic RF 358."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=2)
    return _create_vgg("vgg19_rfpool2", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool3(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(3, stride=3) after the first conv; analytic RF 536."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=3)
    return _create_vgg("vgg19_rfpool3", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool4(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(4, stride=4) after the first conv; analytic RF 714."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=4)
    return _create_vgg("vgg19_rfpool4", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool5(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(5, stride=5) after the first conv; analytic RF 892."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=5)
    return _create_vgg("vgg19_rfpool5", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool6(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(6, stride=6) after the first conv; analytic RF 1070."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=6)
    return _create_vgg("vgg19_rfpool6", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool7(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(7, stride=7) after the first conv; analytic RF 1248."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=7)
    return _create_vgg("vgg19_rfpool7", pretrained, **dict(model_args, **kwargs))


@register_model
def vgg19_rfpool8(pretrained: bool = False, **kwargs: Any) -> RfPoolVGG:
    """CIFAR VGG19-BN with MaxPool2d(8, stride=8) after the first conv; analytic RF 1426."""
    model_args = dict(cfg=VGG19_RFPOOL_CFG, rf_pool=8)
    return _create_vgg("vgg19_rfpool8", pretrained, **dict(model_args, **kwargs))
