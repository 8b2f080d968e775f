"""tlatlas: causal atlases, steering sweeps and atlas-guided LoRA for small language models.

``import tlatlas`` is cheap: heavy parts (torch models, bitsandbytes, PEFT) load on use.
"""

__version__ = "0.1.0"
