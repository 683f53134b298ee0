"""rfpool model families; importing this registers them in timm's model registry."""
from ._registry import RFPOOL_KS, unknown_model_hint
from ._rfpool import RFPoolSizeError
from .resnet import RfPoolResNet
from .vgg import RfPoolVGG

__all__ = ["RFPOOL_KS", "RFPoolSizeError", "RfPoolResNet", "RfPoolVGG", "unknown_model_hint"]
