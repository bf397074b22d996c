"""Model factories: image backbones (timm), text encoders and tokenizers (transformers), MLP heads."""

from mmpretrain.models.backbones import backbone_has_batchnorm, create_backbone
from mmpretrain.models.heads import MLPHead
from mmpretrain.models.text import (
    create_text_encoder,
    create_tokenizer,
    resolve_text_model,
    text_encoder_from_dict,
    text_encoder_to_dict,
    tokenizer_from_json,
    tokenizer_to_json,
)

__all__ = [
    "MLPHead",
    "backbone_has_batchnorm",
    "create_backbone",
    "create_text_encoder",
    "create_tokenizer",
    "resolve_text_model",
    "text_encoder_from_dict",
    "text_encoder_to_dict",
    "tokenizer_from_json",
    "tokenizer_to_json",
]
