"""A hand-written GPT-2 for fine-tuning, in plain PyTorch.

Read the modules in this order (the README's "Reading the code" gives the same one);
each opens with the idea it implements:

    the model        config -> model -> sampling -> loss -> weights -> tokenizer -> data
    the training     precision -> trainer -> control -> checkpoint -> evaluation
    a run            run -> outdir (what train.py calls, in that order)
    going further    distributed -> lora -> plan -> attention -> batch -> lr_finder -> sweep
    around it        report -> compare -> hub -> files -> errors -> cli
"""
