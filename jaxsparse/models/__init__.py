"""Flax models for the training harness: MLP, LeNet-300-100, LeNet-5, ResNet-20 and a small ViT.

This subpackage needs flax (``pip install jaxsparse[train]``) and is not imported by
``import jaxsparse``. Every model is applied as ``model.apply(variables, x, train=...)`` to
channels-last float32 inputs and returns logits; see :func:`create_model`.
"""

from jaxsparse.models._lenet import LeNet5
from jaxsparse.models._mlp import LENET_300_100, MLP
from jaxsparse.models._registry import MODELS, create_model
from jaxsparse.models._resnet import BasicBlock, ResNet
from jaxsparse.models._vit import EncoderBlock, PatchEmbedding, ViT, default_patch_size

__all__ = [
    "BasicBlock",
    "EncoderBlock",
    "LENET_300_100",
    "LeNet5",
    "MLP",
    "MODELS",
    "PatchEmbedding",
    "ResNet",
    "ViT",
    "create_model",
    "default_patch_size",
]
