"""The machinery that runs the lesson of gpt2/ safely: flags, run directories, downloads,
data files, the memory plan, the range test, sweeps, the table of runs, reports.

It imports gpt2/; gpt2/ never imports it.
"""
