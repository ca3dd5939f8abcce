"""sinq_ao: SINQ (Sinkhorn-Normalized Quantization) as a torchao workflow.

    from torchao.quantization import quantize_
    from sinq_ao import SINQConfig
    quantize_(model, SINQConfig(bits=4, group_size=64))
"""

from . import fusion, serialization
from .calibration import asinq_quantize_, calibration_tokens
from .config import SINQConfig, sinq_config, skip_lm_head
from .decode import GraphedDecoder, GraphedStep
from .fusion import disable_projection_fusion, enable_projection_fusion, grouped_linear
from .mixed_precision import plan_mixed_precision
from .quantize import dequantize_weight, quantize_weight
from .sinkhorn import imbalance, sinkhorn_normalize
from .tensor import SINQTensor, mark_static_weights, sinq_linear

serialization.register()  # torchao / transformers can now save and load SINQ checkpoints
fusion.enable_from_environment()  # torch.compile groups q/k/v and gate/up into one GEMV launch each

__all__ = [
    "GraphedDecoder",
    "GraphedStep",
    "SINQConfig",
    "SINQTensor",
    "asinq_quantize_",
    "calibration_tokens",
    "dequantize_weight",
    "disable_projection_fusion",
    "enable_projection_fusion",
    "grouped_linear",
    "imbalance",
    "mark_static_weights",
    "plan_mixed_precision",
    "quantize_weight",
    "sinkhorn_normalize",
    "sinq_config",
    "sinq_linear",
    "skip_lm_head",
]
__version__ = "0.1.0"
