"""TransformerLens names <-> Hugging Face module names; PEFT LoRA export; NF4/int8 loading."""
