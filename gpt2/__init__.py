"""A hand-written GPT-2 for fine-tuning, in plain PyTorch.

Read the modules in this order: config -> model -> weights -> tokenizer -> data ->
precision -> trainer -> evaluation. Each one explains its idea at the top.
"""
