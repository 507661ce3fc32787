"""Benchmarks for mcserve: MC-dropout kernel, HTTP serving against peers, training pipeline.

Run with ``python -m bench {kernel,http,train,coldstart,all,report}``; every
sub-command writes JSON, and ``report`` turns the JSON into docs/benchmarks.md.
"""
