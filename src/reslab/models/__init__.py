"""The ResNets of He et al. 2015/2016, their plain twins, and a registry to build them by name.

``create_model("resnet56", shortcut="B", plain=True)`` builds any of them by name, in the
manner of timm; ``list_models()`` lists the names. The rooms, in the order they build on
each other:

* :mod:`~reslab.models.resnet`: :class:`ResNetLayout`, the :class:`ResNet` built from one, and
  the CIFAR and ImageNet factories;
* :mod:`~reslab.models.wide`: the wide ResNets' and ResNeXt's factories, layouts of that class;
* :mod:`~reslab.models.features`: feature maps in timm's convention (``feature_info``,
  ``forward_intermediates``, ``features_only``);
* :mod:`~reslab.models.registry`: the names, :func:`create_model` and :func:`list_models`;
* :mod:`~reslab.models.counting`: parameters and MACs of a model or of a layout alone.
"""

from reslab.models.counting import count_macs, count_params, layout_macs, layout_params
from reslab.models.features import FeatureInfo, ResNetFeatures, feature_take_indices
from reslab.models.registry import (
    IMAGENET_NAMES,
    cifar_model_name,
    create_model,
    list_models,
    model_layout,
    register_model,
)
from reslab.models.resnet import (
    CIFAR_DEPTHS,
    IMAGENET_DEPTHS,
    PREACT_CIFAR_DEPTHS,
    ResNet,
    ResNetLayout,
    cifar_blocks_per_stage,
    cifar_layout,
    cifar_resnet,
    imagenet_layout,
    imagenet_resnet,
)
from reslab.models.wide import (
    cifar_resnext_layout,
    imagenet_resnext_layout,
    wide_resnet,
    wrn_blocks_per_stage,
    wrn_layout,
)

__all__ = [
    "CIFAR_DEPTHS",
    "IMAGENET_DEPTHS",
    "IMAGENET_NAMES",
    "PREACT_CIFAR_DEPTHS",
    "FeatureInfo",
    "ResNet",
    "ResNetFeatures",
    "ResNetLayout",
    "cifar_blocks_per_stage",
    "cifar_layout",
    "cifar_model_name",
    "cifar_resnet",
    "cifar_resnext_layout",
    "count_macs",
    "count_params",
    "create_model",
    "feature_take_indices",
    "imagenet_layout",
    "imagenet_resnet",
    "imagenet_resnext_layout",
    "layout_macs",
    "layout_params",
    "list_models",
    "model_layout",
    "register_model",
    "wide_resnet",
    "wrn_blocks_per_stage",
    "wrn_layout",
]
