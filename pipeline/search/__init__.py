"""Keras Tuner: the constrained oracles, the tuner's hooks, chief/worker mode and the
local launcher of `--workers N`.

This subpackage is the only code that uses Keras Tuner's engine; the private
names it relies on are all listed, and reached, in `internals`.
"""
