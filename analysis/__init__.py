"""Experiment directory -> DataFrames -> ranking tables and reports.

Reads only files (never a running Ray, never torch), so a report can be rebuilt on a laptop.
"""
