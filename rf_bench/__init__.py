"""rf-bench: how a CNN's receptive field shapes what it learns.

``import rf_bench`` registers ``resnet50_rfpool{k}`` and ``vgg19_rfpool{k}`` (k = 1..8) in timm.
"""
from . import models  # noqa: F401  (registers the models in timm)

__version__ = "0.1.0"
