"""CIFAR-style ResNet-50 (v1.5) with an rfpool stem: conv3x3/1 + BN + ReLU + MaxPool2d(k, stride=k).

The blocks are timm's own ``Bottleneck`` built by timm's ``make_blocks``, so parameter names match
timm's and torchvision's ResNet-50 from ``layer1`` on. Analytic receptive field: ``105 k + 2``.
"""
from typing import Any, Dict, List, Optional, Tuple, Type, Union

import torch
from timm.layers import create_classifier, get_act_layer, get_norm_layer
from timm.models import build_model_with_cfg, register_model
from timm.models._features import feature_take_indices
from timm.models._manipulate import checkpoint_seq
from timm.models.resnet import Bottleneck, make_blocks
from torch import nn
from torch.nn import functional as F

from ._registry import published_model_kwargs, rfpool_default_cfgs
from ._rfpool import create_rfpool, rfpool_output_size

__all__ = ["RfPoolResNet"]

_STAGE_NAMES = ("layer1", "layer2", "layer3", "layer4")


def _scaled(channels: int, width_mult: float) -> int:
    return max(1, int(round(channels * width_mult)))


class RfPoolResNet(nn.Module):
    """ResNet with a 3x3 stride-1 stem and one max-pool of kernel ``rf_pool`` after it."""

    def __init__(
            self,
            layers: Tuple[int, ...] = (3, 4, 6, 3),
            block: Type[nn.Module] = Bottleneck,
            rf_pool: int = 1,
            num_classes: int = 10,
            in_chans: int = 3,
            width_mult: float = 1.0,
            global_pool: str = "avg",
            drop_rate: float = 0.0,
            drop_path_rate: float = 0.0,
            act_layer: Union[str, Type[nn.Module]] = nn.ReLU,
            norm_layer: Union[str, Type[nn.Module]] = nn.BatchNorm2d,
            zero_init_last: bool = False,
            model_name: Optional[str] = None,
            **block_args: Any,
    ) -> None:
        """
        Args:
            layers: Bottleneck blocks per stage.
            block: Residual block class (timm's ``Bottleneck``).
            rf_pool: Kernel and stride of the max-pool after the stem; the only difference between variants.
            num_classes: Classifier outputs (0 for none).
            in_chans: Input channels.
            width_mult: Scales every stage's width (tiny models for tests and demos).
            global_pool: timm pooling type for the head.
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth rate.
            act_layer: Activation layer.
            norm_layer: Normalization layer.
            zero_init_last: Zero-init the last BN of each block (timm option, off as in the paper).
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

        stem_chs = _scaled(64, width_mult)
        self.conv1 = nn.Conv2d(in_chans, stem_chs, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm_layer(stem_chs)
        self.act1 = act_layer(inplace=True)
        self.rfpool = create_rfpool(rf_pool, self.min_size_after_pool, model_name or type(self).__name__)
        self.feature_info = [dict(num_chs=stem_chs, reduction=1, module="act1")]

        channels = tuple(_scaled(c, width_mult) for c in (64, 128, 256, 512))
        self._add_stages(block, channels, layers, stem_chs, drop_path_rate=drop_path_rate, act_layer=act_layer,
                         norm_layer=norm_layer, **block_args)
        self.num_features = self.head_hidden_size = channels[-1] * block.expansion
        self.global_pool, self.fc = create_classifier(self.num_features, num_classes, pool_type=global_pool)
        self.init_weights(zero_init_last=zero_init_last)

    def _add_stages(self, block: Type[nn.Module], channels: Tuple[int, ...], layers: Tuple[int, ...], stem_chs: int,
                    **block_args: Any) -> None:
        """``layer1``..``layer4`` through timm's ``make_blocks``, with their feature info."""
        stages, stage_info = make_blocks((block,) * 4, channels, layers, stem_chs, output_stride=32, **block_args)
        for name, stage in stages:
            self.add_module(name, stage)
        for i, info in enumerate(stage_info):  # make_blocks assumes timm's /4 stem; ours reduces by rf_pool
            info["reduction"] = self.rf_pool * 2 ** i
        self.feature_info.extend(stage_info)

    # stride-2 convs (pad 1) never empty a map, so any non-empty pooled map is enough
    min_size_after_pool: int = 1

    @torch.jit.ignore
    def init_weights(self, zero_init_last: bool = False) -> None:
        """Kaiming-normal (fan-out) conv weights; ``zero_init_last`` zeroes the last norm of each block."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_last:
            for m in self.modules():
                if hasattr(m, "zero_init_last"):
                    m.zero_init_last()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        """timm's parameter groups (stem, blocks) for layer-wise learning rates."""
        return dict(stem=r"^conv1|bn1|rfpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute activations in the backward pass to save memory."""
        self.grad_checkpointing = enable

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

    def _stem(self, x: torch.Tensor) -> torch.Tensor:
        return self.act1(self.bn1(self.conv1(x)))

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem (before rfpool) and of each stage, timm's ``forward_intermediates`` contract."""
        assert output_fmt == "NCHW", "Output shape must be NCHW."
        take_indices, max_index = feature_take_indices(5, indices)
        intermediates = []
        x = self._stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        x = self.rfpool(x)
        stage_names = _STAGE_NAMES[:max_index] if stop_early else _STAGE_NAMES
        for i, name in enumerate(stage_names, start=1):
            x = getattr(self, name)(x)
            if i in take_indices:
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
        take_indices, max_index = feature_take_indices(5, indices)
        for name in _STAGE_NAMES[max_index:]:
            setattr(self, name, nn.Sequential())
        if max_index < 4:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or max_index < 4:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The feature map before pooling."""
        x = self.rfpool(self._stem(x))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq([self.layer1, self.layer2, self.layer3, self.layer4], x, flatten=True)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.layer4(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool and classify the feature map (``pre_logits``: the pooled features)."""
        x = self.global_pool(x)
        if self.drop_rate:
            x = F.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a batch of images."""
        return self.forward_head(self.forward_features(x))


def _create_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    kwargs = published_model_kwargs(variant, pretrained, kwargs)
    return build_model_with_cfg(RfPoolResNet, variant, pretrained, model_name=variant, **kwargs)


def _resnet50_final_side(size: int, k: int) -> int:
    return rfpool_output_size(size, k, halvings=3, ceil=True)  # layer2-4 open with padded stride-2 convs


default_cfgs = rfpool_default_cfgs("resnet50_rfpool", min_size_after_pool=1, final_side=_resnet50_final_side,
                                   first_conv="conv1", classifier="fc")


# One function per public name, as timm writes them (tests/test_models.py checks they match RFPOOL_KS).

@register_model
def resnet50_rfpool1(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(1, stride=1) after the stem; analytic RF 107."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=1)
    return _create_resnet("resnet50_rfpool1", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool2(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(2, stride=2) after the stem; analytic RF 212."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=2)
    return _create_resnet("resnet50_rfpool2", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool3(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(3, stride=3) after the stem; analytic RF 317."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=3)
    return _create_resnet("resnet50_rfpool3", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool4(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(4, stride=4) after the stem; analytic RF 422."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=4)
    return _create_resnet("resnet50_rfpool4", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool5(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(5, stride=5) after the stem; analytic RF 527."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=5)
    return _create_resnet("resnet50_rfpool5", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool6(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(6, stride=6) after the stem; analytic RF 632."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=6)
    return _create_resnet("resnet50_rfpool6", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool7(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(7, stride=7) after the stem; analytic RF 737."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=7)
    return _create_resnet("resnet50_rfpool7", pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_rfpool8(pretrained: bool = False, **kwargs: Any) -> RfPoolResNet:
    """CIFAR ResNet-50 with MaxPool2d(8, stride=8) after the stem; analytic RF 842."""
    model_args = dict(layers=(3, 4, 6, 3), block=Bottleneck, rf_pool=8)
    return _create_resnet("resnet50_rfpool8", pretrained, **dict(model_args, **kwargs))
