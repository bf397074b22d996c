"""Model factories: image backbones (timm) and MLP heads."""

from mmpretrain.models.backbones import backbone_has_batchnorm, create_backbone
from mmpretrain.models.heads import MLPHead

__all__ = ["MLPHead", "backbone_has_batchnorm", "create_backbone"]
