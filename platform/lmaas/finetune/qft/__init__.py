"""QFT: full-parameter fine-tuning with every model state stored as integers.

Weights are int8 blockwise + ~1% fp32 outliers (`quant`), dequantized on the fly by custom
autograd layers (`layers`); Lion updates them inside backward with int8 momentum and
stochastic rounding (`lion`); `convert` turns a Hugging Face model into this form and back;
`export` writes a full model folder or a LoRA adapter extracted from the weight delta.
"""

from lmaas.finetune.qft.convert import QFTModel, default_compute_dtype, quantize_model
from lmaas.finetune.qft.layers import QFTEmbedding, QFTLinear
from lmaas.finetune.qft.lion import QFTLion, lion_reference
from lmaas.finetune.qft.quant import BlockInt8, QuantWeight, pick_block_size, stochastic_round

__all__ = [
    "BlockInt8",
    "QFTEmbedding",
    "QFTLinear",
    "QFTLion",
    "QFTModel",
    "QuantWeight",
    "default_compute_dtype",
    "lion_reference",
    "pick_block_size",
    "quantize_model",
    "stochastic_round",
]
