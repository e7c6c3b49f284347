"""A hand-written GPT-2 for fine-tuning, in plain PyTorch: the lesson.

Read the modules in this order (the README's "Reading the code" gives the same one);
each opens with the idea it implements:

    the model        config -> model -> sampling -> loss -> weights -> tokenizer -> data
    the training     precision -> trainer (one step) -> loop (the run) -> evaluation -> checkpoint
    going further    lora -> attention -> distributed -> sharding
    underneath       files -> errors

The machinery that runs all this from the command line (flags, run directories,
downloads, data files, the memory plan, sweeps, reports) is the `harness` package
next to this one. It imports gpt2; gpt2 never imports it.
"""
