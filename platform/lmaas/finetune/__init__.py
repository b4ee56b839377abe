"""Fine-tuning: chat data, the LoRA and QFT methods, and the training loop jobs drive.

Import the submodules: `data` (validation and tokenization: torch-free at import, so the
gateway can validate uploads), `trainer` (`TrainingRun`), `lora_train`, `qft_train`,
`qft` (integer states, layers, optimizer, export), `hyperparameters`, `checkpoint`.
"""

__all__: list[str] = []
