"""The floor for `ce-inspect run`: the least a script can do to score with the same model.

    python bench/floor.py CACHE_FOLDER [DEVICE]

Loads the tokenizer and model from the same safetensors folder ce-inspect uses and runs one forward pass
on a short input; nothing else (no output head trimming, no per-token figures, no rendering).
"""

import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder = sys.argv[1]
device = sys.argv[2] if len(sys.argv) > 2 else "cpu"
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(device)
ids = tokenizer("Where is the capital of China? The capital is Beijing.", return_tensors="pt")["input_ids"].to(device)
with torch.inference_mode():
    model(input_ids=ids)
