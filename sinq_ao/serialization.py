"""Makes SINQ checkpoints travel through torchao's safetensors path and transformers' ``TorchAoConfig``.

``import sinq_ao`` runs :func:`register` once. After it:

- torchao's ``flatten_tensor_state_dict`` / ``unflatten_tensor_state_dict`` (what transformers calls in
  ``save_pretrained`` / ``from_pretrained``) accept ``SINQTensor``: each inner tensor in
  ``SINQTensor.tensor_data_names`` is saved as ``<module>._weight_<name>`` and every attribute in
  ``SINQTensor.tensor_attribute_names`` goes, as JSON, into the safetensors header metadata;
- ``TorchAoConfig.from_dict`` (reading ``config.json``) finds ``SINQConfig``.

Nothing else in torchao or transformers is changed.
"""

from __future__ import annotations

from torchao.core import config as torchao_config
from torchao.prototype.safetensors import safetensors_utils

from .config import SINQConfig
from .tensor import SINQTensor

__all__ = ["CONFIG_TYPE", "register"]

# The name a SINQConfig is saved under in config.json ("_type"). torchao saves a config under its class
# ``__name__`` and, when loading, looks that name up in its allowed modules; without ``import sinq_ao`` the
# lookup fails with "Failed to find class sinq_ao.SINQConfig in any of the allowed modules", which names the
# package to import. Only ``__name__`` changes: ``repr``, ``__qualname__`` and pickling are untouched.
CONFIG_TYPE = "sinq_ao.SINQConfig"

# torchao's config_from_dict resolves a saved "_type" with getattr(module, _type) over ALLOWED_AO_MODULES.
_CONFIG_TYPES = {CONFIG_TYPE: SINQConfig, SINQConfig.__qualname__: SINQConfig}


def __getattr__(name: str):
    try:
        return _CONFIG_TYPES[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def register() -> None:
    """Add SINQTensor / SINQConfig to torchao's allow-lists (idempotent; runs at ``import sinq_ao``)."""
    SINQConfig.__name__ = CONFIG_TYPE
    safetensors_utils.ALLOWED_CLASSES[SINQTensor.__name__] = SINQTensor
    if SINQTensor.__name__ not in safetensors_utils.ALLOWED_TENSORS_SUBCLASSES:
        safetensors_utils.ALLOWED_TENSORS_SUBCLASSES.append(SINQTensor.__name__)
    torchao_config.ALLOWED_AO_MODULES.add(__name__)
