"""mmpretrain: self-supervised pretraining of image and video encoders, and what to do with their embeddings."""

__version__ = "0.1.0"

__all__ = ["__version__"]
