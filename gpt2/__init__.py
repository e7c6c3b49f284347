"""A hand-written GPT-2 for fine-tuning, in plain PyTorch: the lesson.

Read the modules in this order (the README's "ten-minute path" gives the line ranges of
the first part; docs/course.md every module); each opens with the idea it implements:

    the step, first  model -> loss -> trainer (one step) -> precision -> schedules -> loop (the run)
    then             data -> evaluation -> sampling -> scratch -> checkpoint -> settings
    the formats      config -> weights -> tokenizer
    going further    lora -> attention -> dropout -> distributed -> sharding
    underneath       files -> errors

The machinery that runs all this from the command line (flags, run directories,
downloads, data files, the memory plan, sweeps, reports) is the `harness` package
next to this one. It imports gpt2; gpt2 never imports it.
"""
